//! GGUF metadata: the header and key/value section of a `.gguf` file, read without touching the
//! tensor data, and what a GGUF file *name* says (quantisation tag, split part).
//!
//! Only the keys Pensieve shows or acts on are kept ([`GgufInfo`]). Arrays are skipped as they are
//! read, keeping only their length, so a 260k-token vocabulary costs no memory. Every length in the
//! file is checked against the bytes left before it is acted on, so a truncated or corrupt file gives
//! an error, never a huge allocation, a read to the end of a 40 GB file, or a panic.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What a GGUF file says about itself. Every field but the header's is `None` when its key is
/// absent or holds a value of an unexpected type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufInfo {
    pub version: u32,
    pub tensor_count: u64,
    /// `general.architecture`, e.g. "llama", "qwen2", "gemma3".
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// `{arch}.context_length`: the context the model was trained for.
    pub context_length: Option<u64>,
    /// `general.file_type`, a `llama_ftype`; see [`file_type_name`].
    pub file_type: Option<u32>,
    /// `general.parameter_count` where a tool wrote it (llama.cpp's converter does not).
    pub parameter_count: Option<u64>,
    /// `general.size_label`, e.g. "135M", "0.5B", "8x7B".
    pub size_label: Option<String>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Length of the `tokenizer.ggml.tokens` array.
    pub vocab_size: Option<u64>,
    /// `split.count` in split GGUFs.
    pub split_count: Option<u16>,
    /// `{arch}.attention.sliding_window`.
    pub sliding_window: Option<u64>,
}

#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not a GGUF file", path.display())]
    NotGguf { path: PathBuf },
    #[error("{}: GGUF version {version} is not supported (only 2 and 3, little-endian)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{}: the metadata runs past the end of the file (truncated download or corrupt file)", path.display())]
    Truncated { path: PathBuf },
    #[error("{}: corrupt GGUF metadata: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// Reads the header and metadata of the GGUF file at `path`.
pub fn read_info(path: &Path) -> Result<GgufInfo, GgufError> {
    let io_err = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    parse(BufReader::new(file), len).map_err(|fault| fault.at(path))
}

/// [`read_info`] over bytes in memory: the entry point of the fuzz target (`fuzz/`).
#[doc(hidden)]
pub fn parse_bytes(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
    parse(bytes, bytes.len() as u64).map_err(|fault| fault.at(Path::new("<memory>")))
}

/// Parses GGUF metadata from `reader`, which holds `len` bytes in all (the bound every length
/// read from the file is checked against).
pub(crate) fn parse(reader: impl BufRead, len: u64) -> Result<GgufInfo, Fault> {
    let mut p = Parser {
        r: reader,
        pos: 0,
        len,
    };
    if p.bytes::<4>()? != *b"GGUF" {
        return Err(Fault::NotGguf);
    }
    let version = p.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Fault::Version(version));
    }
    let tensor_count = p.u64()?;
    let kv_count = p.u64()?;
    // Smallest kv: an empty key (8), a type (4) and a one-byte value.
    p.check_room(kv_count, 13)?;
    let mut kv = HashMap::new();
    for _ in 0..kv_count {
        let key = p.string(MAX_KEY_LEN)?;
        let ty = p.u32()?;
        let value = p.value(ty, 0)?;
        kv.insert(key, value);
    }
    Ok(info_from(version, tensor_count, &kv))
}

fn info_from(version: u32, tensor_count: u64, kv: &HashMap<String, Value>) -> GgufInfo {
    let string = |key: &str| match kv.get(key) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let uint = |key: &str| kv.get(key).and_then(Value::as_u64);
    let architecture = string("general.architecture");
    let per_arch = |suffix: &str| {
        architecture
            .as_ref()
            .and_then(|a| uint(&format!("{a}.{suffix}")))
    };
    GgufInfo {
        version,
        tensor_count,
        name: string("general.name"),
        context_length: per_arch("context_length"),
        file_type: uint("general.file_type").and_then(|v| u32::try_from(v).ok()),
        parameter_count: uint("general.parameter_count"),
        size_label: string("general.size_label"),
        chat_template: string("tokenizer.chat_template"),
        vocab_size: match kv.get("tokenizer.ggml.tokens") {
            Some(Value::Array { len }) => Some(*len),
            _ => None,
        },
        split_count: uint("split.count").and_then(|v| u16::try_from(v).ok()),
        sliding_window: per_arch("attention.sliding_window"),
        architecture,
    }
}

/// The spec caps keys at 65535 bytes.
const MAX_KEY_LEN: u64 = u16::MAX as u64;
/// Far above any real metadata string (chat templates run to tens of KB).
const MAX_STRING_LEN: u64 = 64 << 20;
/// Real files nest arrays at most once; the cap keeps a crafted file from overflowing the stack.
const MAX_DEPTH: u32 = 4;

const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

/// A metadata value as far as it is kept: arrays by length, floats and bools not at all.
#[derive(Debug)]
enum Value {
    Uint(u64),
    Int(i64),
    Str(String),
    Array { len: u64 },
    Other,
}

impl Value {
    fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// Why parsing failed, before the path is known.
#[derive(Debug)]
pub(crate) enum Fault {
    Io(io::Error),
    NotGguf,
    Version(u32),
    Truncated,
    Corrupt(String),
}

impl Fault {
    fn at(self, path: &Path) -> GgufError {
        let path = path.to_path_buf();
        match self {
            Fault::Io(source) => GgufError::Io { path, source },
            Fault::NotGguf => GgufError::NotGguf { path },
            Fault::Version(version) => GgufError::UnsupportedVersion { path, version },
            Fault::Truncated => GgufError::Truncated { path },
            Fault::Corrupt(reason) => GgufError::Corrupt { path, reason },
        }
    }
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Fault::Truncated,
            _ => Fault::Io(e),
        }
    }
}

struct Parser<R> {
    r: R,
    /// Bytes consumed so far, and the total: what is left bounds every length in the file.
    pos: u64,
    len: u64,
}

impl<R: BufRead> Parser<R> {
    /// Fails unless `count` items of at least `min_size` bytes each can fit in what is left.
    fn check_room(&self, count: u64, min_size: u64) -> Result<(), Fault> {
        let left = self.len.saturating_sub(self.pos);
        match count.checked_mul(min_size) {
            Some(need) if need <= left => Ok(()),
            _ => Err(Fault::Truncated),
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], Fault> {
        let mut buf = [0u8; N];
        self.r.read_exact(&mut buf)?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, Fault> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, Fault> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn string(&mut self, max: u64) -> Result<String, Fault> {
        let n = self.u64()?;
        if n > max {
            return Err(Fault::Corrupt(format!("a string of {n} bytes")));
        }
        self.check_room(n, 1)?;
        // `n` fits in what is left of the file, so this allocation is bounded by its size.
        let mut buf = vec![0u8; n as usize];
        self.r.read_exact(&mut buf)?;
        self.pos += n;
        // Metadata is meant to be UTF-8; a stray bad byte is not worth refusing the file for.
        Ok(String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Skips `n` bytes straight out of the reader's buffer, copying nothing.
    fn skip(&mut self, n: u64) -> Result<(), Fault> {
        self.check_room(n, 1)?;
        let mut left = n;
        while left > 0 {
            let available = self.r.fill_buf()?.len();
            if available == 0 {
                return Err(Fault::Truncated);
            }
            let step = available.min(usize::try_from(left).unwrap_or(usize::MAX));
            self.r.consume(step);
            left -= step as u64;
        }
        self.pos += n;
        Ok(())
    }

    /// Reads a value of type `ty`; an array is skipped and kept only by its length.
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, Fault> {
        Ok(match ty {
            0 => Value::Uint(u8::from_le_bytes(self.bytes()?).into()),
            1 => Value::Int(i8::from_le_bytes(self.bytes()?).into()),
            2 => Value::Uint(u16::from_le_bytes(self.bytes()?).into()),
            3 => Value::Int(i16::from_le_bytes(self.bytes()?).into()),
            4 => Value::Uint(self.u32()?.into()),
            5 => Value::Int(i32::from_le_bytes(self.bytes()?).into()),
            // Floats and bools: none that Pensieve reads.
            6 => self.skip(4).map(|()| Value::Other)?,
            7 => self.skip(1).map(|()| Value::Other)?,
            TYPE_STRING => Value::Str(self.string(MAX_STRING_LEN)?),
            TYPE_ARRAY => Value::Array {
                len: self.skip_array(depth)?,
            },
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            12 => self.skip(8).map(|()| Value::Other)?,
            _ => return Err(Fault::Corrupt(format!("unknown value type {ty}"))),
        })
    }

    /// Skips an array's elements (its type and count are next in the file); returns the count.
    fn skip_array(&mut self, depth: u32) -> Result<u64, Fault> {
        if depth >= MAX_DEPTH {
            return Err(Fault::Corrupt(format!(
                "arrays nested more than {MAX_DEPTH} deep"
            )));
        }
        let elem = self.u32()?;
        let count = self.u64()?;
        match elem {
            TYPE_STRING => {
                self.check_room(count, 8)?;
                for _ in 0..count {
                    let n = self.u64()?;
                    if n > MAX_STRING_LEN {
                        return Err(Fault::Corrupt(format!("a string of {n} bytes")));
                    }
                    self.skip(n)?;
                }
            }
            TYPE_ARRAY => {
                // Each element is at least its own type and count.
                self.check_room(count, 12)?;
                for _ in 0..count {
                    self.skip_array(depth + 1)?;
                }
            }
            _ => {
                let size = fixed_size(elem)
                    .ok_or_else(|| Fault::Corrupt(format!("unknown array element type {elem}")))?;
                let total = count.checked_mul(size).ok_or(Fault::Truncated)?;
                self.skip(total)?;
            }
        }
        Ok(count)
    }
}

/// Size in bytes of a fixed-size value type.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// llama.cpp's name for a `general.file_type` value (`enum llama_ftype` in `include/llama.h`).
/// 38, `LLAMA_FTYPE_MOSTLY_MXFP4_MOE`, is given as "MXFP4", the tag its files carry.
pub fn file_type_name(ft: u32) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        39 => "NVFP4",
        40 => "Q1_0",
        _ => return None,
    })
}

/// Quantisation tags seen in GGUF file names beyond the `llama_ftype` names: plain K-quants,
/// bartowski's `_L`/`_XL` (Q8_0 embeddings) and unsloth's dynamic `_XL` variants, and the ARM
/// repacks that older files were written with.
const EXTRA_QUANTS: &[&str] = &[
    "Q2_K_L",
    "Q2_K_XL",
    "Q3_K",
    "Q3_K_XL",
    "Q4_K",
    "Q4_K_L",
    "Q4_K_XL",
    "Q5_K",
    "Q5_K_L",
    "Q5_K_XL",
    "Q6_K_L",
    "Q6_K_XL",
    "Q8_K_XL",
    "Q4_0_4_4",
    "Q4_0_4_8",
    "Q4_0_8_8",
    "MXFP4_MOE",
];

/// The quantisation tag in a GGUF file name, upper-cased: "qwen2.5-7b-q4_k_m-00001-of-00002.gguf"
/// gives "Q4_K_M". A tag counts only as a whole token (not preceded or followed by a letter or
/// digit; `_` separates, which is why tags are matched whole rather than by splitting). The longest
/// match wins, so "Q4_K_M" beats "Q4_K"; unsloth's "UD-Q4_K_XL" gives "Q4_K_XL".
pub fn quant_in_file_name(file_name: &str) -> Option<String> {
    let name = file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(file_name)
        .to_ascii_uppercase();
    let bytes = name.as_bytes();
    let known = (0..=64)
        .filter_map(file_type_name)
        .chain(EXTRA_QUANTS.iter().copied());
    let mut best: Option<&str> = None;
    for quant in known {
        let found = name.match_indices(quant).any(|(at, _)| {
            let end = at + quant.len();
            let before_ok = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
            let after_ok = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
            before_ok && after_ok
        });
        if found && best.is_none_or(|b| quant.len() > b.len()) {
            best = Some(quant);
        }
    }
    best.map(str::to_owned)
}

/// Split-file naming (llama.cpp's `%s-%05d-of-%05d.gguf`): "name-00001-of-00003.gguf" gives
/// `Some((1, 3))`. `None` unless 1 <= part <= count.
pub fn split_part(file_name: &str) -> Option<(u16, u16)> {
    let lower = file_name.to_ascii_lowercase();
    let stem = lower.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (_, part) = rest.rsplit_once('-')?;
    let number = |s: &str| -> Option<u16> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (part, count) = (number(part)?, number(count)?);
    (1..=count).contains(&part).then_some((part, count))
}

#[cfg(test)]
#[path = "gguf_tests.rs"]
mod tests;
