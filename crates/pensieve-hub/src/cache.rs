//! The standard Hugging Face cache, as every other tool lays it out:
//! `models--org--name/{blobs/<etag>, snapshots/<commit>/<path> -> blob, refs/<branch>}`.
//! Finding a model in it, listing what engines can run, and removing a model without
//! touching blobs another snapshot file still uses.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::select::{gguf_models, select, SelectError, Selection};

/// The cache root (the folder holding `models--*`).
#[derive(Debug, Clone)]
pub struct HfCache {
    root: PathBuf,
}

/// How an engine runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// GGUF files (llama engine).
    Gguf,
    /// A folder of safetensors and configs (mlx engine).
    Folder,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::Folder => "mlx",
        }
    }
}

/// One runnable model found in the cache.
#[derive(Debug, Clone)]
pub struct CachedModel {
    /// `org/name:TAG` for a GGUF, `org/name` for a folder.
    pub name: String,
    pub repo: String,
    pub format: ModelFormat,
    /// What an engine opens: the (first) GGUF file, or the snapshot folder.
    pub path: PathBuf,
    /// Its files in the snapshot (all GGUF parts, or every file of the folder).
    pub files: Vec<PathBuf>,
    pub size: u64,
    /// The vision projector pulled with a GGUF model, when its repo has one.
    pub mmproj: Option<PathBuf>,
}

impl HfCache {
    pub fn new(root: impl Into<PathBuf>) -> HfCache {
        HfCache { root: root.into() }
    }

    /// Where `huggingface_hub` puts it: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub fn from_env() -> HfCache {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
            .unwrap_or_else(|| {
                let home = var("HOME")
                    .or_else(|| var("USERPROFILE"))
                    .unwrap_or_else(std::env::temp_dir);
                home.join(".cache").join("huggingface").join("hub")
            });
        HfCache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The snapshot folder of `revision` (a branch or tag with a ref file, or a commit).
    pub fn snapshot_dir(&self, repo: &str, revision: &str) -> Option<PathBuf> {
        let dir = self.repo_dir(repo);
        let commit = std::fs::read_to_string(dir.join("refs").join(revision))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| revision.to_owned());
        let snapshot = dir.join("snapshots").join(commit);
        snapshot.is_dir().then_some(snapshot)
    }

    /// The model `repo[:tag]` names at `revision`, if its files are all here.
    pub fn find(
        &self,
        repo: &str,
        tag: Option<&str>,
        revision: &str,
    ) -> Result<Option<CachedModel>, SelectError> {
        let Some(snapshot) = self.snapshot_dir(repo, revision) else {
            return Ok(None);
        };
        let files = relative_files(&snapshot);
        let model = match select(repo, &files, tag)? {
            Selection::Gguf { files, tag, mmproj } => {
                gguf_model(repo, &snapshot, &tag, &files).map(|mut model| {
                    // Pulled before projectors were fetched: a model without one.
                    model.mmproj = mmproj.map(|p| snapshot.join(p)).filter(|p| p.is_file());
                    model
                })
            }
            Selection::Folder => folder_model(repo, &snapshot, &files),
        };
        Ok(model.filter(|m| m.files.iter().all(|f| f.is_file())))
    }

    /// Every model an engine can run, in name order: each GGUF model of each repo's
    /// current snapshot (`refs/main`, else the newest), and repos that are model folders.
    pub fn models(&self) -> Vec<CachedModel> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let folder = entry.file_name().to_string_lossy().into_owned();
            let Some(repo) = folder
                .strip_prefix("models--")
                .map(|r| r.replacen("--", "/", 1))
            else {
                continue;
            };
            let Some(snapshot) = self.current_snapshot(&repo) else {
                continue;
            };
            let files = relative_files(&snapshot);
            let ggufs = gguf_models(&files);
            if ggufs.is_empty() {
                out.extend(folder_model(&repo, &snapshot, &files));
            }
            for (tag, parts) in ggufs {
                out.extend(gguf_model(&repo, &snapshot, &tag, &parts));
            }
        }
        out.retain(|m| m.files.iter().all(|f| f.is_file()));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn current_snapshot(&self, repo: &str) -> Option<PathBuf> {
        self.snapshot_dir(repo, "main").or_else(|| {
            let dir = self.repo_dir(repo).join("snapshots");
            std::fs::read_dir(dir)
                .ok()?
                .flatten()
                .filter(|e| e.path().is_dir())
                .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
                .map(|e| e.path())
        })
    }

    /// Remove `model`: its snapshot files, then the blobs no remaining snapshot file points
    /// to; the whole repo folder once nothing runnable is left. Returns the bytes freed.
    pub fn remove(&self, model: &CachedModel) -> io::Result<u64> {
        let repo_dir = self.repo_dir(&model.repo);
        if model.format == ModelFormat::Folder {
            let freed = dir_size(&repo_dir.join("blobs"));
            std::fs::remove_dir_all(&repo_dir)?;
            return Ok(freed);
        }
        let mut targets = Vec::new();
        for file in &model.files {
            if let Ok(blob) = std::fs::canonicalize(file) {
                targets.push(blob);
            }
            remove_if_exists(file)?;
        }
        let still_used = linked_blobs(&repo_dir.join("snapshots"));
        let mut freed = 0;
        for blob in targets.iter().filter(|b| !still_used.contains(*b)) {
            freed += std::fs::metadata(blob).map_or(0, |m| m.len());
            remove_if_exists(blob)?;
        }
        let snapshots = repo_dir.join("snapshots");
        // The repo's last model: what came with it (a vision projector, a README) goes too.
        if gguf_models(&relative_files(&snapshots)).is_empty() {
            freed += dir_size(&repo_dir.join("blobs"));
            std::fs::remove_dir_all(&repo_dir)?;
        }
        Ok(freed)
    }
}

fn gguf_model(repo: &str, snapshot: &Path, tag: &str, parts: &[String]) -> Option<CachedModel> {
    let files: Vec<PathBuf> = parts.iter().map(|p| snapshot.join(p)).collect();
    Some(CachedModel {
        name: format!("{repo}:{tag}"),
        repo: repo.to_owned(),
        format: ModelFormat::Gguf,
        path: files.first()?.clone(),
        size: files.iter().map(|f| file_size(f)).sum(),
        files,
        mmproj: None,
    })
}

fn folder_model(repo: &str, snapshot: &Path, files: &[String]) -> Option<CachedModel> {
    if !crate::mlx_config::is_model_folder(snapshot) {
        return None;
    }
    let files: Vec<PathBuf> = files.iter().map(|p| snapshot.join(p)).collect();
    Some(CachedModel {
        name: repo.to_owned(),
        repo: repo.to_owned(),
        format: ModelFormat::Folder,
        path: snapshot.to_owned(),
        size: files.iter().map(|f| file_size(f)).sum(),
        files,
        mmproj: None,
    })
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Paths of the files under `dir`, relative and `/`-separated.
pub fn relative_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if let Ok(rel) = path.strip_prefix(base) {
                let parts: Vec<_> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The blobs the snapshot files under `snapshots` point to.
fn linked_blobs(snapshots: &Path) -> HashSet<PathBuf> {
    relative_files(snapshots)
        .iter()
        .filter_map(|f| std::fs::canonicalize(snapshots.join(f)).ok())
        .collect()
}

/// The bytes of every file under `dir` (links followed).
pub fn dir_size(dir: &Path) -> u64 {
    relative_files(dir)
        .iter()
        .map(|f| file_size(&dir.join(f)))
        .sum()
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
