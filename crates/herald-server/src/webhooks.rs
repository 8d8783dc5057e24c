//! Webhook subscribers: durable subscribers that POST each matching event
//! to a URL.

use axum::Router;

use crate::app::AppState;

/// The subscription routes, under `/api`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
}

/// Starts the webhook subscribers kept in the store.
pub(crate) async fn resume(_state: &AppState) {}
