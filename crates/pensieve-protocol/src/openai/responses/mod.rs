//! The OpenAI Responses API (`/v1/responses`), on the same engine as the others.
//!
//! - [`request`]: the request, its input items and tools, translated into a
//!   `GenerateRequest` after a stored conversation.
//! - [`output`]: output items, status, usage and the response object.
//! - [`stream`]: the event sequence, a pure state machine over engine events; a response
//!   that is not streamed is its last state.

pub mod output;
pub mod request;
pub mod stream;

pub use output::{reply_message, Head, Item, Status};
pub use request::{parse_responses, Echo, Prepared, ResponsesRequest};
pub use stream::ResponseEncoder;
