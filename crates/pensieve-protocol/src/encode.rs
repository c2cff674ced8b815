//! What every API's encoders share, so that the server streams or gathers any of them
//! the same way: [`SseEncoder`] turns engine events into SSE frames, [`Collector`] gathers
//! them into one reply body. Each API implements both next to its own wire types.

use pensieve_engine::{Completion, EngineError, GenerationEvent};
use serde::Serialize;

/// One API's SSE encoder: a state machine from engine events to frames.
pub trait SseEncoder: Send + 'static {
    /// The frames sent as soon as the request is queued (none for some APIs).
    fn start(&mut self) -> Vec<String>;
    /// The frames an event makes.
    fn on_event(&mut self, event: GenerationEvent) -> Vec<String>;
    /// The frames that end the stream with `error`.
    fn error(&mut self, error: &EngineError) -> Vec<String>;
    /// A frame that keeps the connection busy during a long prefill.
    fn ping(&self) -> String;
    /// The stream has said its last frame.
    fn is_finished(&self) -> bool;
}

/// One API's non-streamed reply, gathered from engine events.
pub trait Collector: Send + 'static {
    /// The reply's JSON body.
    type Body: Serialize;
    /// Take one content event (`Done` and `Failed` are the caller's).
    fn push(&mut self, event: GenerationEvent);
    /// The reply, once the generation ended with `completion`.
    fn finish(self, completion: Completion) -> Self::Body;
}
