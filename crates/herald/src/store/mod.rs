//! Event stores: the persistent history of events, in streams.
//!
//! An [`EventStore`] appends events to streams with optimistic concurrency,
//! reads a stream forwards or backwards, reads the global log in position
//! order, links events into other streams and deletes streams. Backends live
//! in crates of their own; [`MemoryStore`] is the in-memory backend, a real
//! one that passes the same conformance suite (`herald-testkit`).
//!
//! # Vocabulary
//!
//! - A **stream** is the ordered events of one thing (`order-42`). Its first
//!   event has version 0; a stream's version is the version of its last
//!   event.
//! - The **global log** orders every event of the store by **position**,
//!   from 1. Positions increase with commit order as readers see it: a
//!   reader of the global log never sees position `p` and later a smaller
//!   one (see each backend for how it keeps this under concurrent writers).
//! - A **link** puts an existing event into another stream without copying
//!   it. Reading that stream yields the event with its own id, type, data
//!   and global position, and with the stream and version it has *in the
//!   stream read*; [`RecordedParts::origin`](crate::RecordedParts::origin)
//!   says where it was first appended.
//!
//! # Deleting a stream
//!
//! [`EventStore::delete_stream`] removes the stream's events for good (as a
//! privacy erasure needs): they disappear from the stream and from the global
//! log, and in streams they were linked into they leave a hole (reads skip
//! it; later versions do not move). Links the deleted stream held to other
//! streams' events go with it; those events stay. Positions of other events
//! never change, so the global log simply has a gap, and durable subscribers
//! are not disturbed. The name can be used again; a new stream under it
//! starts at version 0.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::BoxError;
use crate::event::{NewEvent, RecordedEvent};
use crate::id::EventId;
use crate::topic::{EventTypeError, TopicPattern};

mod checkpoint;
mod lease;
mod memory;

pub use self::checkpoint::{CheckpointStore, ScheduledRetry};
pub use self::lease::{GroupView, Lease, LeaseStore, PartitionState, partition_of};
pub use self::memory::MemoryStore;

/// The longest stream name, in bytes.
const MAX_STREAM_NAME: usize = 255;

/// A validated stream name, such as `order-42` or `customer:7`.
///
/// 1 to 255 bytes of ASCII letters, digits and `- _ . : @ + = ~`: safe in
/// URLs, SQL identifiers' values, broker headers and file names.
///
/// # Examples
///
/// ```
/// use herald::store::StreamName;
///
/// let name = StreamName::new("order-42")?;
/// assert_eq!(name.as_str(), "order-42");
/// assert!(StreamName::new("order 42").is_err());
/// assert!(StreamName::new("").is_err());
/// # Ok::<(), herald::store::StreamNameError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

/// A stream name that breaks the rules of [`StreamName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamNameError {
    /// The name is empty.
    #[error("invalid stream name: it is empty")]
    Empty,
    /// The name is longer than 255 bytes.
    #[error("invalid stream name: {len} bytes, the limit is 255")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character that is not allowed.
    #[error(
        "invalid stream name {name:?}: character {character:?} at byte {index} is not allowed \
         (use ASCII letters, digits and - _ . : @ + = ~)"
    )]
    InvalidCharacter {
        /// The name.
        name: String,
        /// The character.
        character: char,
        /// Its byte offset.
        index: usize,
    },
}

fn allowed_in_stream_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+' | '=' | '~')
}

impl StreamName {
    /// Validates a stream name.
    ///
    /// # Errors
    ///
    /// [`StreamNameError`] saying what is wrong.
    pub fn new(name: impl AsRef<str>) -> Result<Self, StreamNameError> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(StreamNameError::Empty);
        }
        if name.len() > MAX_STREAM_NAME {
            return Err(StreamNameError::TooLong { len: name.len() });
        }
        if let Some((index, character)) = name
            .char_indices()
            .find(|(_, c)| !allowed_in_stream_name(*c))
        {
            return Err(StreamNameError::InvalidCharacter {
                name: name.to_owned(),
                character,
                index,
            });
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl Deref for StreamName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for StreamName {
    type Err = StreamNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for StreamName {
    type Error = StreamNameError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl Serialize for StreamName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// What the writer expects the stream's state to be, for optimistic
/// concurrency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist (have no events).
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's version (the version of its last event) must be this.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose version is `actual` (`None`: no stream) meets
    /// this expectation.
    pub fn is_met_by(self, actual: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual.is_none(),
            Self::StreamExists => actual.is_some(),
            Self::Exact(v) => actual == Some(v),
        }
    }
}

impl ExpectedVersion {
    /// Checks a stream whose version is `actual` (`None`: no stream):
    /// `actual` when it meets this expectation, else the conflict error that
    /// every backend returns.
    ///
    /// # Errors
    ///
    /// [`StoreError::WrongExpectedVersion`] naming the stream, this
    /// expectation and the actual version.
    pub fn check(
        self,
        stream: &StreamName,
        actual: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        if self.is_met_by(actual) {
            Ok(actual)
        } else {
            Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected: self,
                actual,
            })
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("stream exists"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Where one appended event landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedEvent {
    /// The event id.
    pub id: EventId,
    /// Its version in the stream.
    pub version: u64,
    /// Its position in the global log.
    pub position: u64,
}

/// One stream's part of an [`EventStore::append_all`].
#[derive(Clone, Debug)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamName,
    /// What its version must be before this part.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// A part appending `events` to `stream`.
    pub fn new(stream: StreamName, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected,
            events,
        }
    }
}

/// The result of an append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The stream.
    pub stream: StreamName,
    /// The stream's version after the append (`None` for an empty append to
    /// a stream that does not exist).
    pub version: Option<u64>,
    /// Where each event landed, in the order given.
    pub events: Vec<AppendedEvent>,
}

/// Which way to read a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// How to read one stream.
///
/// # Examples
///
/// ```
/// use herald::store::ReadStream;
///
/// let last_ten = ReadStream::backward().limit(10);
/// let from_five = ReadStream::forward().from(5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadStream {
    /// The version to start at, inclusive; `None` is the first event when
    /// reading forward and the last when reading backward.
    pub from: Option<u64>,
    /// Which way.
    pub direction: Direction,
    /// At most this many events.
    pub limit: usize,
}

impl ReadStream {
    /// Oldest first, from the start, up to 1000 events.
    pub fn forward() -> Self {
        Self {
            from: None,
            direction: Direction::Forward,
            limit: 1000,
        }
    }

    /// Newest first, from the end, up to 1000 events.
    pub fn backward() -> Self {
        Self {
            from: None,
            direction: Direction::Backward,
            limit: 1000,
        }
    }

    /// Starts at `version`, inclusive.
    pub fn from(mut self, version: u64) -> Self {
        self.from = Some(version);
        self
    }

    /// At most `limit` events.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

impl Default for ReadStream {
    fn default() -> Self {
        Self::forward()
    }
}

/// How to read the global log: forward from a position, filtered by topic
/// patterns and by a time range.
///
/// # Examples
///
/// ```
/// use herald::store::ReadAll;
/// use herald::TopicPattern;
///
/// let orders = ReadAll::after(0)
///     .topic(TopicPattern::parse("order.*")?)
///     .limit(500);
/// # Ok::<(), herald::PatternError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadAll {
    /// Events after this position (0: from the start).
    pub after: u64,
    /// Only events whose type matches one of these (all when empty).
    pub topics: Vec<TopicPattern>,
    /// Only events recorded at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events recorded before this time.
    pub until: Option<DateTime<Utc>>,
    /// At most this many events (all when `None`).
    pub limit: Option<usize>,
    /// How many events a backend fetches per round trip.
    pub batch_size: Option<usize>,
}

impl ReadAll {
    /// Events after `position`.
    pub fn after(position: u64) -> Self {
        Self {
            after: position,
            ..Self::default()
        }
    }

    /// Adds a topic pattern.
    pub fn topic(mut self, pattern: TopicPattern) -> Self {
        self.topics.push(pattern);
        self
    }

    /// Only events recorded at or after `time`.
    pub fn since(mut self, time: DateTime<Utc>) -> Self {
        self.since = Some(time);
        self
    }

    /// Only events recorded before `time`.
    pub fn until(mut self, time: DateTime<Utc>) -> Self {
        self.until = Some(time);
        self
    }

    /// At most `limit` events.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Fetch `size` events per round trip.
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = Some(size.max(1));
        self
    }

    /// Whether `event` passes the type and time filters.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.topics.is_empty() || self.topics.iter().any(|t| t.matches(event.event_type())))
            && self.since.is_none_or(|s| event.recorded_at() >= s)
            && self.until.is_none_or(|u| event.recorded_at() < u)
    }
}

/// What a store knows of one stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The stream.
    pub stream: StreamName,
    /// The version of its last event.
    pub version: u64,
    /// How many events it holds (links included).
    pub count: u64,
    /// When its first event was recorded.
    pub first_recorded_at: DateTime<Utc>,
    /// When its last event was recorded.
    pub last_recorded_at: DateTime<Utc>,
}

/// Which streams to list: in name order, after a name, optionally by prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListStreams {
    /// Streams whose name sorts after this (a cursor for paging).
    pub after: Option<String>,
    /// Only streams whose name starts with this.
    pub prefix: Option<String>,
    /// At most this many.
    pub limit: usize,
}

impl Default for ListStreams {
    fn default() -> Self {
        Self {
            after: None,
            prefix: None,
            limit: 100,
        }
    }
}

impl ListStreams {
    /// Streams after `name`.
    pub fn after(mut self, name: impl Into<String>) -> Self {
        self.after = Some(name.into());
        self
    }

    /// Streams whose name starts with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// At most `limit` streams.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// What a store backend supports beyond [`EventStore`]'s contract, as the
/// conformance suite and the capability tables of the backends' docs state
/// it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// The history outlives the process.
    pub durable: bool,
    /// Several processes can append to and read one store.
    pub shared_between_processes: bool,
    /// Appends can join the caller's own database transaction (outbox).
    pub outbox: bool,
    /// Handlers can record handled events in the store's transaction (inbox).
    pub inbox: bool,
    /// Processes running one subscriber share its work.
    pub competing_consumers: bool,
}

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream is not in the state the writer expected; nothing was
    /// written.
    #[error(
        "wrong expected version for stream {stream}: expected {expected}, found {}",
        actual.map_or_else(|| "no stream".to_owned(), |v| format!("version {v}"))
    )]
    WrongExpectedVersion {
        /// The stream.
        stream: StreamName,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// Its actual version (`None`: no stream).
        actual: Option<u64>,
    },
    /// An event id the store holds already was appended with other content,
    /// to another stream, or in a batch that is not a repeat of the first.
    #[error("event {id} cannot be appended to stream {stream}: {detail}; nothing was written")]
    DuplicateEvent {
        /// The event id.
        id: EventId,
        /// The stream appended to.
        stream: StreamName,
        /// How the append differs from the stored event.
        detail: String,
    },
    /// An event to link is not in the store.
    #[error("event {0} is not in the store")]
    EventNotFound(EventId),
    /// An event type name is invalid.
    #[error(transparent)]
    InvalidEventType(#[from] EventTypeError),
    /// A stream name is invalid.
    #[error(transparent)]
    InvalidStreamName(#[from] StreamNameError),
    /// The backend failed (connection, I/O, …).
    #[error("store backend failed: {0}")]
    Backend(#[source] BoxError),
}

/// The class of a [`StoreError`], to decide on (retry a conflict, report
/// bad input, retry a backend failure later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// A concurrency conflict: read again and retry.
    Conflict,
    /// Bad input: fix the request.
    InvalidInput,
    /// Something is missing.
    NotFound,
    /// The backend failed: retry later.
    Backend,
}

impl StoreError {
    /// The class of the error.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::WrongExpectedVersion { .. } => StoreErrorKind::Conflict,
            Self::DuplicateEvent { .. }
            | Self::InvalidEventType(_)
            | Self::InvalidStreamName(_) => StoreErrorKind::InvalidInput,
            Self::EventNotFound(_) => StoreErrorKind::NotFound,
            Self::Backend(_) => StoreErrorKind::Backend,
        }
    }

    /// A backend failure.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Self::Backend(error.into())
    }
}

/// A store of events in streams.
///
/// # Contract
///
/// Every backend passes `herald-testkit`'s conformance suite, which tests each
/// sentence here.
///
/// - **append** writes the events at the end of the stream, atomically: all
///   or none. The stream must meet `expected`, or the append fails with
///   [`StoreError::WrongExpectedVersion`] naming the stream, the expected and
///   the actual version, and writes nothing. Versions are consecutive from
///   0; positions are increasing. An event type name that is not valid fails
///   the whole append. Appending events whose ids the store holds already,
///   in this stream, in the same order and with the same type, data and
///   metadata, writes nothing and returns where they are (an idempotent
///   retry); any other reuse of an id is [`StoreError::DuplicateEvent`].
///   Appending no events checks `expected` and writes nothing.
/// - **read_stream** returns at most `limit` events from `from` in the given
///   direction; an unknown stream reads as empty.
/// - **read_all** yields the events after a position in position order,
///   filtered, fetched in batches, without buffering the whole log.
/// - **link** appends existing events to another stream, with the same
///   expected-version rules as append; linking an event twice into one
///   stream is allowed (it appears twice).
/// - **delete_stream** removes a stream as the [module docs](self) say.
/// - Once `append` returned `Ok`, the events (for a durable store) survive a
///   crash, and every reader of the store can read them as soon as every
///   append that drew a lower position has ended (committed or rolled
///   back): the global log is never read with a hole that fills later.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to a stream.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError>;

    /// Appends to several streams in one atomic step: every append is
    /// stored, or none is. Each follows the rules of
    /// [`append`](Self::append) (expected version, idempotent repeat,
    /// duplicate ids), and an error in any of them (a version conflict, an
    /// id stored already) writes nothing of the others. A stream may
    /// appear more than once; its appends apply in the order given.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herald::store::{EventStore, ExpectedVersion, MemoryStore, StreamAppend, StreamName};
    /// use herald::NewEvent;
    /// use serde_json::json;
    ///
    /// let store = MemoryStore::new();
    /// let order = StreamName::new("order-7").unwrap();
    /// let customer = StreamName::new("customer-3").unwrap();
    /// let appended = store
    ///     .append_all(vec![
    ///         StreamAppend::new(order.clone(), ExpectedVersion::NoStream, vec![
    ///             NewEvent::new("order.created", json!({"customer": 3})),
    ///         ]),
    ///         StreamAppend::new(customer, ExpectedVersion::Any, vec![
    ///             NewEvent::new("customer.ordered", json!({"order": 7})),
    ///         ]),
    ///     ])
    ///     .await
    ///     .unwrap();
    /// assert_eq!(appended.len(), 2);
    ///
    /// // A conflict in one part writes nothing of the other.
    /// let err = store
    ///     .append_all(vec![
    ///         StreamAppend::new(StreamName::new("audit").unwrap(), ExpectedVersion::Any, vec![
    ///             NewEvent::new("audit.noted", json!({})),
    ///         ]),
    ///         StreamAppend::new(order, ExpectedVersion::NoStream, vec![
    ///             NewEvent::new("order.created", json!({})),
    ///         ]),
    ///     ])
    ///     .await;
    /// assert!(err.is_err());
    /// assert_eq!(store.head().await.unwrap(), 2);
    /// # }
    /// ```
    async fn append_all(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>, StoreError>;

    /// Links existing events into a stream.
    async fn link(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[EventId],
    ) -> Result<Appended, StoreError>;

    /// Reads one stream.
    async fn read_stream(
        &self,
        stream: &StreamName,
        query: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads the global log.
    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent, StoreError>>;

    /// One event by id.
    async fn event(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError>;

    /// What the store knows of a stream (`None`: no such stream).
    async fn stream_info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, StoreError>;

    /// Lists streams by name.
    async fn list_streams(&self, query: ListStreams) -> Result<Vec<StreamInfo>, StoreError>;

    /// Deletes a stream; see the [module docs](self). Returns whether it
    /// existed.
    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<bool, StoreError>;

    /// The highest position assigned to an event that readers can see (0
    /// when nothing was appended). Every event at or below it is visible to
    /// a read that starts after `head` returned: durable subscribers rely on
    /// this to move their checkpoint past events they do not match.
    /// Deleting a stream does not lower it.
    async fn head(&self) -> Result<u64, StoreError>;

    /// A receiver of the head position, for stores that can wake
    /// subscribers at once; `None` when subscribers must poll. It follows at
    /// least the appends made through this handle; whether it also sees
    /// other processes' appends depends on the backend (PostgreSQL's
    /// notifications do, an embedded store's in-process channel does not).
    fn watch_head(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;
}
