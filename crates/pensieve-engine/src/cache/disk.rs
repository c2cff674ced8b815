//! Snapshots on disk (`--cache-dir`): one file per entry, written by a background
//! thread so the engine never waits on the disk, and indexed again at start-up.
//!
//! Layout: `<dir>/<model fingerprint hash>/<token hash>.kv`, so snapshots of another
//! model (or another cache layout) are never loaded. A file is written to a temporary
//! name and renamed, so a crash leaves either the whole file or none.
//!
//! File: magic, fingerprint, prompt length, token count, token ids (i32 LE), snapshot
//! length (u64 LE), snapshot bytes.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::model::TokenId;

const MAGIC: &[u8; 8] = b"PNSVKV01";
const EXTENSION: &str = "kv";

/// A snapshot file found at start-up.
pub(super) struct FoundFile {
    pub tokens: Arc<[TokenId]>,
    pub prompt_len: usize,
    pub bytes: u64,
    /// 0 for the oldest file, counting up by modification time.
    pub age_rank: u64,
}

enum Job {
    Write {
        path: PathBuf,
        tokens: Arc<[TokenId]>,
        prompt_len: usize,
        state: Arc<Vec<u8>>,
    },
    Delete(PathBuf),
    Flush(mpsc::Sender<()>),
}

pub(super) struct DiskStore {
    dir: PathBuf,
    fingerprint: String,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl DiskStore {
    /// Open (creating) the directory for this model and list the snapshots in it.
    pub fn open(root: &Path, fingerprint: &str) -> io::Result<(DiskStore, Vec<FoundFile>)> {
        let dir = root.join(format!("{:016x}", hash_bytes(fingerprint.as_bytes())));
        fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for item in fs::read_dir(&dir)? {
            let path = item?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
                // Leftover temporary files of an interrupted write.
                if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            match read_header(&path, fingerprint) {
                Ok((tokens, prompt_len, bytes)) => {
                    let modified = fs::metadata(&path).and_then(|m| m.modified()).ok();
                    found.push((modified, tokens, prompt_len, bytes));
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "ignoring a cache file: {e}");
                }
            }
        }
        found.sort_by_key(|(modified, ..)| *modified);
        let found = found
            .into_iter()
            .enumerate()
            .map(|(rank, (_, tokens, prompt_len, bytes))| FoundFile {
                tokens: tokens.into(),
                prompt_len,
                bytes,
                age_rank: rank as u64,
            })
            .collect();
        let (jobs, queue) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("pensieve-cache-writer".into())
            .spawn({
                let fingerprint = fingerprint.to_owned();
                move || writer_thread(queue, fingerprint)
            })?;
        Ok((
            DiskStore {
                dir,
                fingerprint: fingerprint.to_owned(),
                jobs: Some(jobs),
                writer: Some(writer),
            },
            found,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn write(&mut self, tokens: Arc<[TokenId]>, prompt_len: usize, state: Arc<Vec<u8>>) {
        let path = self.path_of(&tokens);
        self.send(Job::Write {
            path,
            tokens,
            prompt_len,
            state,
        });
    }

    pub fn delete(&mut self, tokens: &[TokenId]) {
        let path = self.path_of(tokens);
        self.send(Job::Delete(path));
    }

    /// The snapshot stored for `tokens` (waiting for pending writes first).
    pub fn read(&mut self, tokens: &[TokenId]) -> Option<Vec<u8>> {
        self.flush();
        let path = self.path_of(tokens);
        match read_file(&path, &self.fingerprint, tokens) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot read a cache file: {e}");
                None
            }
        }
    }

    /// Wait until every write and delete sent so far is done.
    pub fn flush(&mut self) {
        let (done, wait) = mpsc::channel();
        self.send(Job::Flush(done));
        let _ = wait.recv();
    }

    fn send(&mut self, job: Job) {
        if let Some(jobs) = &self.jobs {
            if jobs.send(job).is_err() {
                tracing::warn!("the cache writer thread is gone");
            }
        }
    }

    fn path_of(&self, tokens: &[TokenId]) -> PathBuf {
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        self.dir
            .join(format!("{:016x}.{EXTENSION}", hash_bytes(&bytes)))
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after the jobs already queued.
        self.jobs = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn writer_thread(queue: mpsc::Receiver<Job>, fingerprint: String) {
    for job in queue {
        match job {
            Job::Write {
                path,
                tokens,
                prompt_len,
                state,
            } => {
                if let Err(e) = write_file(&path, &fingerprint, &tokens, prompt_len, &state) {
                    tracing::warn!(file = %path.display(), "cannot write a cache file: {e}");
                }
            }
            Job::Delete(path) => match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %path.display(), "cannot delete a cache file: {e}"),
            },
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn write_file(
    path: &Path,
    fingerprint: &str,
    tokens: &[TokenId],
    prompt_len: usize,
    state: &[u8],
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut w = BufWriter::new(File::create(&tmp)?);
        w.write_all(MAGIC)?;
        write_u32(&mut w, len_u32(fingerprint.len())?)?;
        w.write_all(fingerprint.as_bytes())?;
        write_u32(&mut w, len_u32(prompt_len)?)?;
        write_u32(&mut w, len_u32(tokens.len())?)?;
        for t in tokens {
            w.write_all(&t.to_le_bytes())?;
        }
        w.write_all(&(state.len() as u64).to_le_bytes())?;
        w.write_all(state)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// Tokens, prompt length and snapshot size of a file, checking it belongs to this model.
fn read_header(path: &Path, fingerprint: &str) -> io::Result<(Vec<TokenId>, usize, u64)> {
    let mut r = BufReader::new(File::open(path)?);
    let (tokens, prompt_len, state_len) = read_prefix(&mut r, fingerprint)?;
    let file_len = fs::metadata(path)?.len();
    let header_len = 8 + 4 + fingerprint.len() as u64 + 8 + 4 * tokens.len() as u64 + 8;
    if header_len + state_len != file_len {
        return Err(invalid("the file is truncated"));
    }
    Ok((tokens, prompt_len, state_len))
}

fn read_file(path: &Path, fingerprint: &str, expected: &[TokenId]) -> io::Result<Vec<u8>> {
    let mut r = BufReader::new(File::open(path)?);
    let (tokens, _, state_len) = read_prefix(&mut r, fingerprint)?;
    if tokens != expected {
        return Err(invalid("the file holds other tokens"));
    }
    let mut state = vec![0u8; usize::try_from(state_len).map_err(|_| invalid("too large"))?];
    r.read_exact(&mut state)?;
    Ok(state)
}

fn read_prefix(r: &mut impl Read, fingerprint: &str) -> io::Result<(Vec<TokenId>, usize, u64)> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a pensieve cache file"));
    }
    let n = read_u32(r)? as usize;
    if n != fingerprint.len() {
        return Err(invalid("made for another model"));
    }
    let mut fp = vec![0u8; n];
    r.read_exact(&mut fp)?;
    if fp != fingerprint.as_bytes() {
        return Err(invalid("made for another model"));
    }
    let prompt_len = read_u32(r)? as usize;
    let count = read_u32(r)? as usize;
    let mut raw = vec![0u8; count.checked_mul(4).ok_or_else(|| invalid("too large"))?];
    r.read_exact(&mut raw)?;
    let tokens = raw
        .chunks_exact(4)
        .map(|c| TokenId::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    Ok((tokens, prompt_len, u64::from_le_bytes(len)))
}

fn write_u32(w: &mut impl Write, v: u32) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn len_u32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| invalid("too large"))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// FNV-1a: stable across runs and platforms (file names must not change between them).
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
