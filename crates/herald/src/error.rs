//! Errors, and the disposition a handler error carries.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{DecodeError, PayloadError};
use crate::topic::{EventTypeError, PatternError};

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What a handler's result is, when it is not plain success.
pub type HandlerResult = Result<(), HandlerError>;

/// What should happen after a handler failed.
///
/// Middleware decides on this value, never on the error's text: the retry
/// middleware retries [`Retry`](Disposition::Retry), the dead-letter
/// middleware parks [`DeadLetter`](Disposition::DeadLetter), and the bus
/// treats [`Skip`](Disposition::Skip) as handled and
/// [`Stop`](Disposition::Stop) as a reason to stop the subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// A transient failure: try again, after `after` if given, else after the
    /// retry policy's backoff.
    Retry {
        /// Delay asked for by the handler (a `Retry-After`, say).
        after: Option<Duration>,
    },
    /// Give up now: park the event in the dead letters without retrying.
    DeadLetter,
    /// The event does not concern this subscriber: count it as handled, log
    /// it, do nothing else.
    Skip,
    /// A bug that must be fixed first: park the event in the dead letters and
    /// stop the subscriber until it is enabled again.
    Stop,
}

/// Where a handler error came from, for retry predicates and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The handler returned an error.
    Handler,
    /// The handler panicked.
    Panic,
    /// The handler did not finish in time.
    Timeout,
    /// The payload did not decode into the handler's type.
    Decode,
    /// The idempotency ledger failed.
    Ledger,
    /// A tower service wrapped around the handler failed.
    Service,
}

/// A handler's failure, with what should happen next.
///
/// Make one with the constructor for the disposition you want; `?` on a
/// [`DecodeError`], `serde_json::Error`, `std::io::Error`, a `String` or a
/// `BoxError` gives a retryable error (a decode error gives up at once, as
/// retrying cannot fix the payload). Implement `From<YourError> for
/// HandlerError` to use `?` on your own error types.
///
/// # Examples
///
/// ```
/// use herald::{Disposition, HandlerError};
/// use std::time::Duration;
///
/// let e = HandlerError::retry_after("rate limited", Duration::from_secs(2));
/// assert_eq!(e.disposition(), Disposition::Retry { after: Some(Duration::from_secs(2)) });
/// assert_eq!(e.to_string(), "rate limited");
///
/// let e = HandlerError::dead_letter("customer 7 does not exist");
/// assert_eq!(e.disposition(), Disposition::DeadLetter);
/// ```
pub struct HandlerError(Box<Inner>);

/// Boxed so that a handler's `Result` is one pointer wide: futures and
/// results on the success path stay small.
struct Inner {
    disposition: Disposition,
    kind: ErrorKind,
    error: BoxError,
    history: Vec<AttemptError>,
    dead_letter: Option<uuid::Uuid>,
}

impl HandlerError {
    fn make(disposition: Disposition, kind: ErrorKind, error: impl Into<BoxError>) -> Self {
        Self(Box::new(Inner {
            disposition,
            kind,
            error: error.into(),
            history: Vec::new(),
            dead_letter: None,
        }))
    }

    /// A transient failure, retried per the subscriber's retry policy.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Self::make(
            Disposition::Retry { after: None },
            ErrorKind::Handler,
            error,
        )
    }

    /// A transient failure to retry after `delay` (the retry policy still
    /// bounds the number of attempts).
    pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> Self {
        Self::make(
            Disposition::Retry { after: Some(delay) },
            ErrorKind::Handler,
            error,
        )
    }

    /// A permanent failure: straight to the dead letters.
    pub fn dead_letter(error: impl Into<BoxError>) -> Self {
        Self::make(Disposition::DeadLetter, ErrorKind::Handler, error)
    }

    /// The event is not for this subscriber: handled as a no-op, and logged
    /// with the reason.
    pub fn skip(reason: impl Into<BoxError>) -> Self {
        Self::make(Disposition::Skip, ErrorKind::Handler, reason)
    }

    /// A bug: dead-letter the event and stop the subscriber.
    pub fn stop(error: impl Into<BoxError>) -> Self {
        Self::make(Disposition::Stop, ErrorKind::Handler, error)
    }

    /// Changes the disposition, keeping the error.
    pub fn with_disposition(mut self, disposition: Disposition) -> Self {
        self.0.disposition = disposition;
        self
    }

    /// Changes the kind, keeping the error.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.0.kind = kind;
        self
    }

    pub(crate) fn with_history(mut self, history: Vec<AttemptError>) -> Self {
        self.0.history = history;
        self
    }

    pub(crate) fn with_dead_letter(mut self, id: uuid::Uuid) -> Self {
        self.0.dead_letter = Some(id);
        self
    }

    /// The id of the dead letter the event was parked in, when the
    /// dead-letter middleware parked it.
    pub fn dead_letter_id(&self) -> Option<uuid::Uuid> {
        self.0.dead_letter
    }

    pub(crate) fn take_history(&mut self) -> Vec<AttemptError> {
        std::mem::take(&mut self.0.history)
    }

    /// A panic caught in a handler.
    pub fn panic(message: impl Into<String>) -> Self {
        Self::make(
            Disposition::Retry { after: None },
            ErrorKind::Panic,
            format!("handler panicked: {}", message.into()),
        )
    }

    /// A handler that took longer than `limit`.
    pub fn timeout(limit: Duration) -> Self {
        Self::make(
            Disposition::Retry { after: None },
            ErrorKind::Timeout,
            format!("handler timed out after {limit:?}"),
        )
    }

    /// What should happen next.
    pub fn disposition(&self) -> Disposition {
        self.0.disposition
    }

    /// Where the error came from.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The underlying error.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0.error
    }

    /// The underlying error, by value.
    pub fn into_inner(self) -> BoxError {
        self.0.error
    }

    /// The failed attempts that led to this error, oldest first, when the
    /// retry middleware gave up (empty otherwise).
    pub fn history(&self) -> &[AttemptError] {
        &self.0.history
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.error, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("disposition", &self.0.disposition)
            .field("kind", &self.0.kind)
            .field("error", &self.0.error)
            .finish()
    }
}

impl StdError for HandlerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.error.source()
    }
}

impl From<DecodeError> for HandlerError {
    fn from(error: DecodeError) -> Self {
        Self::make(Disposition::DeadLetter, ErrorKind::Decode, error)
    }
}

impl From<PayloadError> for HandlerError {
    fn from(error: PayloadError) -> Self {
        Self::dead_letter(error)
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(error: serde_json::Error) -> Self {
        Self::retry(error)
    }
}

impl From<std::io::Error> for HandlerError {
    fn from(error: std::io::Error) -> Self {
        Self::retry(error)
    }
}

impl From<String> for HandlerError {
    fn from(error: String) -> Self {
        Self::retry(error)
    }
}

impl From<&str> for HandlerError {
    fn from(error: &str) -> Self {
        Self::retry(error)
    }
}

impl From<BoxError> for HandlerError {
    fn from(error: BoxError) -> Self {
        match error.downcast::<HandlerError>() {
            Ok(handler) => *handler,
            Err(other) => Self::retry(other),
        }
    }
}

impl From<PublishError> for HandlerError {
    fn from(error: PublishError) -> Self {
        Self::retry(error)
    }
}

/// One failed attempt of one subscriber on one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The error's message.
    pub message: String,
    /// What kind of failure it was.
    pub kind: ErrorKind,
    /// When the attempt failed.
    pub at: DateTime<Utc>,
}

impl AttemptError {
    /// The record of attempt `attempt` failing with `error`, now.
    pub fn new(attempt: u32, error: &HandlerError) -> Self {
        Self {
            attempt,
            message: error.to_string(),
            kind: error.kind(),
            at: Utc::now(),
        }
    }
}

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event type name is not valid.
    #[error(transparent)]
    InvalidEventType(#[from] EventTypeError),
    /// The payload could not be serialized.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The bus was shut down.
    #[error("the bus is shut down and accepts no more events")]
    ShutDown,
    /// The bus's event store refused or failed the append; no subscriber
    /// received the event.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The broker did not take the event (see
    /// [`BusBuilder::transport`](crate::BusBuilder::transport)); the inline
    /// subscribers had run.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// An inline subscriber configured to propagate its errors failed.
    #[error("subscriber {subscriber} failed on event {event_type} {event_id}: {source}")]
    Handler {
        /// The subscriber's name.
        subscriber: String,
        /// The event's type.
        event_type: String,
        /// The event's id.
        event_id: crate::EventId,
        /// The handler's error.
        #[source]
        source: HandlerError,
    },
}

/// Subscribing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// A topic pattern is invalid.
    #[error(transparent)]
    InvalidPattern(#[from] PatternError),
    /// The subscriber has no topic pattern.
    #[error("subscriber {0} has no topic pattern")]
    NoTopics(String),
    /// The subscriber's name is empty or too long.
    #[error("invalid subscriber name {0:?}: it must be 1 to 255 characters")]
    InvalidName(String),
    /// The name starts with a prefix Herald keeps for itself
    /// ([`relay::CHECKPOINT_PREFIX`](crate::relay::CHECKPOINT_PREFIX)), so
    /// that relays' checkpoints never collide with subscribers'.
    #[error(
        "invalid subscriber name {0:?}: names starting with \"$relay:\" are reserved for relays"
    )]
    ReservedName(String),
    /// A subscriber with this name exists already.
    #[error("a subscriber named {0} exists already")]
    DuplicateName(String),
    /// An async or durable subscriber needs a tokio runtime to run its
    /// workers in.
    #[error("subscriber {0} must be subscribed from within a tokio runtime")]
    NoRuntime(String),
    /// A durable subscriber needs a bus built on an event store.
    #[error("durable subscriber {0} needs a bus built on an event store (BusBuilder::store)")]
    NoStore(String),
    /// A competing subscriber needs a bus with a lease store.
    #[error("competing subscriber {0} needs a bus with a lease store (BusBuilder::lease_store)")]
    NoLeaseStore(String),
    /// A broker subscriber needs a bus with a transport.
    #[error("broker subscriber {0} needs a bus with a transport (BusBuilder::transport)")]
    NoTransport(String),
    /// Only durable subscribers can compete.
    #[error("subscriber {0} is competing but not durable: competing needs DeliveryMode::Durable")]
    CompetingNotDurable(String),
    /// The bus was shut down.
    #[error("the bus is shut down and accepts no more subscribers")]
    ShutDown,
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A minimum exceeds its maximum.
    #[error("{name}: minimum {min:?} is greater than maximum {max:?}")]
    MinAboveMax {
        /// The setting's name.
        name: &'static str,
        /// The minimum given.
        min: Duration,
        /// The maximum given.
        max: Duration,
    },
    /// A value outside its allowed range.
    #[error("{name} must be between {min} and {max}, got {value}")]
    OutOfRange {
        /// The setting's name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
}

/// No subscriber has this name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no subscriber named {0}")]
pub struct UnknownSubscriber(pub String);

/// A dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// No dead letter has this id.
    #[error("no dead letter with id {0}")]
    NotFound(uuid::Uuid),
    /// The dead letter's subscriber is gone.
    #[error("dead letter {id} belongs to subscriber {subscriber}, which is not subscribed")]
    SubscriberGone {
        /// The dead letter's id.
        id: uuid::Uuid,
        /// The subscriber's name.
        subscriber: String,
    },
    /// The store behind the dead letters failed.
    #[error("dead-letter store failed: {0}")]
    Store(#[source] BoxError),
    /// The broker did not take a retried dead letter; it stays in place.
    #[error("could not send the dead letter back through the broker: {0}")]
    Transport(#[from] crate::transport::TransportError),
}

/// A durable-subscriber operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// No subscriber has this name.
    #[error("no subscriber named {0}")]
    UnknownSubscriber(String),
    /// The subscriber is not durable.
    #[error("subscriber {0} is not durable")]
    NotDurable(String),
    /// The subscriber's runner has ended (the bus was shut down).
    #[error("durable subscriber {0} is not running")]
    NotRunning(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The idempotency ledger failed.
#[derive(Debug, thiserror::Error)]
#[error("idempotency ledger failed: {0}")]
pub struct LedgerError(#[source] pub BoxError);
