//! The web UI: assets compiled into the binary.

use axum::Router;

use crate::app::AppState;

/// The UI's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
}
