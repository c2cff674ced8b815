//! What a user writes to name a model: a path on disk, or `org/name[:tag]` on the Hub.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A GGUF file or a model folder.
    Path(PathBuf),
    /// A Hugging Face repo, and the quant or file name picking one model inside it.
    Repo { repo: String, tag: Option<String> },
}

impl ModelRef {
    /// An existing path is a path; `org/name` or `org/name:tag` is a repo; anything else
    /// is a path (which then fails to open with its own name in the error).
    pub fn parse(s: &str) -> ModelRef {
        if Path::new(s).exists() {
            return ModelRef::Path(PathBuf::from(s));
        }
        let (repo, tag) = match s.split_once(':') {
            Some((repo, tag)) => (repo, Some(tag)),
            None => (s, None),
        };
        // `org/name:file.gguf` names a file in a repo; `dir/file.gguf` is a path.
        let path_like = looks_like_path(repo) || (tag.is_none() && looks_like_path(s));
        if !path_like && is_repo_id(repo) && tag.is_none_or(|t| !t.is_empty()) {
            ModelRef::Repo {
                repo: repo.to_owned(),
                tag: tag.map(str::to_owned),
            }
        } else {
            ModelRef::Path(PathBuf::from(s))
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Path(p) => write!(f, "{}", p.display()),
            ModelRef::Repo { repo, tag: None } => f.write_str(repo),
            ModelRef::Repo {
                repo,
                tag: Some(tag),
            } => write!(f, "{repo}:{tag}"),
        }
    }
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with(['/', '.', '~']) || s.contains('\\') || s.to_ascii_lowercase().ends_with(".gguf")
}

/// `org/name`, as the Hub allows them: one slash, letters, digits, `-`, `_`, `.`.
pub fn is_repo_id(s: &str) -> bool {
    let Some((org, name)) = s.split_once('/') else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && !p.contains("--")
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    part_ok(org) && part_ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repos_and_paths() {
        let repo = |r: &str, t: Option<&str>| ModelRef::Repo {
            repo: r.into(),
            tag: t.map(Into::into),
        };
        assert_eq!(
            ModelRef::parse("Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M"),
            repo("Qwen/Qwen2.5-Coder-7B-Instruct-GGUF", Some("Q4_K_M"))
        );
        assert_eq!(
            ModelRef::parse("o/r-GGUF:r-Q8_0.gguf"),
            repo("o/r-GGUF", Some("r-Q8_0.gguf"))
        );
        assert_eq!(
            ModelRef::parse("mlx-community/Qwen3-4B-4bit"),
            repo("mlx-community/Qwen3-4B-4bit", None)
        );
        for path in [
            "/models/x.gguf",
            "./x",
            "models/x.gguf",
            "a/b/c",
            "C:\\m\\x.gguf",
            "org/name:",
            "x",
        ] {
            assert_eq!(ModelRef::parse(path), ModelRef::Path(path.into()), "{path}");
        }
        assert_eq!(
            ModelRef::parse("o/r:q4_1").to_string(),
            "o/r:q4_1".to_string()
        );
    }
}
