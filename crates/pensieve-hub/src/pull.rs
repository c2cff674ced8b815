//! Pulling a model from the Hugging Face Hub into the standard cache through `hf-hub`:
//! ask the Hub which files the reference names (with their sizes and hashes), skip those
//! already in the cache and intact, download the rest (hf-hub resumes from its
//! `.sync.part` files), and check every file's size and hash against the Hub's metadata
//! before it counts as pulled. A file that fails the check is removed, never left where
//! the model should be.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hf_hub::api::tokio::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use serde::Deserialize;

use crate::cache::{CachedModel, HfCache, ModelFormat};
use crate::select::{select, SelectError, Selection};
use crate::verify::{verify_file, Expected, Mismatch};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Attempts per file: a dropped connection resumes where the last one stopped.
const ATTEMPTS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot reach the Hugging Face Hub at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{repo} not found on {endpoint} (or it is private: set HF_TOKEN)")]
    RepoNotFound { repo: String, endpoint: String },
    #[error("revision {revision:?} of {repo} not found")]
    RevisionNotFound { repo: String, revision: String },
    #[error(
        "{repo} is gated or private: accept its terms on the Hub, then set HF_TOKEN to a token \
         with access"
    )]
    Unauthorized { repo: String },
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error("the Hub's answer for {what} was not understood: {reason}")]
    BadAnswer { what: String, reason: String },
    #[error("{file}: {mismatch}; the bad download was removed: run the same command again")]
    Corrupt { file: String, mismatch: Mismatch },
    #[error("download of {file} was interrupted ({reason}); run the same command again to resume")]
    Interrupted { file: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a pull reports as it goes (a terminal draws bars; a server logs lines).
pub trait PullProgress: Send + Sync {
    /// A download of `file` starts: `size` bytes in all.
    fn start(&self, file: &str, size: u64);
    /// `bytes` more are on disk (a resumed download first reports what it already had).
    fn advance(&self, bytes: u64);
    fn finish(&self, file: &str);
    /// Something the user should know (a corrupt cached file, a retry).
    fn note(&self, message: &str);
}

/// One file of the model, as the Hub describes it.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    pub path: String,
    pub expected: Expected,
}

/// What a pull will fetch.
#[derive(Debug, Clone)]
pub struct Plan {
    pub repo: String,
    pub revision: String,
    pub commit: String,
    /// How `list` will name the model.
    pub name: String,
    pub tag: Option<String>,
    pub format: ModelFormat,
    pub files: Vec<RemoteFile>,
}

impl Plan {
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.expected.size).sum()
    }
}

/// The Hub, as `HF_ENDPOINT` and `HF_TOKEN` say.
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    cache: HfCache,
    api: Api,
}

#[derive(Deserialize)]
struct RepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

impl Hub {
    /// `HF_ENDPOINT` (default huggingface.co), `HF_TOKEN` (else the token file that
    /// `hf auth login` writes next to the cache).
    pub fn from_env(cache: HfCache) -> Result<Hub, PullError> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let endpoint = endpoint.trim().trim_end_matches('/').to_owned();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .or_else(|| token_file(&cache));
        let api =
            build_api(&cache, &endpoint, token.clone()).map_err(|e| PullError::BadAnswer {
                what: "the client setup".into(),
                reason: e.to_string(),
            })?;
        Ok(Hub {
            endpoint,
            token,
            cache,
            api,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Ask the Hub what `repo[:tag]` at `revision` is made of.
    pub async fn plan(
        &self,
        repo: &str,
        tag: Option<&str>,
        revision: &str,
    ) -> Result<Plan, PullError> {
        let url = format!("{}/api/models/{repo}/revision/{revision}", self.endpoint);
        let response = self
            .api
            .client()
            .get(&url)
            .query(&[("blobs", "true")])
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        match (status, code.as_str()) {
            (200..=299, _) => {}
            (_, "RevisionNotFound") => {
                return Err(PullError::RevisionNotFound {
                    repo: repo.into(),
                    revision: revision.into(),
                })
            }
            (_, "GatedRepo") | (403, _) => {
                return Err(PullError::Unauthorized { repo: repo.into() })
            }
            (401 | 404, _) => {
                return Err(PullError::RepoNotFound {
                    repo: repo.into(),
                    endpoint: self.endpoint.clone(),
                })
            }
            _ => {
                return Err(PullError::BadAnswer {
                    what: url,
                    reason: format!("HTTP {status}"),
                })
            }
        }
        let info: RepoInfo = response.json().await.map_err(|e| PullError::BadAnswer {
            what: url.clone(),
            reason: e.to_string(),
        })?;
        let commit = info.sha.ok_or_else(|| PullError::BadAnswer {
            what: url.clone(),
            reason: "no commit sha".into(),
        })?;
        let paths: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
        let (wanted, name, tag, format) = match select(repo, &paths, tag)? {
            // The projector comes with the model: a vision model then sees images.
            Selection::Gguf { files, tag, mmproj } => (
                files.into_iter().chain(mmproj).collect(),
                format!("{repo}:{tag}"),
                Some(tag),
                ModelFormat::Gguf,
            ),
            Selection::Folder => (paths.clone(), repo.to_owned(), None, ModelFormat::Folder),
        };
        let files = info
            .siblings
            .into_iter()
            .filter(|s| wanted.contains(&s.rfilename))
            .map(|s| RemoteFile {
                expected: Expected {
                    size: s.lfs.as_ref().map(|l| l.size).or(s.size).unwrap_or(0),
                    sha256: s.lfs.map(|l| l.sha256.to_ascii_lowercase()),
                    git_sha1: s.blob_id,
                },
                path: s.rfilename,
            })
            .collect();
        Ok(Plan {
            repo: repo.into(),
            revision: revision.into(),
            commit,
            name,
            tag,
            format,
            files,
        })
    }

    /// Fetch what `plan` lists that the cache lacks; every file is checked.
    pub async fn pull(
        &self,
        plan: &Plan,
        progress: Arc<dyn PullProgress>,
    ) -> Result<CachedModel, PullError> {
        let snapshot = self
            .cache
            .repo_dir(&plan.repo)
            .join("snapshots")
            .join(&plan.commit);
        for file in &plan.files {
            let pointer = snapshot.join(&file.path);
            if pointer.is_file() {
                match check(&pointer, &file.expected).await? {
                    Ok(()) => continue,
                    Err(mismatch) => {
                        progress.note(&format!(
                            "the cached copy of {} is corrupt ({mismatch}); downloading it again",
                            file.path
                        ));
                        remove_with_blob(&pointer)?;
                    }
                }
            }
            self.download(plan, file, progress.clone()).await?;
            if let Err(mismatch) = check(&pointer, &file.expected).await? {
                remove_with_blob(&pointer)?;
                return Err(PullError::Corrupt {
                    file: file.path.clone(),
                    mismatch,
                });
            }
        }
        self.cache
            .find(&plan.repo, plan.tag.as_deref(), &plan.revision)?
            .ok_or_else(|| PullError::BadAnswer {
                what: plan.name.clone(),
                reason: "its files are not in the cache after the download".into(),
            })
    }

    /// One file, resumed after a dropped connection up to [`ATTEMPTS`] times.
    ///
    /// Each attempt runs hf-hub on a one-thread runtime of its own: its chunk requests
    /// then complete in order, so the `.sync.part` file records what arrived (chunks done
    /// out of order past a gap would be fetched again), and dropping the runtime after a
    /// failure stops the attempt's remaining chunks before the next one starts.
    async fn download(
        &self,
        plan: &Plan,
        file: &RemoteFile,
        progress: Arc<dyn PullProgress>,
    ) -> Result<PathBuf, PullError> {
        let mut attempt = 1;
        loop {
            let bar = HfProgress {
                sink: progress.clone(),
                file: file.path.clone(),
            };
            let (cache, endpoint, token) = (
                self.cache.clone(),
                self.endpoint.clone(),
                self.token.clone(),
            );
            let repo =
                Repo::with_revision(plan.repo.clone(), RepoType::Model, plan.revision.clone());
            let path = file.path.clone();
            let result = tokio::task::spawn_blocking(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let api = build_api(&cache, &endpoint, token)?;
                runtime.block_on(api.repo(repo).download_with_progress(&path, bar))
            })
            .await
            .map_err(|e| PullError::Io(std::io::Error::other(e)))?;
            let error = match result {
                Ok(path) => return Ok(path),
                Err(e) => self.classify(&plan.repo, &file.path, e),
            };
            match error {
                PullError::Interrupted { ref reason, .. } if attempt < ATTEMPTS => {
                    progress.note(&format!(
                        "download of {} interrupted ({reason}); resuming",
                        file.path
                    ));
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    attempt += 1;
                }
                error => return Err(error),
            }
        }
    }

    fn unreachable(&self, e: &dyn std::error::Error) -> PullError {
        // The innermost cause says it ("Connection refused", "failed to lookup address").
        let mut root = e;
        while let Some(source) = root.source() {
            root = source;
        }
        PullError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: root.to_string(),
        }
    }

    fn classify(&self, repo: &str, file: &str, e: ApiError) -> PullError {
        match e {
            ApiError::RequestError(e) => match e.status().map(|s| s.as_u16()) {
                Some(401 | 403) => PullError::Unauthorized {
                    repo: repo.to_owned(),
                },
                Some(status) => PullError::BadAnswer {
                    what: file.to_owned(),
                    reason: format!("HTTP {status}"),
                },
                None if e.is_connect() => self.unreachable(&e),
                None => PullError::Interrupted {
                    file: file.to_owned(),
                    reason: error_chain(&e),
                },
            },
            ApiError::IoError(e) => PullError::Io(e),
            other => PullError::Interrupted {
                file: file.to_owned(),
                reason: error_chain(&other),
            },
        }
    }
}

/// An hf-hub client for `endpoint`, downloading into `cache`.
fn build_api(cache: &HfCache, endpoint: &str, token: Option<String>) -> Result<Api, ApiError> {
    ApiBuilder::from_cache(hf_hub::Cache::new(cache.root().to_owned()))
        .with_endpoint(endpoint.to_owned())
        .with_token(token)
        .with_progress(false)
        .with_user_agent("pensieve", env!("CARGO_PKG_VERSION"))
        .build()
}

/// hf-hub's progress callbacks, forwarded.
#[derive(Clone)]
struct HfProgress {
    sink: Arc<dyn PullProgress>,
    file: String,
}

impl hf_hub::api::tokio::Progress for HfProgress {
    async fn init(&mut self, size: usize, _filename: &str) {
        self.sink.start(&self.file, size as u64);
    }
    async fn update(&mut self, size: usize) {
        self.sink.advance(size as u64);
    }
    async fn finish(&mut self) {
        self.sink.finish(&self.file);
    }
}

/// Hashing gigabytes is blocking work.
async fn check(path: &Path, expected: &Expected) -> Result<Result<(), Mismatch>, PullError> {
    let (path, expected) = (path.to_owned(), expected.clone());
    tokio::task::spawn_blocking(move || verify_file(&path, &expected))
        .await
        .map_err(|e| PullError::Io(std::io::Error::other(e)))?
        .map_err(PullError::Io)
}

/// Remove a snapshot file and the blob it links to.
fn remove_with_blob(pointer: &Path) -> std::io::Result<()> {
    let blob = std::fs::canonicalize(pointer).ok();
    std::fs::remove_file(pointer)?;
    if let Some(blob) = blob.filter(|b| b != pointer) {
        match std::fs::remove_file(&blob) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The token `hf auth login` saved: `$HF_TOKEN_PATH`, else `token` beside the hub cache.
fn token_file(cache: &HfCache) -> Option<String> {
    let path = std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| cache.root().parent().map(|p| p.join("token")))?;
    let token = std::fs::read_to_string(path).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// An error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
