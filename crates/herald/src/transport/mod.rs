//! Transports: carry events between processes over a message broker.
//!
//! A [`Transport`] publishes events to a broker and opens [`Consumer`]s on
//! it. A subscriber in [`DeliveryMode::Broker`](crate::DeliveryMode::Broker)
//! consumes a named consumer group (a durable queue, a durable consumer)
//! shared by every process that runs it, and runs the same handler and
//! middleware as an in-process subscriber. What differs is where retries and
//! dead letters live: on the broker, so that they survive the process.
//!
//! The crates `herald-amqp` (RabbitMQ) and `herald-nats` (NATS JetStream)
//! implement these traits; [`MemoryTransport`] is an in-process broker for
//! tests and examples. Every transport passes the conformance suite in
//! `herald-testkit`.
//!
//! # How a broker subscriber settles a delivery
//!
//! For each [`Delivery`], the bus runs the subscriber's stack (tracing,
//! idempotency, user layers, panic recovery, timeout) once, then:
//!
//! - success, or a skip: [`Delivery::ack`];
//! - a retryable error, while the subscriber's [`RetryPolicy`](crate::RetryPolicy)
//!   allows another attempt: [`Delivery::retry`] with the policy's backoff
//!   (or the error's own `retry_after`): the broker delivers it again after
//!   that delay, to any process of the group, with the attempt count raised;
//! - otherwise: [`Delivery::dead_letter`], which puts it in the broker's
//!   dead letters (see [`Transport::dead_letters`]) and then acknowledges it;
//! - a handler that asks to stop the subscriber: [`Delivery::release`], so
//!   that another process (or this one, once enabled) handles it.
//!
//! A delivery dropped without any of these (a crash, a lost connection)
//! is delivered again by the broker: delivery is at least once, never lost.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herald::transport::MemoryTransport;
//! use herald::{handler_fn, Bus, DeliveryMode, Subscriber};
//! use serde_json::json;
//! use std::sync::Arc;
//!
//! let broker = Arc::new(MemoryTransport::new());
//! let orders = Bus::builder().transport(broker.clone()).build();
//! let notifications = Bus::builder().transport(broker.clone()).build();
//!
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! notifications.subscribe(
//!     Subscriber::new("notify-user", handler_fn(move |event, _ctx| {
//!         let tx = tx.clone();
//!         async move {
//!             tx.send(event.data().to_value()).unwrap();
//!             Ok(())
//!         }
//!     }))
//!     .topic("order.created")
//!     .mode(DeliveryMode::Broker),
//! ).unwrap();
//! notifications.ready("notify-user").await.unwrap();
//!
//! orders.publish("order.created", json!({"order_id": 7})).await.unwrap();
//! assert_eq!(rx.recv().await.unwrap()["order_id"], 7);
//! notifications.shutdown().await;
//! # }
//! ```

mod memory;
pub(crate) mod runner;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::dead_letter::{DeadLetterStore, NewDeadLetter};
use crate::error::{AttemptError, BoxError};
use crate::event::RecordedEvent;
use crate::topic::TopicPattern;

pub use self::memory::MemoryTransport;

/// A message broker that carries events between processes.
///
/// # Contract
///
/// - [`publish`](Self::publish) returns `Ok` only once the broker has every
///   event (publisher confirms, publish acks). Events keep their id, type,
///   stream, version, position, time, metadata and payload, so that a
///   consumer sees the same [`RecordedEvent`].
/// - [`subscribe`](Self::subscribe) declares what the consumer group needs
///   (idempotently: a second process, or a restart, finds it in place) and
///   returns a consumer of that group. Every process that subscribes with
///   the same name shares the group's events (competing consumers). The
///   group receives the events published after it was first declared.
/// - A consumer reconnects by itself when the connection drops.
/// - [`redeliver`](Self::redeliver) sends an event to one group only.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs and errors: `"amqp"`, `"nats"`, `"memory"`.
    fn name(&self) -> &'static str;

    /// Publishes events, in order; `Ok` once the broker confirmed each.
    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError>;

    /// Opens a consumer of the group `spec.name`, declaring it first.
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, TransportError>;

    /// Sends `event` to the consumer group `subscriber` only (a dead letter
    /// retried), as a first attempt.
    async fn redeliver(
        &self,
        subscriber: &str,
        event: &RecordedEvent,
    ) -> Result<(), TransportError>;

    /// The dead letters this transport keeps on its broker. A bus built with
    /// this transport lists, retries and discards dead letters here unless
    /// it was given another dead-letter store.
    fn dead_letters(&self) -> Arc<dyn DeadLetterStore>;

    /// Closes the transport's connections. Deliveries not yet settled go
    /// back to the broker (as after a crash); later calls fail with
    /// [`TransportError::Closed`].
    async fn close(&self) -> Result<(), TransportError>;
}

/// What a consumer group receives.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConsumerSpec {
    /// The group's name: the subscriber's name.
    pub name: String,
    /// The topic patterns it receives.
    pub topics: Vec<TopicPattern>,
    /// At most this many deliveries unacknowledged at once per consumer
    /// (prefetch, max ack pending).
    pub prefetch: usize,
}

impl ConsumerSpec {
    /// A spec for group `name` receiving `topics`, with a prefetch of 64.
    pub fn new(name: impl Into<String>, topics: Vec<TopicPattern>) -> Self {
        Self {
            name: name.into(),
            topics,
            prefetch: 64,
        }
    }

    /// Sets the prefetch (at least 1).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Whether the group receives events of type `event_type`.
    pub fn matches(&self, event_type: &str) -> bool {
        self.topics.iter().any(|p| p.matches(event_type))
    }
}

/// One consumer of a consumer group.
#[async_trait]
pub trait Consumer: Send + 'static {
    /// The next delivery. Waits for one; reconnects by itself when the
    /// connection drops. An error means the consumer cannot go on (its
    /// group was deleted, say); the bus then opens a new one after a pause.
    ///
    /// It must be cancel-safe: the bus drops a pending `next` (when the
    /// subscriber is disabled, say), and no message may be lost by that.
    async fn next(&mut self) -> Result<Delivery, TransportError>;
}

/// How a transport settles one delivery with its broker. Implemented by
/// transports; the bus calls it through [`Delivery`].
#[async_trait]
pub trait Acker: Send + 'static {
    /// The event was handled: the broker may forget it.
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;

    /// Delivers the event to the group again after `delay`, as attempt
    /// `attempt`, carrying `errors` (every failed attempt so far) where the
    /// broker can.
    async fn retry(
        self: Box<Self>,
        delay: Duration,
        attempt: u32,
        errors: Vec<AttemptError>,
    ) -> Result<(), TransportError>;

    /// Moves the event to the broker's dead letters (updating the group's
    /// dead letter for this event if it has one), then acknowledges it.
    async fn dead_letter(
        self: Box<Self>,
        letter: NewDeadLetter,
        attempts: u32,
    ) -> Result<(), TransportError>;

    /// Gives the event back unhandled, for another consumer (or this one
    /// later).
    async fn release(self: Box<Self>) -> Result<(), TransportError>;
}

/// A received event and the means to settle it with the broker.
pub struct Delivery {
    event: RecordedEvent,
    attempt: u32,
    errors: Vec<AttemptError>,
    acker: Box<dyn Acker>,
}

impl Delivery {
    /// A delivery of `event` as attempt `attempt` (from 1), with the errors
    /// of earlier attempts that the message carried.
    pub fn new(
        event: RecordedEvent,
        attempt: u32,
        errors: Vec<AttemptError>,
        acker: impl Acker,
    ) -> Self {
        Self {
            event,
            attempt: attempt.max(1),
            errors,
            acker: Box::new(acker),
        }
    }

    /// The event.
    pub fn event(&self) -> &RecordedEvent {
        &self.event
    }

    /// Which attempt this is, counting from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The errors of earlier attempts that the message carried (possibly
    /// fewer than `attempt - 1`: not every broker can carry them).
    pub fn errors(&self) -> &[AttemptError] {
        &self.errors
    }

    /// Takes the parts apart.
    pub fn into_parts(self) -> (RecordedEvent, u32, Vec<AttemptError>, Box<dyn Acker>) {
        (self.event, self.attempt, self.errors, self.acker)
    }

    /// Acknowledges it; see [`Acker::ack`].
    pub async fn ack(self) -> Result<(), TransportError> {
        self.acker.ack().await
    }

    /// Schedules it again; see [`Acker::retry`].
    pub async fn retry(
        self,
        delay: Duration,
        errors: Vec<AttemptError>,
    ) -> Result<(), TransportError> {
        let next = self.attempt.saturating_add(1);
        self.acker.retry(delay, next, errors).await
    }

    /// Dead-letters it; see [`Acker::dead_letter`].
    pub async fn dead_letter(
        self,
        letter: NewDeadLetter,
        attempts: u32,
    ) -> Result<(), TransportError> {
        self.acker.dead_letter(letter, attempts).await
    }

    /// Gives it back; see [`Acker::release`].
    pub async fn release(self) -> Result<(), TransportError> {
        self.acker.release().await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("event_id", &self.event.id())
            .field("event_type", &self.event.event_type())
            .field("attempt", &self.attempt)
            .field("errors", &self.errors.len())
            .finish_non_exhaustive()
    }
}

/// A transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The broker could not be reached, or the connection dropped.
    #[error("{transport}: connection to the broker failed: {source}")]
    Connection {
        /// The transport's name.
        transport: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The broker refused or did not confirm a publish; the event may or
    /// may not be on the broker, so publish it again (its id lets the
    /// consumer's inbox, or the broker's duplicate window, drop a copy).
    #[error("{transport}: the broker did not confirm event {event_id}: {reason}")]
    NotConfirmed {
        /// The transport's name.
        transport: &'static str,
        /// The event.
        event_id: crate::EventId,
        /// What the broker said, or why no answer came.
        reason: String,
    },
    /// A name (subscriber, prefix, event type) the broker cannot take.
    #[error("{transport}: invalid name {name:?}: {reason}")]
    InvalidName {
        /// The transport's name.
        transport: &'static str,
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A message on the broker that is not a Herald event.
    #[error("{transport}: malformed message: {reason}")]
    Malformed {
        /// The transport's name.
        transport: &'static str,
        /// What is missing or wrong.
        reason: String,
    },
    /// The transport was closed.
    #[error("{0}: the transport is closed")]
    Closed(&'static str),
    /// Another broker error.
    #[error("{transport}: {source}")]
    Broker {
        /// The transport's name.
        transport: &'static str,
        /// The broker's error.
        #[source]
        source: BoxError,
    },
}

impl TransportError {
    /// A [`TransportError::Broker`] from any error.
    pub fn broker(transport: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Broker {
            transport,
            source: source.into(),
        }
    }

    /// A [`TransportError::Connection`] from any error.
    pub fn connection(transport: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Connection {
            transport,
            source: source.into(),
        }
    }
}
