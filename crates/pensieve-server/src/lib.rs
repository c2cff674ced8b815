//! The HTTP edge: routes, authentication, request ids, error rendering and streaming.
//!
//! Handlers translate wire requests (from `pensieve-protocol`) into the engine's neutral
//! requests and engine events back into wire responses; they hold no model logic.
//!
//! - [`app`]: the router and its middleware.
//! - [`state`]: what every handler can reach ([`AppState`]).
//! - [`browser`]: which hosts and web origins may call the server.
//! - [`listen`]: accepting connections, with a deadline for each request's headers.
//! - [`request_metrics`]: the middleware that counts and times every request.
//! - [`models`]: which loaded model serves a requested name (aliases).
//! - [`routes`]: one module per API surface.
//! - [`response_store`]: responses kept for `previous_response_id`.
//! - [`fetch_images`]: images given by URL, fetched where the server allows it.
//! - [`error`]: [`ApiError`], rendered in each API's error shape.

pub mod app;
pub mod auth;
pub mod browser;
pub mod error;
pub mod fetch_images;
pub mod listen;
pub mod models;
pub mod request_metrics;
pub mod response_store;
pub mod routes;
pub mod state;

pub use app::app;
pub use browser::BrowserPolicy;
pub use error::ApiError;
pub use models::{Backend, ModelRouter, ServedModel};
pub use state::{AppState, ImagePolicy, ServerConfig};
