//! Herald: publish events once, let independent subscribers react.
//!
//! This crate is Herald's core: the in-process [`Bus`], typed and dynamic
//! events, [`Handler`]s, [`middleware`] (tracing, retries with backoff,
//! timeouts, panic recovery, dead letters, idempotency, tower layers), dead
//! letters, and [`testing`] helpers. It knows no database or broker; stores
//! and transports live in crates of their own and implement its traits.
//!
//! # A guide
//!
//! ## Publish
//!
//! An event is a fact with a dotted type name (`order.created`), a JSON
//! payload and metadata. Publish one dynamically:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herald::Bus;
//! use serde_json::json;
//!
//! let bus = Bus::new();
//! let event = bus.publish("order.created", json!({"order_id": 42})).await.unwrap();
//! assert_eq!(event.id().as_uuid().get_version_num(), 7); // a UUIDv7
//! # }
//! ```
//!
//! or as a typed struct, whose name is checked when it compiles:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herald::{Bus, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[event(name = "order.created")]
//! struct OrderCreated {
//!     order_id: u64,
//!     total_cents: u64,
//! }
//!
//! let bus = Bus::new();
//! bus.publish_event(&OrderCreated { order_id: 42, total_cents: 1999 }).await.unwrap();
//! # }
//! ```
//!
//! Every published event gets an id, a recorded-at time and [`Metadata`]
//! (correlation id, causation id and free headers); use
//! [`NewEvent`] with [`Bus::publish_new`] to set them.
//!
//! ## Subscribe
//!
//! A subscriber has a unique name, topic patterns and a handler. Patterns
//! follow AMQP: `order.created`, `order.*` (one segment), `order.#` (any
//! depth), `#` (everything). A handler is a type implementing [`Handler`], a
//! closure through [`handler_fn`], or a typed closure through [`typed`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herald::{handler_fn, typed, Bus, Event, Subscriber, Typed};
//! use serde::{Deserialize, Serialize};
//! use serde_json::json;
//!
//! #[derive(Serialize, Deserialize, Event)]
//! #[event(name = "order.created")]
//! struct OrderCreated { order_id: u64 }
//!
//! let bus = Bus::new();
//! bus.subscribe(
//!     Subscriber::new("notify-user", typed(|order: Typed<OrderCreated>, _ctx| async move {
//!         println!("thanks for order {}", order.order_id);
//!         Ok(())
//!     }))
//!     .topic("order.created"),
//! ).unwrap();
//! bus.subscribe(
//!     Subscriber::new("audit", handler_fn(|event, _ctx| async move {
//!         println!("{} {}", event.event_type(), event.data());
//!         Ok(())
//!     }))
//!     .topic("order.#"),
//! ).unwrap();
//!
//! // A bad pattern is an error when subscribing, not a silent mismatch.
//! let err = bus.subscribe(
//!     Subscriber::new("bad", handler_fn(|_, _| async { Ok(()) })).topic("order.*s"),
//! );
//! assert!(err.is_err());
//!
//! bus.publish("order.created", json!({"order_id": 1})).await.unwrap();
//! bus.disable("audit").unwrap();   // receives nothing until enabled
//! bus.enable("audit").unwrap();
//! bus.unsubscribe("audit").await.unwrap();
//! assert_eq!(bus.subscribers().len(), 1);
//! # }
//! ```
//!
//! ## Delivery modes
//!
//! An [`Inline`](DeliveryMode::Inline) subscriber runs inside `publish`, in
//! subscription order. An [`Async`](DeliveryMode::Async) one runs in
//! background tasks fed by a bounded queue: when the queue is full,
//! `publish` waits, so no event is dropped and memory stays bounded.
//! [`Bus::shutdown`] returns once every accepted event was handled or
//! dead-lettered.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herald::{handler_fn, Bus, DeliveryMode, Subscriber};
//! use serde_json::json;
//!
//! let bus = Bus::new();
//! bus.subscribe(
//!     Subscriber::new("analytics", handler_fn(|_, _| async { Ok(()) }))
//!         .topic("order.*")
//!         .mode(DeliveryMode::Async)
//!         .queue_capacity(256)
//!         .concurrency(4),
//! ).unwrap();
//! for i in 0..1000 {
//!     bus.publish("order.created", json!({"order_id": i})).await.unwrap();
//! }
//! bus.shutdown().await;
//! assert_eq!(bus.subscriber("analytics").unwrap().handled, 1000);
//! # }
//! ```
//!
//! A handler that never awaits (an in-memory projection, a counter) can be a
//! [`SyncHandler`], subscribed with [`Subscriber::new_sync`]: the bus then
//! calls it directly, without a future or an allocation per delivery.
//!
//! ## Failures, retries and dead letters
//!
//! A failing or panicking subscriber never fails `publish` and never stops
//! the others. Its error says what should happen next (see
//! [`Disposition`]): retry (after a delay, maybe), go to the dead letters
//! now, skip, or stop the subscriber. A [`RetryPolicy`] retries with
//! immediate, fixed or exponential backoff with jitter; when it gives up, the
//! event goes to the dead letters with every attempt's error, to list,
//! retry or discard:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herald::{handler_fn, Bus, DeadLetterQuery, HandlerError, RetryOutcome, RetryPolicy, Subscriber};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let bus = Bus::new();
//! bus.subscribe(
//!     Subscriber::new("invoice", handler_fn(|_, _| async {
//!         Err(HandlerError::retry("billing service unavailable"))
//!     }))
//!     .topic("order.created")
//!     .retry(RetryPolicy::fixed(Duration::from_millis(1), 3)),
//! ).unwrap();
//!
//! bus.publish("order.created", json!({"order_id": 1})).await.unwrap(); // still Ok
//!
//! let letters = bus.dead_letters(&DeadLetterQuery::default()).await.unwrap();
//! assert_eq!(letters[0].attempts, 3);
//! assert_eq!(letters[0].errors.len(), 3);
//! let outcome = bus.retry_dead_letter(letters[0].id).await.unwrap();
//! assert!(matches!(outcome, RetryOutcome::Failed { .. })); // still failing
//! bus.discard_dead_letter(letters[0].id).await.unwrap();
//! # }
//! ```
//!
//! ## Idempotency
//!
//! Delivery is at least once (a retried dead letter, a replay, a broker
//! redelivery), so a subscriber with effects should skip events it already
//! handled. Give it a [`Ledger`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herald::{handler_fn, Bus, MemoryLedger, NewEvent, Subscriber};
//! use serde_json::json;
//! use std::sync::Arc;
//!
//! let bus = Bus::new();
//! bus.subscribe(
//!     Subscriber::new("charge", handler_fn(|_, _| async { Ok(()) }))
//!         .topic("order.created")
//!         .idempotent(Arc::new(MemoryLedger::new())),
//! ).unwrap();
//! let first = bus.publish("order.created", json!({})).await.unwrap();
//! bus.publish_new(NewEvent::new("order.created", json!({})).with_id(first.id())).await.unwrap();
//! assert_eq!(bus.subscriber("charge").unwrap().handled, 2); // the second was a no-op
//! # }
//! ```
//!
//! ## Follow-up events
//!
//! A handler publishes through its [`Context`]; the new event carries the
//! same correlation id, and the triggering event's id as causation id.
//!
//! ## History and durable subscribers
//!
//! Build the bus on an [`EventStore`](store::EventStore) and every published
//! event is appended to it first (to the stream named after its type, or the
//! one given with [`NewEvent::in_stream`]). A [`Durable`](DeliveryMode::Durable)
//! subscriber is fed from the store after a persisted checkpoint: it sees
//! the history, gets every event at least once, keeps each stream's order,
//! resumes after a restart where it left off, and can be replayed. Its
//! retries do not wait in place: an event to retry is scheduled in the
//! store (so its attempts and backoff survive a restart) and holds back
//! only the rest of its own stream, while the other streams' events are
//! delivered meanwhile. [`store::MemoryStore`] is the in-memory backend;
//! `herald-sqlite` and `herald-postgres` are the durable ones.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herald::store::{EventStore, MemoryStore, ReadStream, StreamName};
//! use herald::{handler_fn, Bus, DeliveryMode, NewEvent, ReplayFrom, Subscriber};
//! use serde_json::json;
//! use std::sync::Arc;
//!
//! let store = Arc::new(MemoryStore::new());
//! let bus = Bus::builder().store(Arc::clone(&store)).build();
//! bus.publish_new(NewEvent::new("order.created", json!({"order_id": 42})).in_stream("order-42"))
//!     .await
//!     .unwrap();
//!
//! bus.subscribe(
//!     Subscriber::new("projector", handler_fn(|event, _ctx| async move {
//!         println!("{} at position {:?}", event.event_type(), event.position());
//!         Ok(())
//!     }))
//!     .topic("order.*")
//!     .mode(DeliveryMode::Durable),
//! ).unwrap();
//!
//! let history = store
//!     .read_stream(&StreamName::new("order-42").unwrap(), ReadStream::forward())
//!     .await
//!     .unwrap();
//! assert_eq!(history.len(), 1);
//! bus.replay("projector", ReplayFrom::Beginning).await.unwrap();
//! bus.shutdown().await;
//! # }
//! ```
//!
//! ## Between services: brokers and the relay
//!
//! A bus built with a [`transport::Transport`] ([`BusBuilder::transport`])
//! runs [`Broker`](DeliveryMode::Broker) subscribers on a message broker:
//! the subscriber's name is a consumer group shared by every process that
//! runs it, and its retries and dead letters live on the broker.
//! [`relay::Relay`] forwards a store's committed events to a transport (the
//! outbox across services). `herald-amqp`, `herald-nats` and `herald-kafka`
//! are the RabbitMQ, NATS JetStream and Kafka transports;
//! [`transport::MemoryTransport`] is an in-process one for tests.
//!
//! ## Testing
//!
//! [`testing::Recorder`] captures what a bus published, for assertions.

#![cfg_attr(docsrs, feature(doc_cfg))]

// Lets `#[derive(Event)]` refer to `::herald` inside this crate's own tests.
extern crate self as herald;

mod bus;
mod competing;
mod dead_letter;
mod durable;
mod error;
mod event;
mod handler;
mod id;
mod metrics;
pub mod middleware;
pub mod relay;
pub mod store;
pub mod testing;
pub mod topic;
pub mod transport;

pub use crate::bus::{
    Bus, BusBuilder, DEFAULT_LEASE_TTL, DEFAULT_PARTITIONS, DEFAULT_PREFETCH, DeliveryMode,
    RetryOutcome, Subscriber, SubscriberInfo, SubscriberState,
};
pub use crate::dead_letter::{
    DeadLetter, DeadLetterQuery, DeadLetterStore, MemoryDeadLetterStore, NewDeadLetter,
};
pub use crate::durable::{ReplayFrom, StartFrom};
pub use crate::error::{
    AttemptError, BoxError, ConfigError, DeadLetterError, Disposition, DurableError, ErrorKind,
    HandlerError, HandlerResult, LedgerError, PublishError, SubscribeError, UnknownSubscriber,
};
pub use crate::event::{
    DecodeError, Event, Metadata, NewEvent, Origin, Payload, PayloadError, RecordedEvent,
    RecordedParts, Typed,
};
pub use crate::handler::{
    BoxFuture, BoxHandler, Context, Handler, HandlerFn, SyncAdapter, SyncHandler, TypedFn,
    handler_fn, typed,
};
pub use crate::id::EventId;
pub use crate::middleware::{Ledger, MemoryLedger, RetryPolicy};
pub use crate::topic::{EventType, EventTypeError, PatternError, TopicPattern};
#[cfg(feature = "derive")]
pub use herald_macros::Event;

pub use async_trait::async_trait;

/// The README's examples run as doctests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
