//! The herald server and CLI.
//!
//! One binary, `herald`: `herald serve` runs an HTTP API over an event
//! store (SQLite by default, PostgreSQL in production) so that services in
//! any language publish and read events, follow them live over server-sent
//! events, and receive them as signed webhooks; a web UI shows the log, the
//! subscribers and the dead letters together. The other commands talk to a
//! running server, or straight to a store.
//!
//! ```sh
//! cargo run --release -p herald-server -- serve
//! # listening on http://127.0.0.1:7171/, store sqlite://herald.db
//! ```

mod api;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
mod metrics;
pub mod problem;
pub mod server;
mod sse;
mod ui;
mod webhooks;

pub use crate::app::{AppState, router};
pub use crate::backend::{Backend, OpenStoreError};
pub use crate::config::{ConfigError, ServeArgs, ServeConfig};
pub use crate::problem::Problem;
pub use crate::server::{ServeError, Server};

/// Work done once the state is built, before the first request: resumes
/// the webhook subscribers kept in the store, and follows the changes that
/// other servers on the same store make to them.
pub(crate) async fn startup(state: &AppState) {
    webhooks::resume(state).await;
    webhooks::follow(state.clone());
}
