//! The server's shared state and its router.

use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::get;
use herald::Bus;
use serde_json::json;
use tokio::sync::watch;

use crate::auth::{Tokens, require_token};
use crate::backend::Backend;
use crate::config::ServeConfig;

/// What every request handler shares: the bus on the store, the store
/// itself, the tokens and the settings. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The bus: publishing appends to the store; webhook subscribers run
    /// on it as durable subscribers.
    pub bus: Bus,
    /// The store.
    pub backend: Backend,
    /// The accepted bearer tokens.
    pub tokens: Arc<Tokens>,
    /// The settings.
    pub config: Arc<ServeConfig>,
    /// Set when the server shuts down, so that endless answers (live
    /// subscriptions) end and the shutdown does not wait for them.
    closing: Arc<watch::Sender<bool>>,
    /// The tail of the log that live subscriptions share, started by the
    /// first one.
    live_tail: Arc<OnceLock<crate::sse::Tail>>,
}

impl AppState {
    /// State for a server on `backend` with `config`.
    pub fn new(backend: Backend, config: ServeConfig) -> Self {
        Self {
            bus: backend.bus(),
            tokens: Arc::new(Tokens::new(&config.tokens)),
            config: Arc::new(config),
            backend,
            closing: Arc::new(watch::channel(false).0),
            live_tail: Arc::new(OnceLock::new()),
        }
    }

    /// Tells endless answers (live subscriptions) to end: the server is
    /// shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The live subscriptions' shared tail of the log.
    pub(crate) fn live_tail(&self) -> &OnceLock<crate::sse::Tail> {
        &self.live_tail
    }

    /// A receiver that turns `true` when [`close`](Self::close) is called.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

/// The whole application: `/api/*` and `/metrics` behind the tokens,
/// `/health` and the web UI's assets open (the UI asks for a token and
/// sends it with its API calls).
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .nest("/api", crate::api::routes())
        .merge(crate::metrics::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .merge(crate::ui::routes())
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "store": state.backend.kind(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
