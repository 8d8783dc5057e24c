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
//! A subscription first catches up by reading the store after its start
//! position, in batches, until a read comes back short. Live events then
//! come from the server's *tail*: one task that reads the log once each
//! time the store's head moves and shares each read with every
//! subscription, as a slice `(after, upto]` holding every event in that
//! range, so a hundred subscribers cost one read, not a hundred. Slices
//! are contiguous; a subscription whose position is behind a slice's start
//! (it joined, or fell behind and missed slices) reads the gap from the
//! store first, and skips what it already sent. The tail and the catch-up
//! both read the head before reading events, and every event at or below
//! the head is visible to that read (the store's contract), so nothing is
//! skipped; positions only grow, so a client that resumes after the last id
//! it saw gets every later event exactly once.
//!
//! # Keep-alive and errors
//!
//! A comment line is sent every 15 seconds of silence, so that proxies keep
//! the connection open. If the store fails, an `event: error` message with
//! the reason is sent and the stream ends; the client reconnects with its
//! `Last-Event-ID`. The stream also ends when the server shuts down.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use herald::store::{EventStore, ReadAll, StoreError};
use herald::{RecordedEvent, TopicPattern};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch};

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
) -> Result<Response, ApiError> {
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
    let tail = state
        .live_tail()
        .get_or_init(|| Tail::start(Arc::clone(&store), state.closing()));
    let slices = tail.slices.subscribe();
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHUNKS);
    let subscription = Feed {
        store,
        topics,
        cursor: after,
        tx,
        last_sent: tokio::time::Instant::now(),
    };
    tokio::spawn(feed(subscription, slices, state.closing()));
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, Infallible>))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// How many chunks of messages may wait for a slow client.
const CHUNKS: usize = 16;

/// One SSE message for an event: `id:` its position, `data:` its JSON, one
/// `data:` line per line of the JSON (a payload stored as the client sent
/// it may hold newlines between tokens; the client joins the lines back).
fn render(out: &mut String, position: u64, json: &str) {
    let _ = writeln!(out, "id: {position}");
    for line in json.split('\n') {
        let _ = writeln!(out, "data: {}", line.trim_end_matches('\r'));
    }
    out.push('\n');
}

/// One read of the log by the tail: every event in `(after, upto]`.
#[derive(Clone)]
pub(crate) struct Slice {
    after: u64,
    upto: u64,
    events: Arc<[Shared]>,
}

/// An event of a slice, rendered once for every subscription.
struct Shared {
    position: u64,
    event: RecordedEvent,
    message: String,
}

/// The server's tail of the log, shared by its live subscriptions.
pub(crate) struct Tail {
    slices: broadcast::Sender<Slice>,
}

/// How many slices a subscription may fall behind before it reads from the
/// store instead.
const SLICES: usize = 256;

impl Tail {
    /// Starts the tail on `store`, from its head, until `closing`.
    pub(crate) fn start(store: Arc<dyn EventStore>, closing: watch::Receiver<bool>) -> Self {
        let (slices, _) = broadcast::channel(SLICES);
        tokio::spawn(run_tail(store, slices.clone(), closing));
        Self { slices }
    }
}

/// Waits until the head passes `known`, a poll interval passes, or the
/// server closes; returns whether it closes.
async fn wait_for_head(
    head: &mut Option<watch::Receiver<u64>>,
    known: u64,
    closing: &mut watch::Receiver<bool>,
) -> bool {
    let moved = async {
        match head {
            Some(rx) => {
                if rx.wait_for(|h| *h > known).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = moved => false,
        _ = tokio::time::sleep(POLL) => false,
        _ = closing.wait_for(|c| *c) => true,
    }
}

async fn run_tail(
    store: Arc<dyn EventStore>,
    slices: broadcast::Sender<Slice>,
    mut closing: watch::Receiver<bool>,
) {
    let mut head_moved = store.watch_head();
    let mut cursor = None;
    loop {
        if *closing.borrow() {
            return;
        }
        let read = match cursor {
            // Nobody listens: only follow the head.
            Some(_) if slices.receiver_count() == 0 => store.head().await.map(|h| (h, Vec::new())),
            Some(c) => read(&*store, &[], c).await,
            None => store.head().await.map(|h| (h, Vec::new())),
        };
        let (head, events) = match read {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(error = %err, "the live tail cannot read the store; retrying");
                if wait_for_head(&mut None, 0, &mut closing).await {
                    return;
                }
                continue;
            }
        };
        let after = cursor.unwrap_or(head);
        let full = events.len() >= BATCH;
        let last = events.last().and_then(RecordedEvent::position);
        let upto = match (full, last) {
            (true, Some(p)) => p,
            _ => last.unwrap_or(after).max(head).max(after),
        };
        if upto > after && slices.receiver_count() > 0 {
            let events: Arc<[Shared]> = events
                .into_iter()
                .filter_map(|event| {
                    let position = event.position()?;
                    let json = serde_json::to_string(&event).ok()?;
                    let mut message = String::with_capacity(json.len() + 32);
                    render(&mut message, position, &json);
                    Some(Shared {
                        position,
                        event,
                        message,
                    })
                })
                .collect();
            let _ = slices.send(Slice {
                after,
                upto,
                events,
            });
        }
        cursor = Some(upto);
        if full {
            continue;
        }
        if wait_for_head(&mut head_moved, upto, &mut closing).await {
            return;
        }
    }
}

/// Why a subscription's feed stops.
enum Stop {
    /// The client went away or the server closes.
    Gone,
    /// The store failed.
    Failed(StoreError),
}

/// One subscription: what it selects, where it is, where it sends.
struct Feed {
    store: Arc<dyn EventStore>,
    topics: Vec<TopicPattern>,
    /// Every event at or below it was sent or does not match.
    cursor: u64,
    tx: mpsc::Sender<Bytes>,
    /// When the client was last sent something, for keep-alives.
    last_sent: tokio::time::Instant,
}

impl Feed {
    fn matches(&self, event_type: &str) -> bool {
        self.topics.is_empty() || self.topics.iter().any(|t| t.matches(event_type))
    }

    /// Sends a chunk of messages that ends with the event at `position`.
    async fn send(&mut self, chunk: String, position: u64) -> Result<(), Stop> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Bytes::from(chunk))
            .await
            .map_err(|_| Stop::Gone)?;
        self.cursor = position;
        self.last_sent = tokio::time::Instant::now();
        Ok(())
    }

    /// Reads the store after the cursor and sends what matches, up to
    /// `bound` (inclusive) or, without one, until a read comes back short.
    async fn catch_up(&mut self, bound: Option<u64>) -> Result<(), Stop> {
        loop {
            let (head, events) = read(&*self.store, &self.topics, self.cursor)
                .await
                .map_err(Stop::Failed)?;
            let full = events.len() >= BATCH;
            let mut past_bound = false;
            let mut chunk = String::new();
            let mut last = self.cursor;
            for event in events {
                let Some(position) = event.position() else {
                    continue;
                };
                if bound.is_some_and(|b| position > b) {
                    past_bound = true;
                    break;
                }
                let json = serde_json::to_string(&event).unwrap_or_default();
                render(&mut chunk, position, &json);
                last = position;
            }
            self.send(chunk, last).await?;
            if !full || past_bound || bound.is_some_and(|b| self.cursor >= b) {
                // Nothing up to the head (or the bound, which is at or below
                // it) is left to read: move past the events that do not
                // match.
                self.cursor = self.cursor.max(bound.unwrap_or(head));
                return Ok(());
            }
        }
    }

    /// Sends a slice's matching events after the cursor, reading from the
    /// store first what lies between the cursor and the slice.
    async fn apply(&mut self, slice: &Slice) -> Result<(), Stop> {
        if slice.upto <= self.cursor {
            return Ok(());
        }
        if slice.after > self.cursor {
            self.catch_up(Some(slice.after)).await?;
        }
        let mut chunk = String::new();
        for shared in slice.events.iter() {
            if shared.position > self.cursor && self.matches(shared.event.event_type()) {
                chunk.push_str(&shared.message);
            }
        }
        self.send(chunk, slice.upto).await?;
        self.cursor = self.cursor.max(slice.upto);
        Ok(())
    }

    async fn run(
        &mut self,
        mut slices: broadcast::Receiver<Slice>,
        mut closing: watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        loop {
            self.catch_up(None).await?;
            loop {
                let quiet_until = self.last_sent + KEEP_ALIVE;
                let slice = tokio::select! {
                    slice = slices.recv() => Some(slice),
                    _ = closing.wait_for(|c| *c) => return Err(Stop::Gone),
                    _ = self.tx.closed() => return Err(Stop::Gone),
                    _ = tokio::time::sleep_until(quiet_until) => None,
                };
                let Some(slice) = slice else {
                    self.tx
                        .send(Bytes::from_static(b": keep-alive\n\n"))
                        .await
                        .map_err(|_| Stop::Gone)?;
                    self.last_sent = tokio::time::Instant::now();
                    continue;
                };
                match slice {
                    Ok(slice) => self.apply(&slice).await?,
                    // Fell behind the tail: read from the store again.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Gone),
                }
            }
        }
    }
}

/// Runs one subscription until the client goes away, the server closes,
/// or the store fails (then an `error` message says why).
async fn feed(mut feed: Feed, slices: broadcast::Receiver<Slice>, closing: watch::Receiver<bool>) {
    if let Err(Stop::Failed(err)) = feed.run(slices, closing).await {
        tracing::warn!(error = %err, cursor = feed.cursor, "live subscription ends: the store failed");
        let _ = feed
            .tx
            .send(Bytes::from(format!(
                "event: error\ndata: {}\n\n",
                err.to_string().replace(['\r', '\n'], " ")
            )))
            .await;
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
