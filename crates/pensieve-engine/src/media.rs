//! Images for a vision model, as the engine sees them: a stretch of the prompt that the
//! backend evaluates from its own prepared form (a projector's embeddings) instead of from
//! token ids.
//!
//! The engine keeps its token-level view: an image's positions hold a *media token*, a
//! negative id derived from the image's content, which no vocabulary has. So the prefix
//! cache works unchanged: a second request with the same image matches its cached
//! prefix through the image, and a different image does not.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::model::TokenId;

/// One image's stretch of a prompt: `len` positions from `at`, evaluated at once by
/// [`crate::ModelRunner::decode_media`] (an image's tokens may attend to each other both
/// ways, and the projector's output is one piece). Text tokens the model wraps an image
/// in (`<start_of_image>`) belong to the stretch too.
#[derive(Clone)]
pub struct Media {
    pub at: usize,
    pub len: usize,
    /// Where the request had the image (`messages.0.content.1`), for errors; the engine
    /// sets it.
    pub block: String,
    /// The backend's prepared form of the image (for llama.cpp, its mtmd chunks).
    pub unit: Arc<dyn Any + Send + Sync>,
}

impl Media {
    pub fn end(&self) -> usize {
        self.at + self.len
    }

    /// Whether `pos` falls strictly inside the stretch, where no computation may stop.
    pub fn splits_at(&self, pos: usize) -> bool {
        pos > self.at && pos < self.end()
    }
}

impl fmt::Debug for Media {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Media")
            .field("at", &self.at)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Media {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.len == other.len && Arc::ptr_eq(&self.unit, &other.unit)
    }
}

/// The token that stands for an image's positions: negative (outside every vocabulary)
/// and derived from a digest of the image's bytes.
pub fn media_token(digest: u64) -> TokenId {
    // 30 bits: distinct images share a token with odds of one in a billion.
    -1 - i32::try_from(digest & 0x3fff_ffff).unwrap_or(0)
}

/// The token for an image's positions: [`media_token`] of a sha256 of its bytes, the same
/// on every backend and across restarts (the disk cache matches by it).
pub fn media_token_of(image: &[u8]) -> TokenId {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(image);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    media_token(u64::from_le_bytes(first))
}

/// Whether a token stands for an image (see [`media_token`]).
pub fn is_media_token(token: TokenId) -> bool {
    token < 0
}

/// A prompt with its images: tokens (each image's positions as media tokens) and the
/// images' stretches, in order.
#[derive(Debug, Clone, Default)]
pub struct MediaPrompt {
    pub tokens: Vec<TokenId>,
    pub media: Vec<Media>,
}

/// Why a prompt with images could not be tokenized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VisionError {
    /// The image at this index (among those given) was refused.
    #[error("image {index}: {reason}")]
    Image { index: usize, reason: String },
    #[error("{0}")]
    Prompt(String),
}

/// What a backend with a vision projector offers the engine. Shared by the request
/// threads: preparing an image (decoding and resizing it) happens there, not on the
/// engine thread.
pub trait Vision: Send + Sync {
    /// The text that marks an image's place in a rendered prompt.
    fn marker(&self) -> &str;
    /// Tokenize `text`, whose markers stand for `images` in order (their encoded bytes:
    /// PNG, JPEG, ...).
    fn tokenize(&self, text: &str, images: &[&[u8]]) -> Result<MediaPrompt, VisionError>;
    /// The projector, for the start-up log (its file name, what it takes).
    fn describe(&self) -> String;
}

impl fmt::Debug for dyn Vision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_tokens_are_outside_every_vocabulary() {
        for digest in [0, 1, 0x3fff_ffff, u64::MAX] {
            let t = media_token(digest);
            assert!(is_media_token(t), "{digest}: {t}");
        }
        assert_ne!(media_token(1), media_token(2));
        assert!(!is_media_token(0));
    }

    #[test]
    fn a_stretch_is_split_only_strictly_inside() {
        let m = Media {
            at: 4,
            len: 3,
            block: String::new(),
            unit: Arc::new(()),
        };
        assert_eq!(m.end(), 7);
        assert!(!m.splits_at(4));
        assert!(m.splits_at(5));
        assert!(m.splits_at(6));
        assert!(!m.splits_at(7));
    }
}
