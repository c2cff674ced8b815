//! Handlers, one module per API surface.

pub mod health;
pub mod messages;
pub mod metrics;
pub mod models;
