//! What the commands ask of Herald, written once: a [`Client`] trait with
//! two implementations, over HTTP to a running server
//! ([`HttpClient`](super::http::HttpClient)) and straight to a store
//! ([`DirectClient`](super::direct::DirectClient)).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use herald::store::{Direction, ExpectedVersion, StreamInfo};
use herald::{DeadLetter, EventId, Metadata, RecordedEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Why a command failed: each variant says what was wrong, in words a
/// person at a terminal can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CliError {
    /// An argument could not be used.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered with an error (a problem+json body, usually).
    #[error("the server refused: {title} ({status}): {detail}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The problem's title.
        title: String,
        /// What was wrong.
        detail: String,
    },
    /// The server could not be reached.
    #[error(
        "cannot reach the herald server at {url}: {reason} (is `herald serve` running? HERALD_URL sets the address, --store works on a store directly)"
    )]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server's answer did not have the expected shape.
    #[error("unexpected answer from {url}: {reason}")]
    UnexpectedResponse {
        /// The URL asked.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The command needs a running server: the store alone cannot do it.
    #[error(
        "{0} needs a running server, which runs the subscribers: drop --store and set HERALD_URL"
    )]
    NeedsServer(&'static str),
    /// The command works on a store only.
    #[error("{0} works on a store directly: pass --store sqlite://PATH or --store postgres://...")]
    NeedsStore(&'static str),
    /// The store could not be opened.
    #[error(transparent)]
    OpenStore(#[from] crate::backend::OpenStoreError),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] herald::store::StoreError),
    /// Publishing through the bus failed.
    #[error(transparent)]
    Publish(#[from] herald::PublishError),
    /// The dead letters could not be read or changed.
    #[error(transparent)]
    DeadLetter(#[from] herald::DeadLetterError),
    /// Retried dead letters failed again (they were kept, updated).
    #[error("{count} dead letter(s) failed again: {detail}")]
    RetryFailed {
        /// How many.
        count: usize,
        /// Which, and why.
        detail: String,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// An invalid argument.
    pub(crate) fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::InvalidArgument {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// One event to publish.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct EventSpec {
    /// The type name.
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    /// The payload.
    pub(crate) data: Value,
    /// The metadata.
    pub(crate) metadata: Metadata,
    /// A given id, for an idempotent repeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<EventId>,
}

/// Events to publish, into one stream or each into its type's stream.
#[derive(Clone, Debug)]
pub(crate) struct PublishRequest {
    /// The stream; `None` publishes each event to the stream named after
    /// its type.
    pub(crate) stream: Option<String>,
    /// What the stream's version must be (with a stream only).
    pub(crate) expected: ExpectedVersion,
    /// The events.
    pub(crate) events: Vec<EventSpec>,
}

/// Where one published event landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PublishedEvent {
    /// Its id.
    pub(crate) id: EventId,
    /// Its stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stream: Option<String>,
    /// Its version in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<u64>,
    /// Its global position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) position: Option<u64>,
}

/// The result of a publish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Published {
    /// The stream, when one was named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stream: Option<String>,
    /// The stream's version after the append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<u64>,
    /// Each event, in the order given.
    pub(crate) events: Vec<PublishedEvent>,
}

/// How to read one stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamQuery {
    /// The version to start at, inclusive.
    pub(crate) from: Option<u64>,
    /// At most this many.
    pub(crate) limit: usize,
    /// Which way.
    pub(crate) direction: Direction,
}

/// How to read the global log.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogQuery {
    /// Events after this position.
    pub(crate) after: u64,
    /// At most this many.
    pub(crate) limit: usize,
    /// Only types matching one of these patterns (all when empty).
    pub(crate) topics: Vec<String>,
}

/// Which dead letters to list.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeadLetterFilter {
    /// Only this subscriber's.
    pub(crate) subscriber: Option<String>,
    /// Only events whose type matches this pattern.
    pub(crate) event_type: Option<String>,
    /// Only those with an error containing this text.
    pub(crate) error: Option<String>,
    /// Only those that last failed at or after this time.
    pub(crate) since: Option<DateTime<Utc>>,
    /// Only those that last failed before this time.
    pub(crate) until: Option<DateTime<Utc>>,
    /// At most this many.
    pub(crate) limit: Option<usize>,
}

/// What retrying a dead letter did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum Retried {
    /// The subscriber handled the event; the dead letter is gone.
    Handled {
        /// The dead letter.
        id: Uuid,
    },
    /// It failed again; the dead letter was updated.
    Failed {
        /// The dead letter.
        id: Uuid,
        /// The new error.
        error: String,
    },
}

/// Where a replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplayStart {
    /// The first event in the store.
    Start,
    /// The events after this position.
    Position(u64),
    /// The events recorded at or after this time.
    Time(DateTime<Utc>),
}

/// A subscriber as the server reports it: its fields as the server sends
/// them (name, topics, url, status, checkpoint, lag, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Subscription(pub(crate) serde_json::Map<String, Value>);

impl Subscription {
    /// The name.
    pub(crate) fn name(&self) -> &str {
        self.0.get("name").and_then(Value::as_str).unwrap_or("")
    }

    /// How many positions it is behind, when the server says.
    pub(crate) fn lag(&self) -> Option<u64> {
        self.0.get("lag").and_then(Value::as_u64)
    }

    /// Its checkpoint, when the server says.
    pub(crate) fn checkpoint(&self) -> Option<u64> {
        self.0.get("checkpoint").and_then(Value::as_u64)
    }
}

/// A live feed of events.
pub(crate) type EventFeed<'a> = BoxStream<'a, Result<RecordedEvent, CliError>>;

/// What the commands ask of Herald. Every command is written once against
/// this trait; [`HttpClient`](super::http::HttpClient) talks to a running
/// server and [`DirectClient`](super::direct::DirectClient) to a store.
#[async_trait::async_trait]
pub(crate) trait Client: Send + Sync {
    /// Appends events.
    async fn publish(&self, request: PublishRequest) -> Result<Published, CliError>;

    /// Reads one stream.
    async fn read_stream(
        &self,
        stream: &str,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>, CliError>;

    /// Reads a page of the global log.
    async fn read_log(&self, query: &LogQuery) -> Result<Vec<RecordedEvent>, CliError>;

    /// One event by id.
    async fn event(&self, id: EventId) -> Result<RecordedEvent, CliError>;

    /// The events after `after` (`None`: after the current head) whose
    /// type matches `topics` (all when empty): those in the log, then each
    /// new one as it is appended.
    async fn follow(
        &self,
        topics: Vec<String>,
        after: Option<u64>,
    ) -> Result<EventFeed<'_>, CliError>;

    /// Streams by name.
    async fn streams(
        &self,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, CliError>;

    /// The subscribers.
    async fn subscriptions(&self) -> Result<Vec<Subscription>, CliError>;

    /// Enables or disables a subscriber.
    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), CliError>;

    /// Moves a subscriber's checkpoint back; the answer as the server gives
    /// it.
    async fn replay(&self, name: &str, from: ReplayStart) -> Result<Value, CliError>;

    /// Dead letters, oldest first.
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, CliError>;

    /// One dead letter.
    async fn dead_letter(&self, id: Uuid) -> Result<DeadLetter, CliError>;

    /// Delivers a dead letter's event to its subscriber again.
    async fn retry_dead_letter(&self, id: Uuid) -> Result<Retried, CliError>;

    /// Removes a dead letter.
    async fn discard_dead_letter(&self, id: Uuid) -> Result<(), CliError>;

    /// Applies the store's migrations; what was done, in words.
    async fn migrate(&self) -> Result<String, CliError>;
}

/// A client shared between tasks (the bench's workers).
pub(crate) type SharedClient = Arc<dyn Client>;
