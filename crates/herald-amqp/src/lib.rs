//! RabbitMQ transport for Herald.
//!
//! [`AmqpTransport`] carries events between processes over RabbitMQ (AMQP
//! 0-9-1, with the [`lapin`] client). A [`Bus`](herald::Bus) built with it
//! publishes to the broker, and its
//! [`Broker`](herald::DeliveryMode::Broker) subscribers consume from it,
//! with retries and dead letters kept on the broker too.
//!
//! # What maps to what
//!
//! Every name is under a configurable prefix ([`AmqpConfig::prefix`]), so
//! that applications, and parallel tests, share a vhost.
//!
//! | Herald | RabbitMQ |
//! |---|---|
//! | publish an event | a persistent message to the durable topic exchange `<prefix>.events`, routing key = event type |
//! | event id, type, time | `message_id`, `type`, `timestamp` properties; `content_type` `application/json`; `delivery_mode` 2 |
//! | stream, version, position, recorded-at (exact, as RFC 3339 with every fraction digit), correlation and causation ids | headers `herald-stream`, `herald-version`, `herald-position`, `herald-recorded-at`, `herald-correlation-id`, `herald-causation-id` |
//! | metadata headers | a table in header `herald-headers` |
//! | payload | the message body: the event's JSON data, as is |
//! | subscriber `name` | the durable queue `<prefix>.q.<name>`, shared by every process running it (competing consumers) |
//! | topic patterns `order.*`, `order.#`, `#` | bindings of that queue to the exchange (AMQP's topic rules are Herald's) |
//! | prefetch | `basic.qos` on the consumer's channel |
//! | retry after a delay | a copy in `<prefix>.retry.<name>.<bucket>ms`, a queue with `x-message-ttl` = bucket, dead-lettering to the subscriber's queue; headers `herald-attempt`, `herald-errors` |
//! | dead letters | messages in the durable queue `<prefix>.dead-letters` with headers `herald-dead-letter-id`, `herald-subscriber`, `herald-attempts`, `herald-reason`, `herald-errors` (JSON), `herald-first-failed-at`, `herald-last-failed-at` |
//!
//! Retry delays are rounded *up* to one of a few buckets (50 ms … 1 h,
//! then whole hours), so a subscriber has a handful of retry queues, never
//! one per distinct delay; a retry never comes early. Retry queues carry
//! `x-expires`, so those no longer used vanish by themselves.
//!
//! Topology is declared idempotently: the exchange and the dead-letter
//! queue on connect, a subscriber's queue and bindings when it subscribes
//! (and again after a reconnect), a retry queue before its first use. A
//! second process, or a restart, finds everything in place. Bindings are
//! only added: a pattern dropped from a subscriber stays bound until
//! removed on the broker.
//!
//! # Delivery guarantees
//!
//! - [`publish`](herald::transport::Transport::publish) sends the whole
//!   batch, then awaits every publisher confirm: `Ok` means the broker has
//!   every event. A nack, or a message returned as unroutable where a queue
//!   must take it (a retry, a redelivery, a dead letter), is
//!   [`TransportError::NotConfirmed`](herald::transport::TransportError::NotConfirmed).
//!   An event that no subscriber's queue is bound for is confirmed and
//!   dropped, as an in-process event without subscribers is.
//! - When the connection drops during a publish, the batch is published
//!   again on a new connection (until [`AmqpConfig::reconnect_timeout`]):
//!   an event may reach the broker twice, with the same id, but an `Ok` is
//!   never false. Consumers that must not see a copy use the inbox.
//! - A delivery is acknowledged only once the bus settled it: handled,
//!   retried (the copy confirmed in its retry queue first), or dead-lettered
//!   (the dead letter confirmed first). A crash or a dropped connection
//!   before that makes the broker deliver it again: at least once, never
//!   lost. (A connection lost between a retry's or dead letter's confirm
//!   and the original's ack leaves both: a copy, never a gap.) A message in
//!   a subscriber's queue that is not a Herald event is rejected without
//!   requeue and logged as an error, as no handler could take it.
//! - Consumers and publishers reconnect by themselves with backoff
//!   ([`AmqpConfig::reconnect_min`] doubling up to
//!   [`AmqpConfig::reconnect_max`]), declaring their topology again.
//! - RabbitMQ moves an expired retry copy to the subscriber's queue
//!   without a confirm (classic queues dead-letter at most once): if that
//!   queue was deleted meanwhile, the copy is gone with it.
//!
//! # Ordering
//!
//! RabbitMQ keeps a queue's order, so a subscriber run by one process
//! (one consumer of its queue) sees each stream's events in publish order
//! as long as nothing is retried; the bus keeps a stream on one lane
//! whatever the subscriber's concurrency. With several processes consuming
//! one queue, or once a delivery is retried (it comes back behind later
//! events) or given back, there is no order: subscribers must not depend
//! on it.
//!
//! # Dead letters
//!
//! [`Transport::dead_letters`](herald::transport::Transport::dead_letters)
//! is an [`AmqpDeadLetterStore`] over the broker's dead-letter queue: list,
//! get, remove, record (the same subscriber and event failing again updates
//! its dead letter) and counts, correct under concurrent use from several
//! processes thanks to a lock held on the broker; see its
//! [module docs](dead_letters) for the design and its cost.
//! [`Transport::redeliver`](herald::transport::Transport::redeliver) sends
//! an event to one subscriber's queue only (the default exchange, routing
//! key = the queue), as a first attempt.
//!
//! # Performance
//!
//! On a two-core machine with RabbitMQ 3.10 on loopback, publishing with
//! confirms in batches of 1,000 and consuming to a no-op handler with a
//! prefetch of 256, 100,000 persistent events of about 200 bytes: raw lapin
//! 8,700–9,300 events/s, Herald 8,200–8,800 events/s (medians of two runs
//! of alternating rounds), an overhead of 0–13%, bound by the broker on
//! both sides. Run it with
//! `cargo bench -p herald-amqp --bench amqp`; `BENCHMARKS.md` has the
//! rounds and an analysis.
//!
//! # Examples
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald::{handler_fn, Bus, DeliveryMode, Subscriber};
//! use herald_amqp::{AmqpConfig, AmqpTransport};
//! use serde_json::json;
//! use std::sync::Arc;
//!
//! let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f").prefix("shop");
//! let bus = Bus::builder()
//!     .transport(Arc::new(AmqpTransport::connect(config).await?))
//!     .build();
//! bus.subscribe(
//!     Subscriber::new("mailer", handler_fn(|event, _ctx| async move {
//!         println!("mail about {}", event.data());
//!         Ok(())
//!     }))
//!     .topic("order.*")
//!     .mode(DeliveryMode::Broker),
//! )?;
//! bus.ready("mailer").await?;
//! bus.publish("order.created", json!({"order_id": 42})).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod codec;
mod config;
mod consumer;
pub mod dead_letters;
mod link;
mod transport;

pub use crate::config::{AmqpConfig, DEFAULT_URL};
pub use crate::dead_letters::AmqpDeadLetterStore;
pub use crate::transport::AmqpTransport;

/// The transport's name in logs and errors.
pub(crate) const NAME: &str = "amqp";
