//! A Hugging Face `tokenizer.json` as the engine's [`Tokenizer`], so that the MLX engine
//! tokenises exactly as the model's authors do (and as mlx-lm would).

use std::collections::HashSet;
use std::path::Path;

use pensieve_engine::{TokenId, Tokenizer};
use serde_json::Value;

/// Turn-ending tokens recognised by name when the config does not list them all (chat
/// models end turns with these while `eos_token_id` names only the document end).
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
    // gpt-oss (Harmony): the answer ends with `<|return|>`, a call with `<|call|>`.
    "<|return|>",
    "<|call|>",
    // Gemma 4: a turn ends with `<turn|>`; after a call the model opens the response
    // it waits for.
    "<turn|>",
    "<|tool_response>",
];

/// The [`END_OF_TURN`] names that end generation for a vocabulary (`has` says whether
/// it holds a token). In Harmony `<|end|>` closes one message of a turn (the reasoning
/// before the answer), so where `<|return|>` and `<|call|>` exist it is not an end, as
/// llama.cpp decides for the same vocabulary.
fn end_of_turn_names(has: impl Fn(&str) -> bool) -> Vec<&'static str> {
    let harmony = has("<|return|>") && has("<|call|>");
    END_OF_TURN
        .iter()
        .copied()
        .filter(|name| has(name) && !(harmony && *name == "<|end|>"))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// How a token's vocabulary string maps back to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pieces {
    /// GPT-2's byte-level alphabet: every byte is one printable character.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xNN>` a raw byte.
    SentencePiece,
}

pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    pieces: Pieces,
    /// Special (control) tokens: they render as nothing.
    special: HashSet<u32>,
    /// Added tokens: their text is what they stand for.
    added: HashSet<u32>,
    end_of_generation: HashSet<TokenId>,
    bos: Option<(TokenId, String)>,
    add_bos: bool,
    /// The logits' width (may exceed the vocabulary: padded embeddings).
    vocab_size: usize,
    /// GPT-2's character -> byte table.
    byte_of: std::collections::HashMap<char, u8>,
}

/// What the model folder's JSON files say about special tokens.
#[derive(Debug, Default, Clone)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub add_bos: bool,
    pub eos_ids: Vec<u32>,
}

impl HfTokenizer {
    pub fn from_file(
        path: &Path,
        special_tokens: &SpecialTokens,
        vocab_size: usize,
    ) -> Result<HfTokenizer, TokenizerError> {
        let read_error = |reason: String| TokenizerError::Read {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| read_error(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| read_error(e.to_string()))?;
        let pieces = if uses_byte_level(&json["decoder"]) || uses_byte_level(&json["pre_tokenizer"])
        {
            Pieces::ByteLevel
        } else {
            Pieces::SentencePiece
        };
        let added_tokens = inner.get_added_tokens_decoder();
        let special: HashSet<u32> = added_tokens
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let added: HashSet<u32> = added_tokens.keys().copied().collect();
        let id_of = |name: &str| inner.token_to_id(name).map(|id| id as TokenId);
        let mut end_of_generation: HashSet<TokenId> = special_tokens
            .eos_ids
            .iter()
            .map(|&id| id as TokenId)
            .collect();
        end_of_generation.extend(special_tokens.eos.as_deref().and_then(id_of));
        end_of_generation.extend(
            end_of_turn_names(|name| id_of(name).is_some())
                .into_iter()
                .filter_map(id_of),
        );
        let bos = special_tokens
            .bos
            .as_ref()
            .and_then(|name| id_of(name).map(|id| (id, name.clone())));
        Ok(HfTokenizer {
            vocab_size: vocab_size.max(inner.get_vocab_size(true)),
            inner,
            pieces,
            special,
            added,
            end_of_generation,
            add_bos: special_tokens.add_bos && bos.is_some(),
            bos,
            byte_of: byte_level_alphabet(),
        })
    }

    /// The BOS token's text ("" when there is none).
    pub fn bos_text(&self) -> String {
        self.bos
            .as_ref()
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    }
}

fn uses_byte_level(node: &Value) -> bool {
    match node {
        Value::Object(map) => {
            map.get("type").and_then(Value::as_str) == Some("ByteLevel")
                || map.values().any(uses_byte_level)
        }
        Value::Array(items) => items.iter().any(uses_byte_level),
        _ => false,
    }
}

/// GPT-2's reversible byte <-> printable character table.
fn byte_level_alphabet() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).unwrap_or('\u{FFFD}');
                next += 1;
                c
            };
            (c, b)
        })
        .collect()
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Vec<TokenId> {
        // Special tokens written in the rendered template match as added tokens; BOS is
        // added by hand so a template that writes it does not get two.
        let mut tokens: Vec<TokenId> = match self.inner.encode(text, false) {
            Ok(encoding) => encoding.get_ids().iter().map(|&id| id as TokenId).collect(),
            Err(e) => {
                tracing::error!("tokenizer failed: {e}");
                Vec::new()
            }
        };
        if let Some((bos, _)) = &self.bos {
            if self.add_bos && tokens.first() != Some(bos) {
                tokens.insert(0, *bos);
            }
        }
        tokens
    }

    fn token_bytes(&self, token: TokenId) -> Vec<u8> {
        let Ok(id) = u32::try_from(token) else {
            return Vec::new();
        };
        if self.special.contains(&id) {
            return Vec::new();
        }
        let Some(piece) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        if self.added.contains(&id) {
            return piece.into_bytes();
        }
        match self.pieces {
            Pieces::ByteLevel => piece
                .chars()
                .map(|c| self.byte_of.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| piece.into_bytes()),
            Pieces::SentencePiece => sentencepiece_bytes(&piece),
        }
    }

    fn is_end_of_generation(&self, token: TokenId) -> bool {
        self.end_of_generation.contains(&token)
    }

    fn single_token(&self, text: &str) -> Option<TokenId> {
        let encoding = self.inner.encode(text, false).ok()?;
        match encoding.get_ids() {
            [id] => Some(*id as TokenId),
            _ => None,
        }
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

fn sentencepiece_bytes(piece: &str) -> Vec<u8> {
    if let Some(hex) = piece
        .strip_prefix("<0x")
        .and_then(|rest| rest.strip_suffix('>'))
    {
        if let Ok(b) = u8::from_str_radix(hex, 16) {
            return vec![b];
        }
    }
    piece.replace('\u{2581}', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmony_ends_at_return_and_call_not_at_the_end_of_a_message() {
        let vocab = |names: &'static [&'static str]| move |name: &str| names.contains(&name);
        let harmony = vocab(&["<|end|>", "<|return|>", "<|call|>", "<|endoftext|>"]);
        assert_eq!(
            end_of_turn_names(harmony),
            ["<|endoftext|>", "<|return|>", "<|call|>"]
        );
        // Phi-3 style vocabularies end turns with `<|end|>`.
        assert_eq!(
            end_of_turn_names(vocab(&["<|end|>", "<|endoftext|>"])),
            ["<|endoftext|>", "<|end|>"]
        );
        assert_eq!(
            end_of_turn_names(vocab(&["<turn|>", "<|tool_response>", "<bos>"])),
            ["<turn|>", "<|tool_response>"]
        );
    }

    #[test]
    fn the_byte_level_alphabet_is_a_bijection() {
        let table = byte_level_alphabet();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'\u{0120}'], b' ');
        assert_eq!(table[&'\u{010A}'], b'\n');
        assert_eq!(table[&'a'], b'a');
    }

    #[test]
    fn sentencepiece_pieces() {
        assert_eq!(sentencepiece_bytes("\u{2581}hello"), b" hello");
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_bytes("<0xZZ>"), b"<0xZZ>");
    }
}
