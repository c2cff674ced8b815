//! Checking a downloaded file against what the Hub says it is: its size, then the sha256
//! of an LFS file or the git blob id (sha1 of `blob <len>\0` + content) of a small one.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// What the Hub's metadata promises about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    /// Lower-case hex, for LFS files.
    pub sha256: Option<String>,
    /// The git blob id, for files stored in git itself.
    pub git_sha1: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Size { expected: u64, actual: u64 },
    Sha256 { expected: String, actual: String },
    GitSha1 { expected: String, actual: String },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Size { expected, actual } => {
                write!(f, "size mismatch: expected {expected} bytes, got {actual}")
            }
            Mismatch::Sha256 { expected, actual } => {
                write!(f, "sha256 mismatch: expected {expected}, got {actual}")
            }
            Mismatch::GitSha1 { expected, actual } => {
                write!(f, "git blob id mismatch: expected {expected}, got {actual}")
            }
        }
    }
}

/// `Ok(Err(_))` when the file is readable but not what was promised.
pub fn verify_file(path: &Path, expected: &Expected) -> io::Result<Result<(), Mismatch>> {
    let actual = std::fs::metadata(path)?.len();
    // A size of 0 means the Hub did not say (small files listed without `blobs=true`).
    if expected.size != 0 && actual != expected.size {
        return Ok(Err(Mismatch::Size {
            expected: expected.size,
            actual,
        }));
    }
    if let Some(want) = &expected.sha256 {
        let got = hex(&digest::<Sha256>(path, None)?);
        if !got.eq_ignore_ascii_case(want) {
            return Ok(Err(Mismatch::Sha256 {
                expected: want.clone(),
                actual: got,
            }));
        }
    } else if let Some(want) = &expected.git_sha1 {
        let header = format!("blob {actual}\0");
        let got = hex(&digest::<Sha1>(path, Some(header.as_bytes()))?);
        if !got.eq_ignore_ascii_case(want) {
            return Ok(Err(Mismatch::GitSha1 {
                expected: want.clone(),
                actual: got,
            }));
        }
    }
    Ok(Ok(()))
}

fn digest<D: Digest>(path: &Path, prefix: Option<&[u8]>) -> io::Result<Vec<u8>> {
    let mut hasher = D::new();
    if let Some(prefix) = prefix {
        hasher.update(prefix);
    }
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_hashes() {
        let dir = std::env::temp_dir().join(format!("pensieve-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"hello\n").unwrap();
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        // `git hash-object` of the same content.
        let git = "ce013625030ba8dba906f756967f9e9ca394464a";
        let ok = |e: Expected| verify_file(&file, &e).unwrap();
        let exp = |size, sha: Option<&str>, git: Option<&str>| Expected {
            size,
            sha256: sha.map(Into::into),
            git_sha1: git.map(Into::into),
        };
        assert_eq!(ok(exp(6, Some(sha), None)), Ok(()));
        assert_eq!(ok(exp(6, None, Some(git))), Ok(()));
        assert!(matches!(
            ok(exp(7, Some(sha), None)),
            Err(Mismatch::Size { .. })
        ));
        let bad = ok(exp(6, Some(&"0".repeat(64)), None)).unwrap_err();
        assert!(bad.to_string().starts_with("sha256 mismatch"), "{bad}");
        assert!(matches!(
            ok(exp(6, None, Some(sha))),
            Err(Mismatch::GitSha1 { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
