//! `POST /v1/chat/completions` (streaming and not): where an OpenAI request becomes an
//! engine request, and engine events become chat completions; an upstream's replicas take
//! it as it is. Errors use OpenAI's envelope.

use pensieve_engine::GenerateRequest;
use pensieve_protocol::openai::{parse_chat, ChatCollector, ChatRequest, ChunkEncoder};
use pensieve_upstream::{Endpoint, Upstream};

use super::extract::Parse;
use super::generate::{Generate, ReplyHead};
use crate::error::{ApiError, Dialect};
use crate::state::AppState;

/// A chat completion's options that shape its reply.
pub struct Chat {
    stream: bool,
    /// `stream_options.include_usage`: a last chunk carries the usage.
    include_usage: bool,
    logprobs: bool,
}

impl Parse for Chat {
    type Request = ChatRequest;
    const DIALECT: Dialect = Dialect::OpenAi;

    fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        Ok(parse_chat(bytes)?)
    }
}

impl Generate for Chat {
    type Encoder = ChunkEncoder;
    type Collector = ChatCollector;
    const ID_PREFIX: &'static str = "chatcmpl-";

    fn prepare(
        request: ChatRequest,
        state: &AppState,
    ) -> Result<(Self, GenerateRequest), ApiError> {
        let chat = Chat {
            stream: request.is_stream(),
            include_usage: request.include_usage(),
            logprobs: request.wants_logprobs(),
        };
        Ok((chat, request.into_generate_with(&state.config.sampling)?))
    }

    fn relay_to(_upstream: &Upstream) -> Option<Endpoint> {
        Some(Endpoint::ChatCompletions)
    }

    fn is_stream(&self) -> bool {
        self.stream
    }

    fn encoder(self, reply: ReplyHead) -> ChunkEncoder {
        ChunkEncoder::new(reply.id, reply.model, reply.created, self.include_usage)
    }

    fn collector(self, reply: ReplyHead) -> ChatCollector {
        ChatCollector::new(reply.id, reply.model, reply.created, self.logprobs)
    }
}
