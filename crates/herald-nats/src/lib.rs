//! The NATS JetStream transport for Herald: [`NatsTransport`].
//!
//! A [`Transport`](herald::transport::Transport) on a NATS server with
//! JetStream (2.9 or later): events published by one service reach
//! [`DeliveryMode::Broker`](herald::DeliveryMode::Broker) subscribers in
//! others, through durable pull consumers shared by every process that runs
//! a subscriber; retries and dead letters live on the server.
//!
//! # Examples
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use herald::{handler_fn, Bus, DeliveryMode, Subscriber};
//! use herald_nats::{NatsConfig, NatsTransport};
//! use serde_json::json;
//!
//! let transport = NatsTransport::connect(NatsConfig::new("nats://127.0.0.1:4222").prefix("shop")).await?;
//! let bus = Bus::builder().transport(Arc::new(transport)).build();
//! bus.subscribe(
//!     Subscriber::new("notify-user", handler_fn(|event, _ctx| async move {
//!         println!("order {}", event.data());
//!         Ok(())
//!     }))
//!     .topic("order.*")
//!     .mode(DeliveryMode::Broker),
//! )?;
//! bus.ready("notify-user").await?;
//! bus.publish("order.created", json!({"order_id": 42})).await?;
//! # Ok(()) }
//! ```
//!
//! # What lies on the server
//!
//! Every name is under the configured [prefix](NatsConfig::prefix) (here
//! `shop`), so applications, and parallel tests, keep apart on one server.
//!
//! | thing | name | what it is |
//! |---|---|---|
//! | events stream | `SHOP_EVENTS` | subjects `shop.ev.>` and `shop.rd.>`; file storage; the [duplicate window](NatsConfig::duplicate_window); events kept for [`max_age`](NatsConfig::max_age) |
//! | an event | `shop.ev.<event type>` | payload: the event's JSON data; headers below |
//! | a subscriber's consumers | `<token>__e<hash>` | one durable pull consumer per filter subject (see below), explicit ack, `max_ack_pending` = the subscriber's prefetch, the [ack wait](NatsConfig::ack_wait), delivering what is published after it was first declared |
//! | a subscriber's redeliveries | subject `shop.rd.<token>`, consumer `<token>__rd` | dead letters retried to this subscriber only |
//! | dead-letter stream | `SHOP_DLQ` | subjects `shop.dlq.<token>.<event id>`, one message per subject |
//! | large payloads | object store `SHOP_PAYLOADS` | payloads too large for a message (see below) |
//!
//! `<token>` is the subscriber's name escaped into what NATS names and
//! subject tokens can hold ([`subscriber_token`]): ASCII letters, digits
//! and `-` stay, any other byte becomes `_` and two hex digits (`billing.v2`
//! → `billing_2Ev2`). The escaping is one-to-one and the same in every
//! process; an empty name, or one that escapes to more than 128 bytes, is
//! refused with [`TransportError::InvalidName`](herald::transport::TransportError::InvalidName).
//!
//! Streams and consumers are declared on [`connect`](NatsTransport::connect)
//! and [`subscribe`](herald::transport::Transport::subscribe), get-or-create:
//! a second process, or a restart, finds them. A consumer found with
//! another ack wait or prefetch is updated to this process's values.
//!
//! ## Headers: the envelope
//!
//! An event travels as two headers and its JSON data as the payload, so
//! any NATS client reads the data as it is:
//!
//! ```text
//! Nats-Msg-Id: 0193a1c4-6f3e-7c1a-9d2b-4e5f60718293
//! Herald: 1 t=1764430000123456 s=order-42 v=7 p=1234
//! ```
//!
//! `Nats-Msg-Id` is the event id (the server drops a second publish of it
//! within the duplicate window); the type is the subject's tail; everything
//! else is the `Herald` header, one line of space-separated fields after
//! the format version `1`:
//!
//! | key | value | when |
//! |---|---|---|
//! | `t` | recorded-at, in whole microseconds since the Unix epoch (UTC) | always |
//! | `s` | the stream, escaped | when it has one |
//! | `v`, `p` | its version in the stream, its global position | when it has them |
//! | `c` | the correlation id; `-` for none | unless it is the event id (what the bus and the stores give an event by default) |
//! | `k` | the causation id | when it has one |
//! | `h` | one free metadata header, `key:value`, both escaped | once per header |
//! | `o` | `stream:version` where a linked event was first appended, the stream escaped | for an event read through a link |
//! | `i`, `y` | the event id, the event type | on redeliveries (their subject is the subscriber's, and they are not deduplicated) |
//! | `x` | the object holding the payload, escaped | for a payload too large for a message |
//!
//! Escaped is percent-encoded: `%`, `:`, space and every byte outside
//! printable ASCII become `%` and two hex digits (`a b:ü` → `a%20b%3A%C3%BC`),
//! so a stream name or a metadata value may hold anything, line breaks
//! included, and the header stays one printable line. Decoding is strict: a
//! missing header, another format version, an unknown or repeated key, a
//! bad number, UUID or escape, or a payload that is not JSON is
//! [`TransportError::Malformed`](herald::transport::TransportError::Malformed)
//! saying which, and the consumer terminates that message (it would fail
//! the same way again). [`headers`] has the names.
//!
//! Why one header, not one per field: the server stores and sends every
//! header byte, and the client parses each header into its own map entry on
//! every message. One header per field (ten names, about 250 bytes with
//! RFC 3339 times and JSON metadata) cost 45–60% of the throughput of bare
//! async-nats; this envelope is about 50 bytes for a usual event. The
//! envelope could also ride in the payload, as a first line before the
//! JSON; measured, that was no faster (the same server and client CPU time
//! within noise), and the payload would no longer be plain JSON to other
//! clients, so it stays a header.
//!
//! # Topic patterns and filter subjects
//!
//! Herald's `*` is NATS's `*`; `#` at the end maps to `>`, except that `#`
//! also matches nothing, so `order.#` takes two filters, `order` and
//! `order.>`; `#` alone is `>`. A `#` in the middle (`a.#.z`) has no NATS
//! form: the consumer filters on the widest subject before it (`a.>`) and
//! acknowledges, without handing them to the handler, the events the
//! pattern does not match.
//!
//! NATS 2.9 gives a consumer one filter subject. A subscriber therefore
//! gets **one durable consumer per filter subject** ([`subscriber_filters`]:
//! the patterns' filters, less those another one covers, sorted). An event
//! under two of them (`order.*` and `*.created` both take `order.created`)
//! is delivered to both consumers; only the first filter in that sorted
//! order that matches hands it to the handler, the other acknowledges it
//! unseen, so it is handled once. Past eight filters a subscriber takes a
//! single consumer on `shop.ev.>` and matches on the client instead, since
//! each consumer costs a pull loop and heartbeats. All of a subscriber's
//! consumers, and its redelivery consumer, are merged into the one
//! [`Consumer`](herald::transport::Consumer) the bus pulls from.
//!
//! Consumer names hash the filter subject, so a subscriber whose patterns
//! change gets new consumers, which receive what is published from then
//! on; the consumers of patterns it no longer has stay on the server until
//! deleted (`nats consumer rm`), holding their backlog.
//!
//! # Delivery guarantees
//!
//! - [`publish`](herald::transport::Transport::publish) sends a batch
//!   whole, then awaits every publish ack: `Ok` means JetStream stored each
//!   event. A publish cut by a dropped connection fails
//!   ([`TransportError::NotConfirmed`](herald::transport::TransportError::NotConfirmed)),
//!   it never returns a false `Ok`; publish it again, and the duplicate
//!   window drops the copy if the first one was stored after all.
//! - A delivery is acknowledged only once the bus settled it: handled,
//!   skipped, or written to the dead letters. A process that dies first
//!   leaves it unacknowledged, and the server delivers it again after the
//!   ack wait, to any process of the group: at least once, never lost. A
//!   delivery dropped unsettled inside a live process is given back at once
//!   (a nak).
//! - The attempt number is JetStream's delivered count.
//! - A retry is a nak with the retry policy's delay; the server delivers it
//!   again after it. A nak carries no body, so the errors of earlier
//!   attempts do not travel with it: a dead letter has the attempt count
//!   and the last error (the bus's `Delivery::errors` is empty here).
//! - Giving up writes the dead letter to `SHOP_DLQ`, then acknowledges.
//!   If the dead letter cannot be written the message is given back after
//!   the ack wait, not lost.
//! - Releasing (a handler asking to stop) is a nak without delay.
//! - The async-nats client reconnects by itself, and a pull loop issues
//!   its request again on the new connection. A consumer whose pull fails
//!   (three heartbeats missed in a row, a deleted consumer) ends with an
//!   error, and the bus opens a new one, which declares and pulls again;
//!   what the old one had pulled and not handed on comes back after the
//!   ack wait.
//!   [`close`](herald::transport::Transport::close) drains the connection:
//!   unsettled deliveries come back after the ack wait.
//!
//! # Ordering
//!
//! One consumer delivers its filter's events in stream order, and the bus
//! keeps one stream's events in one lane. So a subscriber whose patterns
//! map to one filter subject, running in one process, handles each
//! stream's events in publish order, as long as nothing is retried (a nak
//! puts an event behind later ones). Order is not kept across the
//! consumers of a subscriber with several filter subjects (an `order` and
//! an `order.created` of one stream may swap under `order.#`), nor across
//! processes sharing a group, nor for redeliveries.
//!
//! # Dead letters
//!
//! [`NatsDeadLetters`] keeps one message per subscriber and event, whose
//! payload is the dead letter as JSON (event included) and whose headers
//! are `Herald-Dead-Letter-Id`, `Herald-Subscriber`, `Herald-Attempts`,
//! `Herald-Last-Error`, `Herald-Errors` (every error, JSON) and
//! `Herald-First-Failed-At`. The stream keeps one message per subject, so
//! the same event failing again for the same subscriber replaces it: the
//! previous one is read first, the attempts added, the errors appended, its
//! id and first failure time kept; the write states the sequence it read
//! (`Nats-Expected-Last-Subject-Sequence`) and reads again if another
//! process wrote in between. Listing passes over the stream with a
//! short-lived consumer and sorts by first failure on the client.
//!
//! A dead letter retried through the bus is published to the subscriber's
//! redelivery subject, reaches that group only, as attempt 1.
//!
//! # Large messages
//!
//! The server refuses a message (payload and headers) above its
//! `max_payload`, 1 MiB by default, so an event of 1 MiB does not fit with
//! its headers. Such a payload goes to the object store bucket
//! `<PREFIX>_PAYLOADS` (created when first needed, its objects kept for
//! [`max_age`](NatsConfig::max_age)) under the event id, and the message
//! carries the headers with an empty payload and the object's name in its
//! envelope (`x=<event id>`); the consumer fetches the data before
//! handing the event on (a fetch that fails gives the message back after
//! the ack wait). Only an event whose *headers* alone exceed the limit is
//! refused, before anything of its batch is sent:
//! [`TransportError::Broker`](herald::transport::TransportError::Broker)
//! whose source is a [`PayloadTooLarge`] naming the event, the size and the
//! limit.
//!
//! A dead letter is one message holding the event and its errors as JSON;
//! one too large for a message goes to the same bucket (under a name of
//! its own write), and its message carries the name. Removing or replacing
//! the dead letter deletes the object.
//!
//! # Capabilities
//!
//! | capability | |
//! |---|---|
//! | competing consumers | yes: a durable consumer per filter, shared by name |
//! | at least once, ack after the handler | yes |
//! | delayed retries on the broker | yes: nak with delay |
//! | earlier attempts' errors on a retried message | no: the count and the last error |
//! | dead letters on the broker | yes: `<PREFIX>_DLQ` |
//! | per-stream order | with one filter subject, one process, no retries |
//! | deduplication of a re-publish | yes, within the duplicate window |
//! | server versions | 2.9 and later (one filter subject per consumer) |
//!
//! # Performance
//!
//! `cargo bench -p herald-nats --bench nats` publishes 100,000 events of
//! about 200 bytes with acks, in batches of 1,000, and consumes them to a
//! no-op handler, for raw async-nats and for Herald in the same run. On the
//! two-core development machine, shared with other builds, five runs put
//! Herald 3.8–20.6% behind bare raw async-nats (53,000–77,000 events/s
//! raw), 15.7% by their median: within the 20% target, at its edge on the
//! quietest runs. Single rounds swing far more with the load. With one
//! header per field Herald was 45–60% behind, nearly all of it the
//! headers; now raw async-nats carrying Herald's two headers runs about as
//! fast as bare raw (within the noise), and the rest, 9–19% behind raw with
//! the same headers, is Herald's own path, most likely the bus's latency
//! from delivery to ack (the transport's CPU time per event is within a
//! microsecond of raw's). The repository's `BENCHMARKS.md`, section "NATS
//! JetStream transport", has the figures.
//!
#![warn(missing_docs)]

mod codec;
mod config;
mod dead_letters;
mod names;
mod payloads;
mod transport;

pub use crate::config::NatsConfig;
pub use crate::dead_letters::NatsDeadLetters;
pub use crate::names::{
    MAX_FILTERS, pattern_filters, sanitize_prefix, subscriber_filters, subscriber_token,
};
pub use crate::transport::{NatsTransport, PayloadTooLarge};

/// The transport's name in logs and errors.
const NAME: &str = "nats";

/// Header names: how an event's fields and a dead letter's travel.
pub mod headers {
    pub use crate::codec::{ENVELOPE, ENVELOPE_VERSION, MSG_ID, PAYLOAD_OBJECT};
    pub use crate::dead_letters::{
        ATTEMPTS, DEAD_LETTER_ID, ERRORS, FIRST_FAILED_AT, LAST_ERROR, SUBSCRIBER,
    };
}

#[doc(hidden)]
pub use crate::codec::{decode_event, event_headers};
