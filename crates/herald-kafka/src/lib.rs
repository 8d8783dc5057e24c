//! Kafka transport for Herald: broker subscribers on a Kafka cluster.
//!
//! [`KafkaTransport`] implements [`herald::transport::Transport`] with the
//! [`rdkafka`] crate (librdkafka). A [`Bus`](herald::Bus) built with it
//! publishes events to topics, and runs each
//! [`Broker`](herald::DeliveryMode::Broker) subscriber as a member of a
//! consumer group, in every process that subscribes it.
//!
//! # Topics
//!
//! Every name starts with the configured prefix ([`KafkaConfig::prefix`],
//! `herald` by default), so applications and parallel tests share a
//! cluster without meeting:
//!
//! | what | name |
//! |---|---|
//! | events, [`TopicMapping::PerType`] (default) | `<prefix>.<event type>`: `herald.order.created` |
//! | events, [`TopicMapping::PerCategory`] | `<prefix>.<first segment>`: `herald.order`, type in a header |
//! | events, [`TopicMapping::Single`] | `<prefix>.events`, type in a header |
//! | a subscriber's retries | `<prefix>-retry.<subscriber>` |
//! | dead letters | `<prefix>-dlq` (one partition, `cleanup.policy=compact`) |
//! | a subscriber's consumer group | `<prefix>.<subscriber>` |
//!
//! The retry and dead-letter topics hang off `<prefix>-`, not `<prefix>.`,
//! so that no event pattern (not even `#`) matches them; librdkafka's
//! regular expressions have no look-ahead to exclude them otherwise.
//! Topics are created through the admin API when first needed (publishing
//! to a type, subscribing), idempotently, with [`KafkaConfig::partitions`]
//! partitions.
//!
//! # Messages
//!
//! The key is the event's stream (its id when it has none), so that one
//! stream's events land in one partition, in order. The value is the
//! event's JSON data. Headers carry the rest as UTF-8 text: `herald-id`,
//! `herald-type`, `herald-stream`, `herald-version`, `herald-position`,
//! `herald-recorded-at` (microseconds since the epoch),
//! `herald-correlation-id`, `herald-causation-id`, `herald-origin` (JSON,
//! for linked events) and one `herald-meta-<name>` per metadata header. A
//! retry adds `herald-attempt`, `herald-not-before` (milliseconds since the
//! epoch) and `herald-errors` (JSON).
//!
//! # Delivery guarantees
//!
//! - Publishing: an idempotent producer with `acks=all`. `publish` hands
//!   every event of the batch to the producer, then waits for every
//!   acknowledgement; `Ok` means the broker has all of them. A failed
//!   publish may have stored some: publishing again is safe for consumers
//!   that drop duplicates by event id (the idempotency layer).
//! - Consuming: at least once. Offsets are stored only once an event is
//!   settled (handled, retried onto the retry topic, or dead-lettered), and
//!   only up to the contiguous settled prefix of each partition: the bus
//!   settles out of order across streams, and an offset past an unsettled
//!   event would lose it in a crash. librdkafka commits what is stored
//!   every half second, when a partition is taken away, and on close.
//! - Rebalances (the `range` assignor: each topic's partitions are split
//!   among its members): a member losing partitions waits up to
//!   [`KafkaConfig::revoke_drain`] for what it handed out from them to be
//!   settled, commits the contiguous prefix, and drops the rest of what it
//!   read, which the new owner reads again. `subscribe` returns once the
//!   member holds partitions (at most 10 s), so a second process takes its
//!   share before it goes on.
//! - A new group reads topics from their start (`auto.offset.reset =
//!   earliest`); with topics created on first publish, that is every event
//!   published to them.
//!
//! # Ordering
//!
//! One stream is in one partition, a partition is read by one member at a
//! time in order, and the bus runs one stream's events one after another:
//! each stream's events are handled in publish order, until one is retried
//! (a retry goes through the retry topic, after the stream's later events).
//!
//! Across partitions Kafka promises no order. A consumer merges what it
//! fetched together by publish time, and gathers for
//! [`KafkaConfig::assignment_gather`] what newly assigned partitions bring,
//! but events of different streams (or topics) may still be handled in
//! another order than they were published. An application that needs one
//! order for everything uses [`TopicMapping::Single`] with one partition.
//! With a topic per type, a topic made after a group subscribed is found
//! only at the next metadata refresh: its first events may come after
//! events published later to topics the group already reads.
//!
//! # Patterns
//!
//! A subscriber's patterns become regular-expression subscriptions:
//! `order.*` is `^<prefix>\.order\.[^.]+$`, `order.#` is
//! `^<prefix>\.order(\.[^.]+)*$`. A topic created after the group
//! subscribed is found at the next metadata refresh
//! ([`KafkaConfig::metadata_refresh`], 5 s by default) and then assigned in
//! one rebalance (0.2–0.5 s on tansu), and read from its start. With
//! [`TopicMapping::PerCategory`] a pattern subscribes to its category's
//! topic (`^<prefix>\.order$`), with [`TopicMapping::Single`] to the one
//! topic; the consumer then skips the types the patterns do not match.
//!
//! # Retries
//!
//! [`Acker::retry`](herald::transport::Acker::retry) publishes the event to
//! the subscriber's retry topic with its attempt, its errors and a
//! not-before time, then counts as settled: a failing event does not hold
//! its partition back. Every member also consumes its retry topic; a
//! message whose time has not come is held in a queue of its partition
//! until its time (the polling thread's wait for messages ends at the
//! earliest such time: no busy loop, no sleeping past it), and the
//! partition's later messages wait behind it, so a later retry in the same
//! partition waits behind an earlier one. Partitions are not paused for it:
//! resuming paused partitions lost fetched messages with librdkafka 2.12
//! against tansu.
//! [`Transport::redeliver`](herald::transport::Transport::redeliver)
//! (retrying a dead letter) writes to the same topic with attempt 1 and no
//! delay.
//! [`Acker::release`](herald::transport::Acker::release) keeps the offset
//! uncommitted and hands the event out again from a local queue.
//!
//! # Dead letters
//!
//! [`KafkaDeadLetters`], on the dead-letter topic: every record is the full
//! state of one dead letter keyed by its id (headers: subscriber, event id
//! and type, attempts, last error, all errors as JSON); a removal is a
//! tombstone. Each operation reads the topic up to its end first, so every
//! process sees the others' changes. On a broker that compacts, the topic
//! keeps one record per dead letter; tansu 0.6 with its memory engine does
//! not compact, so there the topic grows by one record per change.
//!
//! # Reconnection and closing
//!
//! librdkafka reconnects by itself, re-resolves regex subscriptions and
//! rejoins groups; a publish that cannot be acknowledged within
//! [`KafkaConfig::publish_timeout`] fails with
//! [`TransportError::NotConfirmed`](herald::transport::TransportError::NotConfirmed).
//! A topic the broker lost is created again on the next publish.
//! [`Transport::close`](herald::transport::Transport::close) makes every consumer commit its settled offsets and
//! leave its group, and fails later calls.
//!
//! # Configuration
//!
//! [`KafkaConfig`]: brokers, prefix, mapping, partitions, replication,
//! metadata refresh, publish timeout, revoke drain, and any librdkafka
//! setting for the producer or consumers.
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use herald::{handler_fn, Bus, DeliveryMode, Subscriber};
//! use herald_kafka::{KafkaConfig, KafkaTransport};
//! use std::sync::Arc;
//!
//! let transport = KafkaTransport::connect(KafkaConfig::new("127.0.0.1:9092").prefix("shop")).await?;
//! let bus = Bus::builder().transport(Arc::new(transport)).build();
//! bus.subscribe(
//!     Subscriber::new("mailer", handler_fn(|event, _ctx| async move {
//!         println!("{}", event.event_type());
//!         Ok(())
//!     }))
//!     .topic("order.*")
//!     .mode(DeliveryMode::Broker),
//! )?;
//! bus.publish("order.created", serde_json::json!({"order_id": 7})).await?;
//! # Ok(()) }
//! ```
//!
//! # Why rdkafka
//!
//! librdkafka is the client most Kafka clients outside the JVM are built
//! on, and it is maintained alongside Kafka's protocol: idempotent
//! production, consumer groups with every assignor, regex subscriptions
//! that follow new topics, offsets stored apart from commits, pausing
//! partitions, reconnection. The pure-Rust clients cover less of this
//! (consumer groups and idempotence in particular). The cost is a C build
//! (the `cmake-build` feature; it needs `cmake` and libcurl's headers) and
//! a polling thread per consumer, so that rebalance callbacks, which may
//! wait for deliveries to settle, never block the async runtime.
//!
//! # Tested against
//!
//! tansu 0.6 (a Kafka-protocol broker written in Rust), not Apache Kafka;
//! `.ci/kafka` builds and starts it. tansu has no transactions (this crate
//! uses none) and its memory engine skips the rest of a producer batch
//! when a consumer resumes from an offset in its middle, which the tests
//! avoid by producing one message per batch.

mod codec;
mod config;
mod consumer;
mod dead_letters;
mod topics;
mod transport;

pub use crate::config::{KafkaConfig, TopicMapping};
pub use crate::dead_letters::KafkaDeadLetters;
pub use crate::transport::KafkaTransport;

/// The transport's name in logs and errors.
const NAME: &str = "kafka";
