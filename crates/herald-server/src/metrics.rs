//! `GET /metrics`: Prometheus text.

use axum::Router;

use crate::app::AppState;

/// The metrics route.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
}
