//! `--chat-template FILE` and `chat_template = "FILE"`: a Jinja file that replaces a
//! model's own chat template, as llama-server's `--chat-template-file` does. The file is
//! read and compiled up front, so a mistake in it stops `serve` before a model is loaded
//! and names the file, instead of failing every request.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use pensieve_engine::template::{ChatTemplate, SpecialTokens};

use crate::config::ModelSettings;

/// A template read from a file, to stand in for the model's own.
#[derive(Debug, Clone)]
pub struct TemplateOverride {
    pub path: PathBuf,
    pub source: String,
}

impl TemplateOverride {
    /// Read and compile `path`: a missing or unreadable file, an empty one, or a Jinja
    /// syntax error is an error naming the file.
    pub fn read(path: &Path) -> anyhow::Result<TemplateOverride> {
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read chat template {}", path.display()))?;
        // A blank template would silently mean "the built-in fallback" to the engine.
        if source.trim().is_empty() {
            bail!("chat template {} is empty", path.display());
        }
        // The special tokens only matter when rendering; compiling checks the syntax.
        ChatTemplate::from_source(&source, SpecialTokens::default())
            .with_context(|| format!("invalid chat template {}", path.display()))?;
        Ok(TemplateOverride {
            path: path.to_owned(),
            source,
        })
    }

    /// The template a model gets: the flag's file (given only for the model it names),
    /// else its config entry's, else none (its own).
    pub fn for_model(
        flag: Option<&Path>,
        settings: &ModelSettings,
    ) -> anyhow::Result<Option<TemplateOverride>> {
        flag.or(settings.chat_template.as_deref())
            .map(TemplateOverride::read)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::ToolFormat;

    fn tool_format(t: &TemplateOverride) -> Option<&'static str> {
        ToolFormat::detect(&t.source).map(ToolFormat::name)
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("pensieve-template-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const HERMES: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\
        <|im_end|>\n{% endfor %}{% if tools %}<tool_call>{\"name\": ...}</tool_call>{% endif %}";

    #[test]
    fn reads_a_template_and_detects_its_tool_format() {
        let dir = TempDir::new("ok");
        let path = dir.file("t.jinja", HERMES);
        let t = TemplateOverride::read(&path).unwrap();
        assert_eq!(t.path, path);
        assert_eq!(t.source, HERMES);
        assert_eq!(tool_format(&t), Some("hermes"));
        let plain = dir.file("plain.jinja", "{{ messages[0].content }}");
        assert_eq!(tool_format(&TemplateOverride::read(&plain).unwrap()), None);
    }

    #[test]
    fn mistakes_name_the_file() {
        let dir = TempDir::new("bad");
        let missing = dir.0.join("absent.jinja");
        let syntax = dir.file("syntax.jinja", "{% for m in messages %}{{ m.content }}");
        let empty = dir.file("empty.jinja", " \n");
        for (path, what) in [
            (&missing, "cannot read"),
            (&syntax, "syntax error"),
            (&empty, "empty"),
        ] {
            let err = format!("{:#}", TemplateOverride::read(path).unwrap_err());
            assert!(
                err.contains(&path.display().to_string()) && err.contains(what),
                "{err}"
            );
        }
    }

    #[test]
    fn the_flag_wins_over_the_config() {
        let dir = TempDir::new("precedence");
        let flag = dir.file("flag.jinja", "flag {{ messages }}");
        let config = dir.file("config.jinja", "config {{ messages }}");
        let settings = ModelSettings {
            chat_template: Some(config.clone()),
            ..ModelSettings::default()
        };
        let pick = |flag: Option<&Path>, settings: &ModelSettings| {
            TemplateOverride::for_model(flag, settings)
                .unwrap()
                .map(|t| t.path)
        };
        assert_eq!(pick(Some(&flag), &settings), Some(flag.clone()));
        assert_eq!(pick(None, &settings), Some(config));
        assert_eq!(pick(Some(&flag), &ModelSettings::default()), Some(flag));
        assert_eq!(pick(None, &ModelSettings::default()), None);
        // A broken config file is an error even when nothing else is set.
        let broken = ModelSettings {
            chat_template: Some(dir.0.join("absent.jinja")),
            ..ModelSettings::default()
        };
        assert!(TemplateOverride::for_model(None, &broken).is_err());
    }
}
