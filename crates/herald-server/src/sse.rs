//! `GET /api/subscribe`: the global log as server-sent events, catch-up then
//! live.
//!
//! # Delivery
//!
//! Each event is one SSE message: `id:` is its global position, `data:` the
//! recorded event as JSON (the shape of `GET /api/events/{id}`); no `event:`
//! field, so a browser's `EventSource.onmessage` receives every one. The
//! stream starts after `Last-Event-ID` when the client sends one (a
//! reconnecting `EventSource` does), else after `?after=` (a position, or
//! `now` for the current head; default 0, the whole history).
//!
//! # No gap, no duplicate
//!
//! There is no separate "live" path to hand over to: the feed always reads
//! the store after the last position it has read, first in batches until it
//! is caught up, then each time the store's head moves. It reads the head
//! before each read, and every event at or below the head is visible to that
//! read (the store's contract), so once a read comes back short the feed
//! knows nothing up to the head is left and waits for the head to pass it.
//! Positions only grow, so a client that resumes after the last id it saw
//! gets every later event exactly once.
//!
//! # Keep-alive and errors
//!
//! A comment line is sent every 15 seconds of silence, so that proxies keep
//! the connection open. If the store fails, an `event: error` message with
//! the reason is sent and the stream ends; the client reconnects with its
//! `Last-Event-ID`. The stream also ends when the server shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, TryStreamExt};
use herald::store::{EventStore, ReadAll, StoreError};
use herald::{RecordedEvent, TopicPattern};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::api::{ApiError, Query};
use crate::app::AppState;
use crate::problem::Problem;

/// How many events one read of the store fetches.
const BATCH: usize = 500;

/// How often the feed reads the head when the store cannot wake it (or
/// misses a wake-up).
const POLL: Duration = Duration::from_millis(500);

/// How long the connection may be silent before a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Query of `GET /api/subscribe`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeQuery {
    topics: Option<String>,
    after: Option<String>,
}

/// `GET /api/subscribe?topics=order.*&after=N`.
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<SubscribeQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let topics = crate::api::topic_patterns(query.topics.as_deref())?;
    let store = state.backend.events();
    let after = match headers.get("last-event-id") {
        Some(value) => {
            let text = value.to_str().unwrap_or("").trim();
            text.parse::<u64>().map_err(|_| {
                Problem::bad_request(format!(
                    "Last-Event-ID {text:?} is not a position (a non-negative integer)"
                ))
            })?
        }
        None => match query.after.as_deref().map(str::trim) {
            None | Some("") => 0,
            Some("now") => store.head().await?,
            Some(text) => text.parse::<u64>().map_err(|_| {
                Problem::bad_request(format!(
                    "invalid query parameter after: {text:?} is not a position or \"now\""
                ))
            })?,
        },
    };
    let (tx, mut rx) = mpsc::channel::<Event>(BATCH);
    tokio::spawn(feed(store, topics, after, tx, state.closing()));
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Reads the store after `cursor` and sends each matching event, until the
/// client goes away, the server closes, or the store fails.
async fn feed(
    store: Arc<dyn EventStore>,
    topics: Vec<TopicPattern>,
    mut cursor: u64,
    tx: mpsc::Sender<Event>,
    mut closing: watch::Receiver<bool>,
) {
    let mut head_moved = store.watch_head();
    loop {
        if *closing.borrow() {
            return;
        }
        let (head, events) = match read(&*store, &topics, cursor).await {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(error = %err, cursor, "live subscription ends: the store failed");
                let _ = tx
                    .send(Event::default().event("error").data(err.to_string()))
                    .await;
                return;
            }
        };
        let full = events.len() >= BATCH;
        for event in events {
            let Some(position) = event.position() else {
                continue;
            };
            let data = serde_json::to_string(&event).unwrap_or_default();
            if tx
                .send(Event::default().id(position.to_string()).data(data))
                .await
                .is_err()
            {
                return;
            }
            cursor = position;
        }
        if full {
            continue;
        }
        // Nothing up to the head is left to read: skip past the events
        // that do not match, then wait for the head to move.
        cursor = cursor.max(head);
        let moved = async {
            match &mut head_moved {
                Some(rx) => {
                    if rx.wait_for(|h| *h > cursor).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = moved => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = closing.wait_for(|c| *c) => return,
            _ = tx.closed() => return,
        }
    }
}

/// The head, then up to a batch of matching events after `cursor`.
async fn read(
    store: &dyn EventStore,
    topics: &[TopicPattern],
    cursor: u64,
) -> Result<(u64, Vec<RecordedEvent>), StoreError> {
    let head = store.head().await?;
    let mut query = ReadAll::after(cursor).limit(BATCH).batch_size(BATCH);
    query.topics = topics.to_vec();
    let events = store.read_all(query).try_collect().await?;
    Ok((head, events))
}
