//! Handlers, one module per API surface.

pub mod chat;
pub mod completions;
pub mod health;
mod io;
pub mod messages;
pub mod metrics;
pub mod models;
mod relay;
pub mod responses;
