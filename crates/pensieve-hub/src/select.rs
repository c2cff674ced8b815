//! Which files of a repo make the model a `repo:tag` reference names, the same rule for
//! a repo on the Hub (its file list) and one in the cache (its snapshot): a quant tag
//! (`:Q4_K_M`, any case) or a file name picks one GGUF and all parts of it when it is
//! split; no tag picks Q4_K_M, else the first GGUF, as llama.cpp's `-hf` does; a repo
//! without GGUF files is a whole-folder model (MLX safetensors).

use crate::gguf::{quant_in_file_name, split_part};

/// The quant picked when the reference names none.
pub const DEFAULT_QUANT: &str = "Q4_K_M";

/// What a reference resolves to inside one repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One GGUF model: its files (all parts, in order; the first is the one to load), the
    /// tag `list` names it by, and the repo's vision projector if it has one.
    Gguf {
        files: Vec<String>,
        tag: String,
        mmproj: Option<String>,
    },
    /// The whole repo is the model.
    Folder,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("{repo} has no GGUF file for {tag:?}; it has: {available}")]
    NoSuchTag {
        repo: String,
        tag: String,
        available: String,
    },
    #[error("{repo} has no GGUF files, so it cannot take a quant tag ({tag:?})")]
    NotGguf { repo: String, tag: String },
}

/// Pick the files of `repo` (its paths, `/`-separated) that `tag` names.
pub fn select(repo: &str, paths: &[String], tag: Option<&str>) -> Result<Selection, SelectError> {
    let mut ggufs: Vec<&String> = paths.iter().filter(|p| is_model_gguf(p)).collect();
    ggufs.sort();
    if ggufs.is_empty() {
        return match tag {
            Some(tag) => Err(SelectError::NotGguf {
                repo: repo.to_owned(),
                tag: tag.to_owned(),
            }),
            None => Ok(Selection::Folder),
        };
    }
    let wanted = tag.unwrap_or(DEFAULT_QUANT);
    let by_name = ggufs
        .iter()
        .find(|p| *p == &wanted || file_name(p) == wanted);
    let by_quant = || {
        ggufs
            .iter()
            .find(|p| quant_of(p).is_some_and(|q| q.eq_ignore_ascii_case(wanted)))
    };
    let chosen = match by_name.or_else(by_quant) {
        Some(p) => *p,
        None if tag.is_none() => ggufs[0],
        None => {
            return Err(SelectError::NoSuchTag {
                repo: repo.to_owned(),
                tag: wanted.to_owned(),
                available: available_tags(&ggufs).join(", "),
            })
        }
    };
    let files = parts_of(chosen, &ggufs);
    Ok(Selection::Gguf {
        tag: tag_of(chosen),
        files,
        mmproj: projector(paths),
    })
}

/// The repo's vision projector (`mmproj-*.gguf`), one for every quant of the model: F16
/// where there are several, as llama.cpp's `-hf` takes (then BF16, F32, Q8_0, the first).
fn projector(paths: &[String]) -> Option<String> {
    let mut projectors: Vec<&String> = paths
        .iter()
        .filter(|p| {
            let name = file_name(p).to_ascii_lowercase();
            name.ends_with(".gguf") && name.contains("mmproj")
        })
        .collect();
    projectors.sort();
    let rank = |p: &String| {
        let name = file_name(p).to_ascii_lowercase();
        ["f16", "bf16", "f32", "q8_0"]
            .iter()
            .position(|q| name.contains(q) && !(*q == "f16" && name.contains("bf16")))
            .unwrap_or(4)
    };
    projectors.into_iter().min_by_key(|p| rank(p)).cloned()
}

/// The names `list` shows for each GGUF model in `paths`: (tag, its files).
pub fn gguf_models(paths: &[String]) -> Vec<(String, Vec<String>)> {
    let mut ggufs: Vec<&String> = paths.iter().filter(|p| is_model_gguf(p)).collect();
    ggufs.sort();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for p in &ggufs {
        if split_part(file_name(p)).is_some_and(|(part, _)| part != 1) {
            continue;
        }
        let mut tag = tag_of(p);
        if out.iter().any(|(t, _)| *t == tag) {
            tag = file_name(p).to_owned();
        }
        out.push((tag, parts_of(p, &ggufs)));
    }
    out
}

/// A model file, not a multimodal projector or an imatrix/other side file.
fn is_model_gguf(path: &str) -> bool {
    let name = file_name(path).to_ascii_lowercase();
    name.ends_with(".gguf") && !name.contains("mmproj")
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn quant_of(path: &str) -> Option<String> {
    quant_in_file_name(file_name(path))
}

/// The tag a file is known by: its quant, else its file name.
fn tag_of(path: &str) -> String {
    quant_of(path).unwrap_or_else(|| file_name(path).to_owned())
}

fn available_tags(ggufs: &[&String]) -> Vec<String> {
    let mut tags: Vec<String> = ggufs
        .iter()
        .filter(|p| split_part(file_name(p)).is_none_or(|(part, _)| part == 1))
        .map(|p| tag_of(p))
        .collect();
    tags.dedup();
    tags
}

/// All parts of a split GGUF in order (`x-00001-of-00003.gguf` ...), or just `chosen`.
fn parts_of(chosen: &str, ggufs: &[&String]) -> Vec<String> {
    let Some((_, count)) = split_part(file_name(chosen)) else {
        return vec![chosen.to_owned()];
    };
    let stem = split_stem(chosen);
    let mut parts: Vec<(u16, String)> = ggufs
        .iter()
        .filter(|p| split_stem(p) == stem)
        .filter_map(|p| split_part(file_name(p)).map(|(i, _)| (i, (*p).clone())))
        .collect();
    parts.sort();
    if parts.len() != usize::from(count) {
        tracing::warn!(
            file = chosen,
            count,
            found = parts.len(),
            "split GGUF is missing parts"
        );
    }
    parts.into_iter().map(|(_, p)| p).collect()
}

/// `dir/name-00001-of-00003.gguf` -> `dir/name`.
fn split_stem(path: &str) -> &str {
    path.rfind("-of-")
        .and_then(|of| path[..of].rfind('-'))
        .map_or(path, |dash| &path[..dash])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quant_tag_any_case_and_default() {
        let repo = paths(&[
            "README.md",
            "model-Q8_0.gguf",
            "model-Q4_K_M.gguf",
            "mmproj-model-f16.gguf",
        ]);
        let pick = |tag| select("o/r", &repo, tag).unwrap();
        let gguf = |f: &str, t: &str| Selection::Gguf {
            files: vec![f.to_owned()],
            tag: t.to_owned(),
            mmproj: Some("mmproj-model-f16.gguf".into()),
        };
        assert_eq!(pick(Some("q8_0")), gguf("model-Q8_0.gguf", "Q8_0"));
        assert_eq!(pick(None), gguf("model-Q4_K_M.gguf", "Q4_K_M"));
        assert_eq!(
            pick(Some("model-Q8_0.gguf")),
            gguf("model-Q8_0.gguf", "Q8_0")
        );
        let err = select("o/r", &repo, Some("F16")).unwrap_err();
        assert!(err.to_string().contains("Q4_K_M, Q8_0"), "{err}");
    }

    #[test]
    fn no_default_quant_takes_the_first() {
        let repo = paths(&["b-Q8_0.gguf", "a-Q5_K_M.gguf"]);
        assert_eq!(
            select("o/r", &repo, None).unwrap(),
            Selection::Gguf {
                files: vec!["a-Q5_K_M.gguf".into()],
                tag: "Q5_K_M".into(),
                mmproj: None,
            }
        );
    }

    #[test]
    fn split_files_come_whole() {
        let repo = paths(&[
            "q-q4_k_m-00002-of-00002.gguf",
            "q-q4_k_m-00001-of-00002.gguf",
            "q-q8_0.gguf",
        ]);
        let Selection::Gguf { files, tag, .. } = select("o/r", &repo, Some("Q4_K_M")).unwrap()
        else {
            panic!("not a gguf");
        };
        assert_eq!(tag, "Q4_K_M");
        assert_eq!(
            files,
            [
                "q-q4_k_m-00001-of-00002.gguf",
                "q-q4_k_m-00002-of-00002.gguf"
            ]
        );
        let listed = gguf_models(&repo);
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].1.len(), 2);
    }

    #[test]
    fn the_vision_projector_comes_with_any_quant() {
        let repo = paths(&[
            "gemma-3-4b-it-Q4_K_M.gguf",
            "mmproj-model-bf16.gguf",
            "mmproj-model-f32.gguf",
            "mmproj-model-f16.gguf",
        ]);
        let Selection::Gguf { files, mmproj, .. } = select("o/r", &repo, None).unwrap() else {
            panic!("not a gguf");
        };
        assert_eq!(files, ["gemma-3-4b-it-Q4_K_M.gguf"]);
        assert_eq!(mmproj.as_deref(), Some("mmproj-model-f16.gguf"));
        let only_bf16 = paths(&["m-Q8_0.gguf", "mmproj-BF16.gguf", "mmproj-F32.gguf"]);
        let Selection::Gguf { mmproj, .. } = select("o/r", &only_bf16, None).unwrap() else {
            panic!("not a gguf");
        };
        assert_eq!(mmproj.as_deref(), Some("mmproj-BF16.gguf"));
    }

    #[test]
    fn folder_repos() {
        let repo = paths(&["config.json", "model.safetensors", "tokenizer.json"]);
        assert_eq!(select("o/r", &repo, None).unwrap(), Selection::Folder);
        assert!(matches!(
            select("o/r", &repo, Some("Q4_K_M")),
            Err(SelectError::NotGguf { .. })
        ));
    }
}
