//! The JSON API under `/api`.

use axum::Router;

use crate::app::AppState;

/// The API's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().merge(crate::webhooks::routes())
}
