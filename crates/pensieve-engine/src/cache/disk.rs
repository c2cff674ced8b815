//! Snapshots on disk (`--cache-dir`): one file per entry, written by a background
//! thread so the engine never waits on the disk, and indexed again at start-up.
//!
//! Layout: `<dir>/<model fingerprint hash>/<token hash>.kv`, so snapshots of another
//! model (or another cache layout) are never loaded.
//!
//! File: magic, fingerprint, prompt length, token count, token ids (i32 LE), snapshot
//! length (u64 LE), CRC-32 of all of that, snapshot bytes, CRC-32 of the snapshot.
//!
//! Integrity: a file is written to a temporary name of this process and renamed, so
//! a crash leaves either the whole file or none. At start-up each header is checked
//! (magic, fingerprint, checksum, length); the snapshot's checksum is checked when it
//! is read, before the backend sees it. A file that fails either check is removed
//! with a warning and the prompt is prefilled as if it had never been cached.
//!
//! fsync policy: the file's data is synced before the rename and the directory after
//! it, so a snapshot that is in place survives a power loss. The writes run on their
//! own thread; a crash loses at most the snapshots still queued, which costs only a
//! prefill.
//!
//! Sharing: one server per model directory. The first takes an advisory lock (the
//! `lock` file, with its pid); another server of the same model on the same
//! `--cache-dir` runs without the disk tier and says why. (A shared directory would
//! need every reader to trust files a foreign process may be deleting or rewriting.)
//!
//! A full disk stops the writes until restart; reading and serving go on.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::EntryId;
use crate::model::TokenId;

const MAGIC: &[u8; 8] = b"PNSVKV02";
/// Files of earlier layouts start with this too; they are removed.
const MAGIC_FAMILY: &[u8; 6] = b"PNSVKV";
const EXTENSION: &str = "kv";
const TMP_EXTENSION: &str = "tmp";
const LOCK_FILE: &str = "lock";

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
        id: EntryId,
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
    /// Entries whose write failed: they are not on disk after all.
    failed: mpsc::Receiver<EntryId>,
    /// Set by the writer when the disk is full.
    full: Arc<AtomicBool>,
    /// Held for the store's life: the directory is this process's.
    _lock: File,
}

impl DiskStore {
    /// Open (creating) the directory for this model, lock it and list the valid
    /// snapshots in it, removing the files that fail their checks.
    pub fn open(root: &Path, fingerprint: &str) -> io::Result<(DiskStore, Vec<FoundFile>)> {
        let dir = root.join(format!("{:016x}", hash_bytes(fingerprint.as_bytes())));
        fs::create_dir_all(&dir)?;
        let lock = lock_dir(&dir)?;
        let mut found = Vec::new();
        for item in fs::read_dir(&dir)? {
            let path = item?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some(EXTENSION) => {}
                // Left by a write that a crash interrupted: nobody else writes here.
                Some(TMP_EXTENSION) => {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                _ => continue,
            }
            match read_header(&path, fingerprint) {
                Ok((tokens, prompt_len, bytes)) => {
                    let modified = fs::metadata(&path).and_then(|m| m.modified()).ok();
                    found.push((modified, tokens, prompt_len, bytes));
                }
                Err(e) => remove_bad(&path, &e),
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
        let (failed_tx, failed) = mpsc::channel();
        let full = Arc::new(AtomicBool::new(false));
        let writer = std::thread::Builder::new()
            .name("pensieve-cache-writer".into())
            .spawn({
                let writer = Writer {
                    dir: dir.clone(),
                    fingerprint: fingerprint.to_owned(),
                    failed: failed_tx,
                    full: full.clone(),
                };
                move || writer.run(queue)
            })?;
        Ok((
            DiskStore {
                dir,
                fingerprint: fingerprint.to_owned(),
                jobs: Some(jobs),
                writer: Some(writer),
                failed,
                full,
                _lock: lock,
            },
            found,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queue a snapshot's write. False when the disk is full: nothing was queued.
    pub fn write(
        &mut self,
        id: EntryId,
        tokens: Arc<[TokenId]>,
        prompt_len: usize,
        state: Arc<Vec<u8>>,
    ) -> bool {
        if self.full.load(Ordering::Relaxed) {
            return false;
        }
        let path = self.path_of(&tokens);
        self.send(Job::Write {
            id,
            path,
            tokens,
            prompt_len,
            state,
        });
        true
    }

    pub fn delete(&mut self, tokens: &[TokenId]) {
        let path = self.path_of(tokens);
        self.send(Job::Delete(path));
    }

    /// The entries whose queued write failed since the last call.
    pub fn failed_writes(&mut self) -> Vec<EntryId> {
        self.failed.try_iter().collect()
    }

    /// The snapshot stored for `tokens` (waiting for pending writes first), checked
    /// against its checksum. A file that fails is removed.
    pub fn read(&mut self, tokens: &[TokenId]) -> Option<Vec<u8>> {
        self.flush();
        let path = self.path_of(tokens);
        match read_file(&path, &self.fingerprint, tokens) {
            Ok(state) => Some(state),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                remove_bad(&path, &e);
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

/// Take the directory's lock, or say who holds it.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_owned()
            } else {
                format!("another process (pid {holder})")
            };
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{} is in use by {who}", dir.display()),
            ));
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

fn remove_bad(path: &Path, e: &io::Error) {
    tracing::warn!(file = %path.display(), "removing a bad cache file: {e}");
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), "cannot remove a bad cache file: {e}");
        }
    }
}

struct Writer {
    dir: PathBuf,
    fingerprint: String,
    failed: mpsc::Sender<EntryId>,
    full: Arc<AtomicBool>,
}

impl Writer {
    fn run(self, queue: mpsc::Receiver<Job>) {
        for job in queue {
            match job {
                Job::Write {
                    id,
                    path,
                    tokens,
                    prompt_len,
                    state,
                } => {
                    if self.full.load(Ordering::Relaxed) {
                        let _ = self.failed.send(id);
                        continue;
                    }
                    let written = write_file(&path, &self.fingerprint, &tokens, prompt_len, &state);
                    if let Err(e) = written {
                        let _ = self.failed.send(id);
                        if is_disk_full(&e) {
                            self.full.store(true, Ordering::Relaxed);
                            tracing::warn!(
                                dir = %self.dir.display(),
                                "the disk is full: no more prefix cache writes until restart ({e})"
                            );
                        } else {
                            tracing::warn!(file = %path.display(), "cannot write a cache file: {e}");
                        }
                    }
                }
                Job::Delete(path) => match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(file = %path.display(), "cannot delete a cache file: {e}")
                    }
                },
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded
}

/// Write to a temporary file of this process, sync, rename, sync the directory.
/// Whatever fails, no temporary file is left behind.
fn write_file(
    path: &Path,
    fingerprint: &str,
    tokens: &[TokenId],
    prompt_len: usize,
    state: &[u8],
) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "{}.{}.{TMP_EXTENSION}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        w.write_all(&encode_header(
            fingerprint,
            tokens,
            prompt_len,
            state.len(),
        )?)?;
        w.write_all(state)?;
        w.write_all(&crc32fast::hash(state).to_le_bytes())?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Everything before the snapshot, its checksum included.
fn encode_header(
    fingerprint: &str,
    tokens: &[TokenId],
    prompt_len: usize,
    state_len: usize,
) -> io::Result<Vec<u8>> {
    let mut h = Vec::with_capacity(8 + 4 + fingerprint.len() + 8 + 4 * tokens.len() + 12);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&len_u32(fingerprint.len())?.to_le_bytes());
    h.extend_from_slice(fingerprint.as_bytes());
    h.extend_from_slice(&len_u32(prompt_len)?.to_le_bytes());
    h.extend_from_slice(&len_u32(tokens.len())?.to_le_bytes());
    for t in tokens {
        h.extend_from_slice(&t.to_le_bytes());
    }
    h.extend_from_slice(&(state_len as u64).to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    Ok(h)
}

/// The parsed, checked header of a file.
pub(super) struct Header {
    pub tokens: Vec<TokenId>,
    pub prompt_len: usize,
    pub state_len: u64,
    /// Bytes before the snapshot.
    pub len: u64,
}

impl Header {
    /// The file must end right after the snapshot and its checksum.
    fn check_len(&self, file_len: u64) -> io::Result<()> {
        match self
            .len
            .checked_add(self.state_len)
            .and_then(|n| n.checked_add(4))
        {
            Some(n) if n == file_len => Ok(()),
            _ => Err(invalid("the file is truncated or has trailing bytes")),
        }
    }
}

/// Tokens, prompt length and snapshot size of a file, checking it belongs to this
/// model and has the length its header says.
fn read_header(path: &Path, fingerprint: &str) -> io::Result<(Vec<TokenId>, usize, u64)> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let header = parse_header(&mut BufReader::new(file), fingerprint, file_len)?;
    header.check_len(file_len)?;
    Ok((header.tokens, header.prompt_len, header.state_len))
}

fn read_file(path: &Path, fingerprint: &str, expected: &[TokenId]) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    decode_file(&mut BufReader::new(file), fingerprint, expected, file_len)
}

/// The snapshot of a whole file read from `r`, every check made.
pub(super) fn decode_file(
    r: &mut impl Read,
    fingerprint: &str,
    expected: &[TokenId],
    file_len: u64,
) -> io::Result<Vec<u8>> {
    let header = parse_header(r, fingerprint, file_len)?;
    if header.tokens != expected {
        return Err(invalid("the file holds other tokens"));
    }
    header.check_len(file_len)?;
    let mut state = vec![0u8; usize::try_from(header.state_len).map_err(|_| invalid("too large"))?];
    r.read_exact(&mut state)?;
    let mut crc = [0u8; 4];
    r.read_exact(&mut crc)?;
    if crc32fast::hash(&state) != u32::from_le_bytes(crc) {
        return Err(invalid("the snapshot's checksum does not match"));
    }
    Ok(state)
}

/// Read and check a header. No allocation is larger than `file_len` allows, whatever
/// the lengths in the file say.
pub(super) fn parse_header(
    r: &mut impl Read,
    fingerprint: &str,
    file_len: u64,
) -> io::Result<Header> {
    let mut raw = Vec::with_capacity(64 + fingerprint.len());
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid(if magic.starts_with(MAGIC_FAMILY) {
            "written by another version of pensieve"
        } else {
            "not a pensieve cache file"
        }));
    }
    raw.extend_from_slice(&magic);
    let n = read_u32(r, &mut raw)? as usize;
    if n != fingerprint.len() {
        return Err(invalid("made for another model"));
    }
    let mut fp = vec![0u8; n];
    r.read_exact(&mut fp)?;
    raw.extend_from_slice(&fp);
    if fp != fingerprint.as_bytes() {
        return Err(invalid("made for another model"));
    }
    let prompt_len = read_u32(r, &mut raw)? as usize;
    let count = read_u32(r, &mut raw)? as u64;
    if count * 4 > file_len {
        return Err(invalid("the file is truncated"));
    }
    let mut ids = vec![0u8; (count * 4) as usize];
    r.read_exact(&mut ids)?;
    raw.extend_from_slice(&ids);
    let tokens: Vec<TokenId> = ids
        .chunks_exact(4)
        .map(|c| TokenId::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    raw.extend_from_slice(&len);
    let mut crc = [0u8; 4];
    r.read_exact(&mut crc)?;
    if crc32fast::hash(&raw) != u32::from_le_bytes(crc) {
        return Err(invalid("the header's checksum does not match"));
    }
    if prompt_len > tokens.len() {
        return Err(invalid("the prompt is longer than the tokens"));
    }
    Ok(Header {
        tokens,
        prompt_len,
        state_len: u64::from_le_bytes(len),
        len: raw.len() as u64 + 4,
    })
}

fn read_u32(r: &mut impl Read, raw: &mut Vec<u8>) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    raw.extend_from_slice(&b);
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

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
