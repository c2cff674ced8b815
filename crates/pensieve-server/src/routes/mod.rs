//! Handlers, one module per API surface. The generation routes share one handler
//! ([`generate`]) and one body extractor (`extract`); each API's module says only how its
//! requests and replies differ.

pub mod chat;
pub mod completions;
mod extract;
pub mod generate;
pub mod health;
mod io;
pub mod messages;
pub mod metrics;
pub mod models;
mod relay;
pub mod responses;
