//! The outbox relay: forwards committed events from an event store to a
//! message broker.
//!
//! A service appends its events to its own store, in the same transaction as
//! its business data (the outbox). A [`Relay`] reads them from the store's
//! global log after a persisted checkpoint and publishes them to a
//! [`Transport`], so that other services receive them from the broker.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald::relay::Relay;
//! use herald::store::{EventStore, ExpectedVersion, MemoryStore, StreamName};
//! use herald::transport::{ConsumerSpec, MemoryTransport, Transport};
//! use herald::{NewEvent, TopicPattern};
//! use serde_json::json;
//! use std::sync::Arc;
//!
//! let store = Arc::new(MemoryStore::new());
//! let broker = Arc::new(MemoryTransport::new());
//! // Another service's consumer group, declared before anything is sent.
//! let mut billing = broker
//!     .subscribe(&ConsumerSpec::new("billing", vec![TopicPattern::parse("order.*")?]))
//!     .await?;
//!
//! let relay = Relay::builder("orders", Arc::clone(&store), broker.clone())
//!     .topic("order.#")
//!     .batch_size(100)
//!     .spawn()?;
//!
//! let appended = store
//!     .append(
//!         &StreamName::new("order-42")?,
//!         ExpectedVersion::NoStream,
//!         vec![NewEvent::new("order.created", json!({"order_id": 42}))],
//!     )
//!     .await?;
//! relay.wait_forwarded(appended.events[0].position).await;
//!
//! let delivery = billing.next().await?;
//! assert_eq!(delivery.event().event_type(), "order.created");
//! delivery.ack().await?;
//! assert_eq!(relay.lag().await?, 0);
//! relay.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! The relay runs the loop of a durable subscriber (see
//! [`DeliveryMode::Durable`](crate::DeliveryMode::Durable)): it reads the
//! store's head, then a batch of at most
//! [`batch_size`](RelayBuilder::batch_size) events after its checkpoint
//! (filtered by its topic patterns in the store), publishes the whole batch
//! with **one** [`Transport::publish`] call (so the broker's confirms are
//! pipelined), and saves the checkpoint only once that call returned `Ok`,
//! that is once the broker confirmed every event. It wakes at once when the
//! store's head moves ([`EventStore::watch_head`]) and polls every
//! [`poll_interval`](RelayBuilder::poll_interval) otherwise.
//!
//! A publish that fails is logged and the *same* batch is read and published
//! again, after a backoff that grows from 100 ms to 5 s; the checkpoint
//! never moves past an event the broker did not confirm.
//!
//! # Delivery guarantees
//!
//! - **At least once.** No event the store committed is skipped: the relay
//!   reads the log the same way durable subscribers do, so it relies on the
//!   store's promise that the log is never read with a hole that fills later
//!   (PostgreSQL's concurrent writers that commit out of position order
//!   included). Events can reach the broker more than once: a batch whose
//!   publish failed half-way, or that was confirmed just before a crash, is
//!   published again.
//! - **Per-stream order.** Events are published in position order, so the
//!   events of one stream reach the broker in stream order. A batch
//!   published again repeats it from its start, in order: a consumer may see
//!   `1 2 3 1 2 3 4`, never `1 3 2`.
//! - **Duplicates** carry the same event id. On NATS JetStream the id is the
//!   message id, so the stream's duplicate window drops a copy published
//!   within it; on RabbitMQ the consumer's inbox (or
//!   [`Subscriber::idempotent`](crate::Subscriber::idempotent)) skips an
//!   event it handled already. [`MemoryTransport`](crate::transport::MemoryTransport)
//!   keeps copies.
//!
//! # Crashes
//!
//! | the relay dies … | after a restart (or a takeover) |
//! |---|---|
//! | before publishing a batch | the batch is read and published once |
//! | during the publish, some events confirmed | the whole batch is published again: the confirmed ones twice |
//! | after the confirms, before the checkpoint save | the whole batch is published again |
//! | after the checkpoint save | the next batch: nothing repeated |
//!
//! So at most one batch (the one in flight) is published twice per crash,
//! and nothing is lost. [`Relay::stop`] is the graceful way out: it lets the
//! batch in flight be confirmed and saved (waiting at most [`STOP_GRACE`]
//! for a broker that does not answer, then leaving that batch to the next
//! relay), so a stop and a restart repeat nothing in the usual case.
//!
//! # Checkpoint
//!
//! The checkpoint is the position up to which every matching event was
//! confirmed by the broker. It lives in the store's
//! [`CheckpointStore`] under the name `$relay:<relay name>`
//! ([`checkpoint_name`]). A bus refuses subscribers whose name starts with
//! `$relay:` ([`SubscribeError::ReservedName`](crate::SubscribeError::ReservedName)),
//! so a relay's checkpoint never collides with a subscriber's. To relay the
//! history again, reset that checkpoint while the relay is stopped.
//!
//! # Single active relay
//!
//! Several processes may run the same relay for availability. Give them a
//! shared [`LeaseStore`] ([`RelayBuilder::lease_store`]): the relay then
//! competes for the single partition of the group `$relay:<relay name>`,
//! the way competing durable subscribers do. Only the holder of the lease
//! relays; the others renew their membership every third of the
//! [`lease TTL`](RelayBuilder::lease_ttl) and take the lease over once it
//! expired, so within about the TTL (plus a third) after the holder died. A
//! holder stops publishing a tenth of the TTL before its lease could expire
//! when it cannot renew it, and its checkpoint saves are fenced by the lease
//! store: a relay that lost its lease cannot move the checkpoint, back or
//! forward. In this mode the checkpoint is the partition's, kept in the
//! lease store (not in the [`CheckpointStore`]).
//!
//! Without a lease store, every process that runs the relay publishes
//! everything: run one, or use a lease store.
//!
//! # Metrics
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `herald_relay_forwarded_total` | counter | `relay` | events the broker confirmed (a republished event counts again) |
//! | `herald_relay_lag` | gauge | `relay` | events between the store's head, as last read, and the checkpoint |
//! | `herald_relay_publish_failures_total` | counter | `relay` | failed publish calls (each is retried) |

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::bus::DEFAULT_LEASE_TTL;
use crate::competing::GroupSettings;
use crate::durable::{
    Batch, Deliver, DurableRunner, DurableSettings, Fence, Held, Settled, StartFrom,
};
use crate::error::AttemptError;
use crate::error::ConfigError;
use crate::event::RecordedEvent;
use crate::store::{CheckpointStore, EventStore, LeaseStore, StoreError};
use crate::topic::{PatternError, TopicPattern};
use crate::transport::Transport;

/// What starts the name under which a relay keeps its checkpoint (and its
/// lease group); reserved: subscribers cannot take such a name.
pub const CHECKPOINT_PREFIX: &str = "$relay:";

/// The longest relay name, in bytes: with [`CHECKPOINT_PREFIX`], its
/// checkpoint name fits the 255 bytes of a subscriber name.
pub const MAX_NAME_LEN: usize = 255 - CHECKPOINT_PREFIX.len();

/// How many events a relay reads and publishes at once unless told.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// How often a relay looks at the store when the store cannot wake it.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest lease TTL a relay accepts: it renews every third of it.
const MIN_LEASE_TTL: Duration = Duration::from_millis(30);

/// How long a stopping relay waits for the broker to confirm the batch in
/// flight before it gives the batch up (to be published again by the next
/// relay), so that a broker that never answers cannot hold a shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The name under which relay `relay` keeps its checkpoint in the
/// [`CheckpointStore`] (and its lease group in a [`LeaseStore`]).
///
/// # Examples
///
/// ```
/// assert_eq!(herald::relay::checkpoint_name("orders"), "$relay:orders");
/// ```
pub fn checkpoint_name(relay: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{relay}")
}

/// A relay could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay's name is empty or too long.
    #[error("invalid relay name {0:?}: it must be 1 to {MAX_NAME_LEN} bytes")]
    InvalidName(String),
    /// A topic pattern is invalid.
    #[error(transparent)]
    InvalidPattern(#[from] PatternError),
    /// A setting is out of range (a zero batch size, say).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// [`RelayBuilder::spawn`] was called outside a tokio runtime.
    #[error("relay {0} must be spawned from within a tokio runtime")]
    NoRuntime(String),
}

/// A running relay; see the [module docs](self).
///
/// Dropping it asks the relay to stop after its current batch, without
/// waiting; [`stop`](Self::stop) waits.
pub struct Relay {
    name: String,
    runner: DurableRunner,
    forwarder: Arc<Forwarder>,
    store: Arc<dyn EventStore>,
    /// Tells a publish in flight that the relay is stopping.
    halt: watch::Sender<bool>,
}

impl Relay {
    /// A builder for the relay `name`, from `store` (its events and its
    /// checkpoint) to `transport`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herald::relay::Relay;
    /// use herald::store::MemoryStore;
    /// use herald::transport::MemoryTransport;
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let relay = Relay::builder("orders", Arc::clone(&store), Arc::new(MemoryTransport::new()))
    ///     .topic("order.#")
    ///     .topic("payment.settled")
    ///     .batch_size(1000)
    ///     .lease_store(store)
    ///     .lease_ttl(Duration::from_secs(5))
    ///     .spawn()
    ///     .unwrap();
    /// relay.stop().await;
    /// # }
    /// ```
    pub fn builder<S>(
        name: impl Into<String>,
        store: Arc<S>,
        transport: Arc<dyn Transport>,
    ) -> RelayBuilder
    where
        S: EventStore + CheckpointStore,
    {
        RelayBuilder {
            name: name.into(),
            store: Arc::clone(&store) as Arc<dyn EventStore>,
            checkpoints: store,
            transport,
            topics: Vec::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            start_from: StartFrom::Beginning,
            leases: None,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }

    /// The relay's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The position up to which this process has forwarded every matching
    /// event, confirmed by the broker (0 before its first batch). The saved
    /// checkpoint follows right after; see [`checkpoint`](Self::checkpoint).
    pub fn forwarded(&self) -> u64 {
        *self.forwarder.forwarded.borrow()
    }

    /// Waits until this process has forwarded every matching event up to
    /// `position` (see [`forwarded`](Self::forwarded)). A relay waiting for
    /// the lease forwards nothing, so wrap the wait in a timeout where that
    /// can happen.
    pub async fn wait_forwarded(&self, position: u64) {
        let mut rx = self.forwarder.forwarded.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|p| *p >= position).await;
    }

    /// The saved checkpoint: the position up to which every matching event
    /// was confirmed by the broker. With a lease store it is read from
    /// there (whoever holds the lease saved it); without, it is the last one
    /// this relay saved or loaded.
    ///
    /// # Errors
    ///
    /// The store's, when it cannot be read.
    pub async fn checkpoint(&self) -> Result<u64, StoreError> {
        self.runner.current_checkpoint().await
    }

    /// How many positions the checkpoint is behind the store's head (events
    /// that the topic filter leaves out included).
    ///
    /// # Errors
    ///
    /// The store's, when the head or the checkpoint cannot be read.
    pub async fn lag(&self) -> Result<u64, StoreError> {
        let head = self.store.head().await?;
        Ok(head.saturating_sub(self.checkpoint().await?))
    }

    /// Whether this process relays now: always without a lease store; with
    /// one, while it holds the lease.
    pub fn is_active(&self) -> bool {
        self.runner
            .owned_partitions()
            .is_none_or(|owned| owned.contains(&0))
    }

    /// Stops the relay after its current batch, gives its lease back, and
    /// waits for all that. The batch in flight is confirmed and saved, or,
    /// when the broker fails it or has not confirmed it within
    /// [`STOP_GRACE`], given up: the next relay publishes it again. Calling
    /// it again returns at once; the accessors keep answering with the last
    /// values.
    pub async fn stop(&self) {
        self.halt.send_replace(true);
        self.runner.stop().await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.halt.send_replace(true);
        self.runner.ask_to_stop();
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("forwarded", &self.forwarded())
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Relay`]; made by [`Relay::builder`].
#[must_use = "a relay builder does nothing until spawned"]
pub struct RelayBuilder {
    name: String,
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    transport: Arc<dyn Transport>,
    topics: Vec<String>,
    batch_size: usize,
    poll_interval: Duration,
    start_from: StartFrom,
    leases: Option<Arc<dyn LeaseStore>>,
    lease_ttl: Duration,
}

impl RelayBuilder {
    /// Forwards only events whose type matches `pattern` (or another
    /// pattern added); everything when none is added. Patterns follow the
    /// [`TopicPattern`] rules; a bad one fails [`spawn`](Self::spawn).
    pub fn topic(mut self, pattern: impl Into<String>) -> Self {
        self.topics.push(pattern.into());
        self
    }

    /// Reads and publishes at most `size` events at once
    /// ([`DEFAULT_BATCH_SIZE`] unless set): bigger batches pipeline more
    /// confirms, and repeat more after a crash.
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// How often to look at the store when its head watch does not wake
    /// the relay (another process appended, on a store that cannot tell);
    /// [`DEFAULT_POLL_INTERVAL`] unless set.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Where a relay without a checkpoint starts: the first event in the
    /// store (the default), or the events appended from now on.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }

    /// Runs in single-active mode: only the process holding the relay's
    /// lease in `leases` relays (see the [module docs](self#single-active-relay)).
    pub fn lease_store(mut self, leases: Arc<dyn LeaseStore>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// How long the lease lasts without renewal, with a lease store
    /// ([`DEFAULT_LEASE_TTL`] unless set): a
    /// standby takes over within about this after the active relay died.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Checks the settings and starts the relay on the current tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`RelayError`] saying which setting is wrong, or that no runtime is
    /// running.
    pub fn spawn(self) -> Result<Relay, RelayError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(RelayError::InvalidName(self.name));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::Zero("relay batch size").into());
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::Zero("relay poll interval").into());
        }
        if self.leases.is_some() && self.lease_ttl < MIN_LEASE_TTL {
            return Err(ConfigError::OutOfRange {
                name: "relay lease TTL (seconds)",
                value: self.lease_ttl.as_secs_f64(),
                min: MIN_LEASE_TTL.as_secs_f64(),
                max: f64::MAX,
            }
            .into());
        }
        let mut topics = self
            .topics
            .iter()
            .map(|t| TopicPattern::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        // `#` matches every type: reading unfiltered is the same, and cheaper.
        if topics.iter().any(|t| t.as_str() == "#") {
            topics.clear();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(RelayError::NoRuntime(self.name));
        };
        let key = checkpoint_name(&self.name);
        let (forwarded, _) = watch::channel(0);
        let (halt, halted) = watch::channel(false);
        let forwarder = Arc::new(Forwarder {
            key,
            relay: self.name.clone(),
            transport: self.transport,
            forwarded,
            failures: AtomicU32::new(0),
            halted,
        });
        let settings = DurableSettings {
            topics,
            batch_size: self.batch_size,
            concurrency: 1,
            poll_interval: self.poll_interval,
            start_from: self.start_from,
            group: self.leases.map(|leases| {
                (
                    GroupSettings {
                        partitions: 1,
                        ttl: self.lease_ttl,
                    },
                    leases,
                )
            }),
            // The relay never schedules a retry: a batch that failed to
            // publish is read and published again.
            retries: None,
        };
        tracing::info!(relay = %self.name, transport = forwarder.transport.name(), batch_size = self.batch_size, single_active = settings.group.is_some(), "relay starting");
        let runner = DurableRunner::spawn(
            &runtime,
            Arc::clone(&forwarder),
            Arc::clone(&self.store),
            self.checkpoints,
            settings,
        );
        Ok(Relay {
            name: self.name,
            runner,
            forwarder,
            store: self.store,
            halt,
        })
    }
}

/// Publishes the batches the durable loop reads.
struct Forwarder {
    /// The checkpoint (and lease group) name.
    key: String,
    relay: String,
    transport: Arc<dyn Transport>,
    /// Up to where this process forwarded everything; only moves forward.
    forwarded: watch::Sender<u64>,
    /// Publish failures in a row, for the logs.
    failures: AtomicU32,
    /// Set once the relay is asked to stop.
    halted: watch::Receiver<bool>,
}

impl Forwarder {
    fn advance(&self, last: u64, head: u64) {
        self.forwarded.send_if_modified(|p| {
            let moved = last > *p;
            if moved {
                *p = last;
            }
            moved
        });
        // A gauge holds an f64; positions stay far below 2^53.
        metrics::gauge!("herald_relay_lag", "relay" => self.relay.clone())
            .set(head.saturating_sub(last) as f64);
    }

    async fn publish(&self, events: &[RecordedEvent]) -> bool {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return true;
        };
        let mut halted = self.halted.clone();
        let given_up = async {
            let _ = halted.wait_for(|h| *h).await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        let outcome = tokio::select! {
            outcome = self.transport.publish(events) => outcome,
            () = given_up => {
                tracing::warn!(
                    relay = %self.relay,
                    transport = self.transport.name(),
                    events = events.len(),
                    first_position = first.position(),
                    grace = ?STOP_GRACE,
                    "relay stopping: the broker did not confirm the batch in time; it will be published again"
                );
                return false;
            }
        };
        match outcome {
            Ok(()) => {
                let failures = self.failures.swap(0, Ordering::Relaxed);
                if failures > 0 {
                    tracing::info!(relay = %self.relay, failures, "relay publishes again");
                }
                metrics::counter!("herald_relay_forwarded_total", "relay" => self.relay.clone())
                    .increment(events.len() as u64);
                true
            }
            Err(err) => {
                let attempt = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!("herald_relay_publish_failures_total", "relay" => self.relay.clone())
                    .increment(1);
                tracing::error!(
                    relay = %self.relay,
                    transport = self.transport.name(),
                    error = %err,
                    attempt,
                    events = events.len(),
                    first_position = first.position(),
                    last_position = last.position(),
                    first_event_id = %first.id(),
                    "relay could not publish a batch; it will publish it again"
                );
                false
            }
        }
    }
}

impl Deliver for Forwarder {
    fn name(&self) -> &str {
        &self.key
    }

    fn is_enabled(&self) -> bool {
        true
    }

    async fn refresh_enabled(&self) -> bool {
        true
    }

    async fn deliver_durable(&self, event: &RecordedEvent, _prior: &[AttemptError]) -> Settled {
        if self.publish(std::slice::from_ref(event)).await {
            Settled::Done
        } else {
            Settled::Pending
        }
    }

    async fn deliver_batch(
        &self,
        events: Vec<RecordedEvent>,
        _concurrency: usize,
        last: u64,
        head: u64,
        fence: Option<&Fence>,
        _held: &Held,
    ) -> Batch {
        // Positions come with every event read from the global log.
        let before_first = events
            .first()
            .and_then(RecordedEvent::position)
            .map_or(last, |p| p.saturating_sub(1));
        if fence.is_some_and(|f| !f.holds()) {
            return Batch::reached(before_first);
        }
        if self.publish(&events).await {
            self.advance(last, head);
            Batch::reached(last)
        } else {
            Batch::reached(before_first)
        }
    }
}
