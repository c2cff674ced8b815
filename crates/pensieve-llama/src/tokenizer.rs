//! The model's vocabulary as the engine's [`Tokenizer`].

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use pensieve_engine::{TokenId, Tokenizer};

/// Tokenizes with the model's own vocabulary; shared by every request thread.
pub struct LlamaTokenizer {
    model: &'static LlamaModel,
}

impl LlamaTokenizer {
    pub(crate) fn new(model: &'static LlamaModel) -> Self {
        LlamaTokenizer { model }
    }

    fn special_text(&self, token: LlamaToken) -> String {
        if token.0 < 0 {
            return String::new();
        }
        let bytes = self.model.vocab().token_to_piece(token, true, None);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The BOS token as text (`""` when the model has none).
    pub fn bos_text(&self) -> String {
        self.special_text(self.model.vocab().bos())
    }

    /// The EOS token as text.
    pub fn eos_text(&self) -> String {
        self.special_text(self.model.vocab().eos())
    }

    /// Text that continues a prompt (after an image): special tokens parsed, no BOS.
    pub(crate) fn encode_more(&self, text: &str) -> Vec<TokenId> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, true)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }
}

impl Tokenizer for LlamaTokenizer {
    fn encode(&self, text: &str) -> Vec<TokenId> {
        let vocab = self.model.vocab();
        // Special tokens are parsed from the rendered template; BOS is added by hand so
        // that a template that already writes `{{ bos_token }}` does not get two.
        let mut tokens: Vec<TokenId> = vocab
            .tokenize(text.as_bytes(), false, true)
            .into_iter()
            .map(|t| t.0)
            .collect();
        let bos = vocab.bos();
        if vocab.should_add_bos() && bos.0 >= 0 && tokens.first() != Some(&bos.0) {
            tokens.insert(0, bos.0);
        }
        tokens
    }

    fn token_bytes(&self, token: TokenId) -> Vec<u8> {
        // Control tokens (end-of-turn markers and the like) render as nothing.
        self.model
            .vocab()
            .token_to_piece(LlamaToken(token), false, None)
    }

    fn is_end_of_generation(&self, token: TokenId) -> bool {
        self.model.vocab().is_eog(LlamaToken(token))
    }

    fn vocab_size(&self) -> usize {
        usize::try_from(self.model.n_vocab()).unwrap_or(0)
    }

    fn single_token(&self, text: &str) -> Option<TokenId> {
        match self.model.vocab().tokenize(text.as_bytes(), false, true)[..] {
            [token] => Some(token.0),
            _ => None,
        }
    }
}
