//! `POST /v1/completions` (streaming and not): a prompt continued as it is, through the
//! same engine as chat; an upstream's replicas take it as it is. Errors use OpenAI's
//! envelope.

use pensieve_engine::GenerateRequest;
use pensieve_protocol::openai::{
    parse_completion, CompletionCollector, CompletionRequest, TextChunkEncoder,
};
use pensieve_upstream::{Endpoint, Upstream};

use super::extract::Parse;
use super::generate::{Generate, ReplyHead};
use crate::error::{ApiError, Dialect};
use crate::state::AppState;

/// A text completion's options that shape its reply.
pub struct TextCompletion {
    stream: bool,
    /// `stream_options.include_usage`: a last chunk carries the usage.
    include_usage: bool,
    logprobs: bool,
}

impl Parse for TextCompletion {
    type Request = CompletionRequest;
    const DIALECT: Dialect = Dialect::OpenAi;

    fn parse(bytes: &[u8]) -> Result<CompletionRequest, ApiError> {
        Ok(parse_completion(bytes)?)
    }
}

impl Generate for TextCompletion {
    type Encoder = TextChunkEncoder;
    type Collector = CompletionCollector;
    const ID_PREFIX: &'static str = "cmpl-";

    fn prepare(
        request: CompletionRequest,
        state: &AppState,
    ) -> Result<(Self, GenerateRequest), ApiError> {
        let text = TextCompletion {
            stream: request.is_stream(),
            include_usage: request.include_usage(),
            logprobs: request.wants_logprobs(),
        };
        Ok((text, request.into_generate_with(&state.config.sampling)?))
    }

    fn relay_to(_upstream: &Upstream) -> Option<Endpoint> {
        Some(Endpoint::Completions)
    }

    fn is_stream(&self) -> bool {
        self.stream
    }

    fn encoder(self, reply: ReplyHead) -> TextChunkEncoder {
        let (include_usage, logprobs) = (self.include_usage, self.logprobs);
        TextChunkEncoder::new(
            reply.id,
            reply.model,
            reply.created,
            include_usage,
            logprobs,
        )
    }

    fn collector(self, reply: ReplyHead) -> CompletionCollector {
        CompletionCollector::new(reply.id, reply.model, reply.created, self.logprobs)
    }
}
