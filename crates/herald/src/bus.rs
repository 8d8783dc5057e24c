//! The in-process event bus.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use chrono::Utc;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use crate::competing::GroupSettings;
use crate::dead_letter::{
    DeadLetter, DeadLetterQuery, DeadLetterStore, MemoryDeadLetterStore, NewDeadLetter,
};
use crate::durable::{Deliver, DurableRunner, DurableSettings, ReplayFrom, Settled, StartFrom};
use crate::error::DurableError;
use crate::error::{
    AttemptError, DeadLetterError, PublishError, SubscribeError, UnknownSubscriber,
};
use crate::event::{Event, Metadata, NewEvent, Payload, RecordedEvent, RecordedParts};
use crate::handler::{BoxHandler, Context, ContextShared, Handler, SyncAdapter, SyncHandler};
use crate::id::{self, EventId};
use crate::middleware::{
    CatchPanic, DeadLetterLayer, Either, IdempotencyLayer, Layer, Ledger, RetryLayer, RetryPolicy,
    TimeoutLayer, Tracing, optional,
};
use crate::middleware::{delivery_span, panic_message, park};
use crate::store::{
    CheckpointStore, EventStore, ExpectedVersion, LeaseStore, ReadAll, StoreError, StreamAppend,
    StreamName,
};
use crate::topic::{EventType, TopicPattern};
use crate::transport::runner::{BrokerRunner, Settle};
use crate::transport::{ConsumerSpec, Delivery, Transport};
use crate::{Disposition, HandlerError};

/// How many event types the route cache remembers. Beyond that, routes of
/// new types are computed per publish, so arbitrary type names (from a
/// server's clients, say) cannot grow memory without bound.
const ROUTE_CACHE_LIMIT: usize = 4096;

/// Default queue capacity of an async subscriber: measured end to end,
/// 256 was faster than 1024 and as fast as 64, with room for bursts.
const DEFAULT_QUEUE_CAPACITY: usize = 256;

/// How long a competing subscriber's lease lasts unless renewed: the time
/// within which the partitions of a process that died are taken over.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// How many partitions a competing subscriber has unless told: enough to
/// spread over a handful of processes, few enough that each process's
/// readers of the log stay cheap.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// How many deliveries a [`Broker`](DeliveryMode::Broker) subscriber holds
/// unacknowledged per process, unless [`Subscriber::prefetch`] says.
pub const DEFAULT_PREFETCH: usize = 64;

/// How many queued events an async worker takes at once.
const WORKER_BATCH: usize = 64;

type BoxLayer = Arc<dyn Fn(BoxHandler) -> BoxHandler + Send + Sync>;

fn box_layer<L>(layer: L) -> BoxLayer
where
    L: Layer<BoxHandler> + Send + Sync + 'static,
    L::Service: Handler,
{
    Arc::new(move |inner| BoxHandler::new(layer.layer(inner)))
}

/// How a subscriber receives events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryMode {
    /// Runs inside `publish`, before it returns, in subscription order.
    #[default]
    Inline,
    /// Runs in background tasks fed by a bounded queue. When the queue is
    /// full, `publish` waits: no event is dropped and memory stays bounded
    /// (a subscriber holds at most its queue capacity, plus as many again
    /// taken by its worker, plus `concurrency` events in its handlers).
    Async,
    /// Fed from the bus's event store after a persisted checkpoint: at least
    /// once, in stream order, resuming after a restart where it left off.
    /// Needs a bus built with [`BusBuilder::store`]. Its retries are
    /// scheduled and persisted rather than waited for in place: a failing
    /// event holds back only the rest of its own stream until it succeeds
    /// or is dead-lettered.
    Durable,
    /// Fed by a message broker: the subscriber's name is a consumer group
    /// shared by every process that runs it; retries and dead letters live
    /// on the broker (see [`crate::transport`]). Needs a bus built with
    /// [`BusBuilder::transport`].
    Broker,
}

/// Whether a subscriber receives events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
#[non_exhaustive]
pub enum SubscriberState {
    /// Receives events.
    Enabled,
    /// Disabled by [`Bus::disable`] or [`Subscriber::disabled`] (for a
    /// durable subscriber, also by a disable saved in the store by another
    /// process or before a restart): receives no new events; events already
    /// queued are still handled.
    Disabled,
    /// Stopped by a handler error with [`Disposition::Stop`]: receives no
    /// new events; events already queued go to the dead letters, to retry
    /// once the cause is fixed and the subscriber enabled again.
    Stopped {
        /// The error that stopped it.
        reason: String,
    },
}

const ENABLED: u8 = 0;
const DISABLED: u8 = 1;
const STOPPED: u8 = 2;

/// A subscriber to add to a bus: a name, topic patterns, a handler and a
/// policy.
///
/// # Examples
///
/// ```
/// use herald::{handler_fn, DeliveryMode, RetryPolicy, Subscriber};
/// use std::time::Duration;
///
/// let sub = Subscriber::new("track-analytics", handler_fn(|_, _| async { Ok(()) }))
///     .topic("order.*")
///     .topic("payment.#")
///     .mode(DeliveryMode::Async)
///     .concurrency(4)
///     .retry(RetryPolicy::exponential(Duration::from_millis(50), Duration::from_secs(5)))
///     .timeout(Duration::from_secs(30));
/// ```
pub struct Subscriber {
    name: String,
    topics: Vec<String>,
    mode: DeliveryMode,
    concurrency: usize,
    queue_capacity: Option<usize>,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    ledger: Option<Arc<dyn Ledger>>,
    layers: Vec<BoxLayer>,
    propagate_errors: bool,
    start_from: StartFrom,
    batch_size: usize,
    poll_interval: Duration,
    competing: Option<u32>,
    lease_ttl: Duration,
    prefetch: usize,
    enabled: bool,
    sync: Option<Arc<dyn SyncHandler>>,
    build: Box<dyn FnOnce(StackParts) -> BoxHandler + Send>,
}

/// What the bus hands to a subscriber's stack builder.
struct StackParts {
    retry: Option<RetryLayer>,
    timeout: Option<TimeoutLayer>,
    ledger: Option<IdempotencyLayer>,
    dead_letters: Option<DeadLetterLayer>,
    layers: Vec<BoxLayer>,
    bus_layers: Vec<BoxLayer>,
}

/// Builds the stack in the order documented in [`crate::middleware`], with
/// static nesting, so one subscriber costs one boxed future per delivery
/// unless layers of its own are added.
fn build_stack<H: Handler>(handler: H, parts: StackParts) -> BoxHandler {
    let guarded = CatchPanic::new(optional(parts.timeout, handler));
    let middle = if parts.layers.is_empty() {
        Either::Left(guarded)
    } else {
        let mut boxed = BoxHandler::new(guarded);
        for layer in parts.layers.iter().rev() {
            boxed = layer(boxed);
        }
        Either::Right(boxed)
    };
    // A single attempt needs no retry layer: the dead-letter layer records
    // the one error itself.
    let retried = optional(parts.retry, middle);
    let stack = Tracing::new(optional(
        parts.ledger,
        optional(parts.dead_letters, retried),
    ));
    let mut boxed = BoxHandler::new(stack);
    for layer in parts.bus_layers.iter().rev() {
        boxed = layer(boxed);
    }
    boxed
}

impl Subscriber {
    /// A subscriber named `name` (unique in its bus) running `handler`.
    pub fn new<H: Handler>(name: impl Into<String>, handler: H) -> Self {
        Self {
            name: name.into(),
            topics: Vec::new(),
            mode: DeliveryMode::Inline,
            concurrency: 1,
            queue_capacity: None,
            retry: RetryPolicy::none(),
            timeout: None,
            ledger: None,
            layers: Vec::new(),
            propagate_errors: false,
            start_from: StartFrom::Beginning,
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            competing: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            prefetch: DEFAULT_PREFETCH,
            enabled: true,
            sync: None,
            build: Box::new(move |parts| build_stack(handler, parts)),
        }
    }

    /// A subscriber named `name` running a [`SyncHandler`]: one that
    /// finishes without awaiting. With no retry policy, timeout, ledger or
    /// layers, it is called directly, without a future or an allocation;
    /// otherwise it runs in the ordinary stack.
    pub fn new_sync<H: SyncHandler>(name: impl Into<String>, handler: H) -> Self {
        let handler = Arc::new(handler);
        let mut sub = Self::new(name, SyncAdapter(Arc::clone(&handler)));
        sub.sync = Some(handler);
        sub
    }

    /// The subscriber's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a topic pattern (`order.created`, `order.*`, `order.#`, `#`).
    pub fn topic(mut self, pattern: impl Into<String>) -> Self {
        self.topics.push(pattern.into());
        self
    }

    /// Adds several topic patterns.
    pub fn topics<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Sets the delivery mode (inline by default).
    pub fn mode(mut self, mode: DeliveryMode) -> Self {
        self.mode = mode;
        self
    }

    /// How many events an async subscriber handles at once (1 by default,
    /// which keeps publish order). Ignored by inline subscribers.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Capacity of an async subscriber's queue (the bus's default, 256,
    /// unless set).
    ///
    /// Larger queues absorb longer bursts but are not faster: each queued
    /// event is allocated by the publisher's thread and freed by the
    /// worker's, and the more are in flight, the more often the allocator's
    /// per-thread caches overflow (see BENCHMARKS.md).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = Some(n);
        self
    }

    /// Sets the retry policy (no retry by default).
    ///
    /// Inline and async subscribers wait out the backoff in place. A
    /// [`Durable`](DeliveryMode::Durable) subscriber schedules the retry in
    /// its store and goes on with other streams; a
    /// [`Broker`](DeliveryMode::Broker) subscriber hands it to the broker.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Bounds each attempt's duration.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Skips events this subscriber already handled, as told by `ledger`.
    pub fn idempotent(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Adds a middleware layer of this subscriber's; see the order in
    /// [`crate::middleware`].
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxHandler> + Send + Sync + 'static,
        L::Service: Handler,
    {
        self.layers.push(box_layer(layer));
        self
    }

    /// Where a durable subscriber without a checkpoint starts (the beginning
    /// of the store by default).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }

    /// How many events a durable subscriber reads per batch, and handles
    /// between checkpoint saves (500 by default).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// How often a durable subscriber looks for new events when the store
    /// cannot wake it (1 s by default), and at most how often it looks at its
    /// enabled state in the store (see [`Bus::disable`]).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Adds the subscriber disabled: it receives nothing until
    /// [`Bus::enable`] (or [`Bus::set_enabled`]) is called.
    ///
    /// For a durable subscriber this is the state it starts with when the
    /// store has none saved for it (as [`start_from`](Self::start_from) is
    /// where it starts without a checkpoint). A state saved in the store by
    /// an enable or disable, in any process, wins: one enabled by an
    /// operator stays enabled when the process restarts.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::{handler_fn, Bus, Subscriber, SubscriberState};
    ///
    /// let bus = Bus::new();
    /// bus.subscribe(
    ///     Subscriber::new("audit", handler_fn(|_, _| async { Ok(()) }))
    ///         .topic("#")
    ///         .disabled(),
    /// )
    /// .unwrap();
    /// assert_eq!(bus.subscriber("audit").unwrap().state, SubscriberState::Disabled);
    /// ```
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }

    /// Makes this durable subscriber one of a *competing group*: every
    /// process (or bus) that subscribes it under the same name, on the same
    /// store, shares its work.
    ///
    /// The events are split into `partitions` partitions by stream
    /// ([`partition_of`](crate::store::partition_of): FNV-1a of the stream
    /// name, modulo `partitions`); every member of the group must use the
    /// same number ([`DEFAULT_PARTITIONS`] is a reasonable one). Each
    /// partition has its own checkpoint and is worked on by one live member
    /// at a time, which holds a lease on it in the bus's
    /// [`lease_store`](BusBuilder::lease_store).
    ///
    /// # Delivery guarantees
    ///
    /// - Events of one stream are handled in stream order, also across
    ///   hand-overs: a stream is in one partition, and a partition changes
    ///   hands only at a saved checkpoint.
    /// - Members share the partitions evenly. When one joins or leaves (its
    ///   bus shut down), the others give back or take partitions; a member
    ///   gives a partition back only after its batch in hand is handled and
    ///   its checkpoint saved, so a rebalance delivers nothing twice.
    /// - A member that dies (crash, kill, lost network) stops renewing; its
    ///   leases expire within the [`lease_ttl`](Self::lease_ttl), and the
    ///   others take its partitions from their last saved checkpoints: the
    ///   events it handled after that are delivered again (at least once).
    /// - A member that cannot renew its leases stops delivering a tenth of
    ///   the TTL before they could expire, and a checkpoint save by a
    ///   member whose lease expired is refused: a slow member does not work
    ///   beside the one that took over.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::{handler_fn, DeliveryMode, Subscriber};
    /// use std::time::Duration;
    ///
    /// let sub = Subscriber::new("ship-orders", handler_fn(|_, _| async { Ok(()) }))
    ///     .topic("order.paid")
    ///     .mode(DeliveryMode::Durable)
    ///     .competing(16)
    ///     .lease_ttl(Duration::from_secs(5));
    /// ```
    pub fn competing(mut self, partitions: u32) -> Self {
        self.competing = Some(partitions);
        self
    }

    /// How long a competing subscriber's leases last unless renewed
    /// ([`DEFAULT_LEASE_TTL`] unless set). A member renews every third of
    /// it; the partitions of a member that died are taken over within
    /// about the TTL plus one renewal interval. Shorter means faster
    /// takeover and more store round trips.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// For a [`Broker`](DeliveryMode::Broker) subscriber: at most how many
    /// deliveries this process holds unacknowledged ([`DEFAULT_PREFETCH`]
    /// unless set). The broker sends no more until some are settled, which
    /// bounds memory and lets other processes of the group take the rest.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Makes a failure of this inline subscriber fail `publish`, after its
    /// retries, instead of going to the dead letters: for a handler that
    /// must succeed for the publisher's work to count (the publisher's
    /// transaction rolls back on the error). Subscribers after it, and async
    /// subscribers, do not receive the event then. Async and durable
    /// subscribers ignore this setting. On a bus built on a store, the event
    /// is already stored when inline subscribers run; to make an event and
    /// the caller's writes commit together, append it in the caller's own
    /// transaction (the outbox of a store crate).
    pub fn propagate_errors(mut self) -> Self {
        self.propagate_errors = true;
        self
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("mode", &self.mode)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("propagate_errors", &self.propagate_errors)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a subscriber, as [`Bus::subscribers`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SubscriberInfo {
    /// The name.
    pub name: String,
    /// The topic patterns.
    pub topics: Vec<String>,
    /// The delivery mode.
    pub mode: DeliveryMode,
    /// Whether it receives events.
    pub state: SubscriberState,
    /// Events handled at once (async subscribers).
    pub concurrency: usize,
    /// Events waiting in its queue (async subscribers).
    pub queued: usize,
    /// Deliveries that succeeded.
    pub handled: u64,
    /// Deliveries skipped by the handler.
    pub skipped: u64,
    /// Deliveries that failed for good.
    pub failed: u64,
    /// Failed deliveries that were dead-lettered.
    pub dead_lettered: u64,
    /// For a durable subscriber, the position up to which it handled the
    /// store's events.
    pub checkpoint: Option<u64>,
    /// For a competing subscriber, the partitions this process works on.
    pub partitions: Option<Vec<u32>>,
}

/// What a subscriber's deliveries share; async workers hold it.
struct Core {
    name: Arc<str>,
    handler: BoxHandler,
    /// The sync handler to call directly, when the stack around it would do
    /// nothing on success (see [`Subscriber::new_sync`]).
    fast: Option<Arc<dyn SyncHandler>>,
    ctx: Arc<ContextShared>,
    state: AtomicU8,
    stop_reason: Mutex<Option<String>>,
    propagate: bool,
    /// Where the stack parks given-up events (`None` for broker and durable
    /// subscribers, which park outside their stack).
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    /// For a durable subscriber: its retry policy and where it parks, both
    /// applied by its runner (see [`Deliver::deliver_durable`]).
    durable: Option<DurableFailures>,
    handled: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    /// For a durable subscriber, its enabled state as kept in the store.
    persisted: Option<Persisted>,
    /// Marked changed on every enable, disable and stop, for runners that
    /// wait for one.
    state_watch: tokio::sync::watch::Sender<()>,
}

/// How many errors a durable subscriber keeps for an event it retries for
/// ever (it has nowhere to park it).
const KEPT_ERRORS: usize = 20;

/// How a durable subscriber deals with failures: its runner schedules a
/// retry instead of waiting in place, so one failing event holds back only
/// its own stream.
struct DurableFailures {
    retry: RetryPolicy,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
}

/// How a durable subscriber's enabled state is kept in the store, so that
/// it survives a restart and every process running the subscriber follows
/// it.
///
/// Enable and disable calls change the state here at once and count as
/// changes not yet saved; the runner saves them on its next round (and
/// [`Bus::set_enabled`] saves before it returns). When nothing is unsaved,
/// the runner looks at the stored state, at most once per poll interval,
/// and follows it, unless a change was made here while it looked.
struct Persisted {
    store: Arc<dyn CheckpointStore>,
    /// At most how often the stored state is looked at.
    every: Duration,
    marks: Mutex<Marks>,
    /// Held while saving, so an older state never lands after a newer one.
    saving: tokio::sync::Mutex<()>,
    /// When the stored state was last looked at; held while looking, so the
    /// workers of a competing subscriber look once between them.
    looked: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Enable and disable calls made in this process, and how many of them the
/// store has.
#[derive(Default)]
struct Marks {
    changes: u64,
    saved: u64,
}

impl Persisted {
    fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Queue {
    sender: ArcSwapOption<mpsc::Sender<RecordedEvent>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    capacity: usize,
    concurrency: usize,
}

struct Entry {
    core: Arc<Core>,
    topics: Vec<TopicPattern>,
    mode: DeliveryMode,
    queue: Option<Queue>,
    durable: Option<DurableRunner>,
    broker: Option<BrokerRunner>,
}

impl Entry {
    fn matches(&self, event_type: &str) -> bool {
        self.topics.iter().any(|p| p.matches(event_type))
    }

    fn info(&self) -> SubscriberInfo {
        let c = &self.core;
        let (concurrency, queued) = match &self.queue {
            Some(q) => {
                let queued = q
                    .sender
                    .load()
                    .as_ref()
                    .map_or(0, |s| q.capacity - s.capacity());
                (q.concurrency, queued)
            }
            None => (1, 0),
        };
        SubscriberInfo {
            name: c.name.to_string(),
            topics: self.topics.iter().map(|t| t.as_str().to_owned()).collect(),
            mode: self.mode,
            state: c.state(),
            concurrency,
            queued,
            handled: c.handled.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            checkpoint: self.durable.as_ref().map(DurableRunner::checkpoint),
            partitions: self
                .durable
                .as_ref()
                .and_then(DurableRunner::owned_partitions),
        }
    }

    /// Stops the queue and waits until its worker handled what was queued;
    /// stops a durable subscriber after its current batch.
    async fn drain(&self) {
        if let Some(durable) = &self.durable {
            durable.stop().await;
        }
        if let Some(broker) = &self.broker {
            broker.stop().await;
        }
        // An enable or disable the runner had no round left to save.
        if let Some(p) = &self.core.persisted {
            if let Err(err) = self.core.save_enabled(p).await {
                tracing::error!(
                    subscriber = %self.core.name,
                    error = %err,
                    "durable subscriber could not save its enabled state"
                );
            }
        }
        let Some(queue) = &self.queue else { return };
        queue.sender.store(None);
        let worker = queue
            .worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(worker) = worker {
            if let Err(err) = worker.await {
                tracing::error!(subscriber = %self.core.name, error = %err, "async worker ended abnormally");
            }
        }
    }
}

impl Core {
    fn state(&self) -> SubscriberState {
        match self.state.load(Ordering::Acquire) {
            ENABLED => SubscriberState::Enabled,
            DISABLED => SubscriberState::Disabled,
            _ => SubscriberState::Stopped {
                reason: self
                    .stop_reason
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_default(),
            },
        }
    }

    fn is_enabled(&self) -> bool {
        self.state.load(Ordering::Acquire) == ENABLED
    }

    fn stop(&self, reason: String) {
        *self.stop_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.state.store(STOPPED, Ordering::Release);
        self.state_watch.send_replace(());
    }

    /// Enables (also a stopped subscriber) or disables it here; for a
    /// durable subscriber, counts a change for the store.
    fn set_enabled(&self, enabled: bool) {
        let change = || {
            if enabled {
                *self.stop_reason.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.state.store(ENABLED, Ordering::Release);
            } else {
                self.state.store(DISABLED, Ordering::Release);
            }
        };
        match &self.persisted {
            Some(p) => {
                // The state and the count change together, so that a runner
                // that looked at the store meanwhile does not undo it.
                let mut marks = p.marks();
                change();
                marks.changes += 1;
            }
            None => change(),
        }
        self.state_watch.send_replace(());
    }

    /// Saves the state here unless the store has every change already.
    async fn save_enabled(&self, p: &Persisted) -> Result<(), StoreError> {
        let _saving = p.saving.lock().await;
        let (changes, enabled) = {
            let marks = p.marks();
            if marks.saved == marks.changes {
                return Ok(());
            }
            (
                marks.changes,
                self.state.load(Ordering::Acquire) != DISABLED,
            )
        };
        p.store.save_enabled(&self.name, enabled).await?;
        let mut marks = p.marks();
        marks.saved = marks.saved.max(changes);
        Ok(())
    }

    /// The runner's look at the stored state: saves the changes made here,
    /// or follows the store.
    async fn look_at_store(&self, p: &Persisted) -> Result<(), StoreError> {
        let before = {
            let marks = p.marks();
            (marks.saved == marks.changes).then_some(marks.changes)
        };
        let Some(before) = before else {
            return self.save_enabled(p).await;
        };
        // Nothing saved yet: the state the subscriber was added with holds.
        // (Saving it here could overwrite a disable another process saved
        // after this load.)
        let Some(enabled) = p.store.load_enabled(&self.name).await? else {
            return Ok(());
        };
        let marks = p.marks();
        if marks.changes != before || marks.saved != before {
            // Changed here while we looked: that change is newer.
            return Ok(());
        }
        let (from, to) = if enabled {
            (DISABLED, ENABLED)
        } else {
            (ENABLED, DISABLED)
        };
        // A stopped subscriber stays stopped until enabled here.
        if self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.state_watch.send_replace(());
            tracing::info!(
                subscriber = %self.name,
                enabled,
                "durable subscriber follows the enabled state saved in the store"
            );
        }
        Ok(())
    }

    /// Runs the whole stack; a panic that escapes it becomes an error.
    async fn run(&self, event: &RecordedEvent, ctx: &Context) -> Result<(), HandlerError> {
        match AssertUnwindSafe(self.handler.handle(event, ctx))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => Err(HandlerError::panic(panic_message(&*panic))),
        }
    }

    /// Runs the subscriber on one event: directly for a sync handler on the
    /// direct path, else through its stack.
    async fn attempt(&self, event: &RecordedEvent, ctx: &Context) -> Result<(), HandlerError> {
        match &self.fast {
            Some(handler) => self.run_sync(&**handler, event, ctx).await,
            None => self.run(event, ctx).await,
        }
    }

    /// The direct path of a sync handler: the tracing span, the call with
    /// panics caught, and on failure the dead letters, as the stack would.
    async fn run_sync(
        &self,
        handler: &dyn SyncHandler,
        event: &RecordedEvent,
        ctx: &Context,
    ) -> Result<(), HandlerError> {
        let call = || {
            std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(event, ctx)))
                .unwrap_or_else(|panic| Err(HandlerError::panic(panic_message(&*panic))))
        };
        let span = delivery_span(event, ctx);
        let result = if span.is_disabled() {
            call()
        } else {
            span.in_scope(call)
        };
        match (result, &self.dead_letters) {
            (Err(err), Some(store)) => Box::pin(park(&**store, event, ctx, err)).await,
            (result, _) => result,
        }
    }

    /// Delivers one event, records the outcome and logs failures. Returns an
    /// error only for a subscriber that propagates its errors.
    async fn deliver(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let ctx = Context::for_delivery(&self.ctx, event);
        match self.attempt(event, &ctx).await {
            Ok(()) => {
                self.handled.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => self.failed_with(event, err),
        }
    }

    fn failed_with(&self, event: &RecordedEvent, err: HandlerError) -> Result<(), HandlerError> {
        let disposition = err.disposition();
        if disposition == Disposition::Skip {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                event_id = %event.id(),
                event_type = event.event_type(),
                subscriber = %self.name,
                reason = %err,
                "event skipped by handler"
            );
            return Ok(());
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        let attempt = err.history().last().map_or(1, |a| a.attempt);
        if err.dead_letter_id().is_some() {
            // The dead-letter middleware logged it with the dead letter's id.
            self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::error!(
                event_id = %event.id(),
                event_type = event.event_type(),
                subscriber = %self.name,
                attempt,
                error = %err,
                "handler failed"
            );
        }
        if disposition == Disposition::Stop {
            tracing::error!(
                subscriber = %self.name,
                event_id = %event.id(),
                error = %err,
                "subscriber stopped by its handler; enable it once the cause is fixed"
            );
            self.stop(err.to_string());
        }
        if self.propagate { Err(err) } else { Ok(()) }
    }

    /// Delivery from an async queue: a stopped subscriber parks what is
    /// still queued in the dead letters.
    async fn deliver_queued(&self, event: &RecordedEvent) {
        if self.state.load(Ordering::Acquire) == STOPPED {
            if let Some(store) = &self.dead_letters {
                let reason = format!(
                    "subscriber stopped before delivery: {}",
                    self.stop_reason
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                        .unwrap_or_default()
                );
                let err = HandlerError::dead_letter(reason.clone());
                let letter = NewDeadLetter {
                    subscriber: self.name.to_string(),
                    event: event.clone(),
                    reason,
                    errors: vec![AttemptError::new(0, &err)],
                };
                match store.record(letter).await {
                    Ok(_) => {
                        crate::metrics::dead_letter_recorded(&self.name);
                        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => tracing::error!(
                        subscriber = %self.name,
                        event_id = %event.id(),
                        error = %e,
                        "could not dead-letter an event queued for a stopped subscriber; delivering it"
                    ),
                }
            }
        }
        // Async subscribers never propagate: there is no caller to fail.
        let _ = self.deliver(event).await;
    }
}

impl Deliver for Core {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_enabled(&self) -> bool {
        Core::is_enabled(self)
    }

    async fn refresh_enabled(&self) -> bool {
        let Some(p) = &self.persisted else {
            return self.is_enabled();
        };
        // Another worker of a competing subscriber is looking.
        let Ok(mut looked) = p.looked.try_lock() else {
            return self.is_enabled();
        };
        let unsaved = {
            let marks = p.marks();
            marks.saved != marks.changes
        };
        let now = tokio::time::Instant::now();
        if unsaved || looked.is_none_or(|at| now.duration_since(at) >= p.every) {
            *looked = Some(now);
            if let Err(err) = self.look_at_store(p).await {
                tracing::error!(
                    subscriber = %self.name,
                    error = %err,
                    "durable subscriber could not sync its enabled state with the store"
                );
            }
        }
        self.is_enabled()
    }

    async fn deliver_durable(&self, event: &RecordedEvent, prior: &[AttemptError]) -> Settled {
        let attempt = prior.last().map_or(1, |e| e.attempt.saturating_add(1));
        let ctx = Context::for_delivery(&self.ctx, event).with_attempt(attempt);
        let err = match self.attempt(event, &ctx).await {
            Ok(()) => {
                self.handled.fetch_add(1, Ordering::Relaxed);
                return Settled::Done;
            }
            Err(err) => err,
        };
        let Some(failures) = &self.durable else {
            // Not reached: every durable subscriber has its failure policy.
            let parked = err.dead_letter_id().is_some() || err.disposition() == Disposition::Skip;
            let _ = self.failed_with(event, err);
            return if parked {
                Settled::Done
            } else {
                Settled::Pending
            };
        };
        match err.disposition() {
            Disposition::Skip => {
                let _ = self.failed_with(event, err);
                return Settled::Done;
            }
            Disposition::Stop => {
                let _ = self.failed_with(event, err);
                return Settled::Pending;
            }
            _ => {}
        }
        let mut errors = prior.to_vec();
        errors.push(AttemptError::new(attempt, &err));
        let delay = match err.disposition() {
            Disposition::Retry { after: Some(after) } => after,
            _ => failures.retry.delay(attempt, true),
        };
        let retrying = failures.retry.should_retry(attempt, &err);
        let store = match &failures.dead_letters {
            Some(store) if !retrying => store,
            // With nowhere to park it, an event the policy gave up on is
            // tried again for ever (never lost), backing off up to 5 s so
            // that it does not spin.
            _ => {
                let delay = if retrying {
                    delay
                } else {
                    // Kept for ever, so only the latest errors are: each
                    // carries its attempt number.
                    if errors.len() > KEPT_ERRORS {
                        errors.drain(..errors.len() - KEPT_ERRORS);
                    }
                    delay.max(
                        (Duration::from_millis(100) * attempt.min(50)).min(Duration::from_secs(5)),
                    )
                };
                tracing::warn!(
                    event_id = %event.id(),
                    event_type = event.event_type(),
                    subscriber = %self.name,
                    attempt,
                    error = %err,
                    retry_in = ?delay,
                    "handler failed; retried after the delay, while the subscriber goes on with other streams"
                );
                return Settled::Retry {
                    after: delay,
                    errors,
                };
            }
        };
        match park(&**store, event, &ctx, err.with_history(errors)).await {
            Err(parked) if parked.dead_letter_id().is_some() => {
                let _ = self.failed_with(event, parked);
                Settled::Done
            }
            // The dead-letter store failed (park logged it): delivered again.
            _ => Settled::Pending,
        }
    }
}

/// A broker subscriber: its core, and the retry policy the broker carries
/// out (its stack has no retry or dead-letter layer).
struct Brokered {
    core: Arc<Core>,
    retry: RetryPolicy,
}

impl Brokered {
    fn log_unsettled(&self, event: &RecordedEvent, err: &crate::transport::TransportError) {
        tracing::warn!(
            subscriber = %self.core.name,
            event_id = %event.id(),
            error = %err,
            "could not settle a delivery with the broker; it will be delivered again"
        );
    }
}

impl Settle for Brokered {
    fn name(&self) -> &str {
        &self.core.name
    }

    fn is_enabled(&self) -> bool {
        self.core.is_enabled()
    }

    fn watch_state(&self) -> tokio::sync::watch::Receiver<()> {
        self.core.state_watch.subscribe()
    }

    async fn settle(&self, delivery: Delivery) {
        let core = &self.core;
        let event = delivery.event().clone();
        let attempt = delivery.attempt();
        let ctx = Context::for_delivery(&core.ctx, &event).with_attempt(attempt);
        let err = match core.attempt(&event, &ctx).await {
            Ok(()) => {
                core.handled.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = delivery.ack().await {
                    self.log_unsettled(&event, &e);
                }
                return;
            }
            Err(err) => err,
        };
        let settled = match err.disposition() {
            Disposition::Skip => {
                let _ = core.failed_with(&event, err);
                delivery.ack().await
            }
            Disposition::Stop => {
                let _ = core.failed_with(&event, err);
                delivery.release().await
            }
            disposition => {
                let mut errors = delivery.errors().to_vec();
                errors.push(AttemptError::new(attempt, &err));
                if self.retry.should_retry(attempt, &err) {
                    let delay = match disposition {
                        Disposition::Retry { after: Some(after) } => after,
                        _ => self.retry.delay(attempt, true),
                    };
                    tracing::warn!(
                        event_id = %event.id(),
                        event_type = event.event_type(),
                        subscriber = %core.name,
                        attempt,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %err,
                        "handler failed; the broker delivers it again after a delay"
                    );
                    delivery.retry(delay, errors).await
                } else {
                    let reason = err.to_string();
                    let _ = core.failed_with(&event, err);
                    core.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    let letter = NewDeadLetter {
                        subscriber: core.name.to_string(),
                        event: event.clone(),
                        reason,
                        errors,
                    };
                    let parked = delivery.dead_letter(letter, attempt).await;
                    if parked.is_ok() {
                        crate::metrics::dead_letter_recorded(&core.name);
                    }
                    parked
                }
            }
        };
        if let Err(e) = settled {
            self.log_unsettled(&event, &e);
        }
    }
}

async fn run_worker(
    core: Arc<Core>,
    mut rx: mpsc::Receiver<RecordedEvent>,
    capacity: usize,
    concurrency: usize,
) {
    // Taking a batch frees queue slots early; bounding it by the capacity
    // keeps what a subscriber holds in memory under twice its capacity.
    let take = WORKER_BATCH.min(capacity);
    let mut batch = Vec::with_capacity(take);
    if concurrency <= 1 {
        while rx.recv_many(&mut batch, take).await > 0 {
            for event in batch.drain(..) {
                core.deliver_queued(&event).await;
            }
        }
        return;
    }
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut running = JoinSet::new();
    while rx.recv_many(&mut batch, take).await > 0 {
        for event in batch.drain(..) {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let core = Arc::clone(&core);
            running.spawn(async move {
                core.deliver_queued(&event).await;
                drop(permit);
            });
            while running.try_join_next().is_some() {}
        }
    }
    while running.join_next().await.is_some() {}
}

/// Subscribers matching one event type, resolved once and cached.
struct Route {
    event_type: EventType,
    inline: Box<[Arc<Core>]>,
    queued: Box<[Arc<Entry>]>,
}

#[derive(Default)]
struct RouteCache {
    generation: u64,
    routes: HashMap<Box<str>, Arc<Route>, foldhash::fast::RandomState>,
}

#[derive(Default)]
struct Registry {
    entries: Vec<Arc<Entry>>,
    generation: u64,
}

/// The store a bus appends to and feeds durable subscribers from.
#[derive(Clone)]
struct BusStore {
    events: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
}

pub(crate) struct BusInner {
    store: Option<BusStore>,
    transport: Option<Arc<dyn Transport>>,
    leases: Option<Arc<dyn LeaseStore>>,
    registry: RwLock<Registry>,
    routes: ArcSwap<RouteCache>,
    closed: AtomicBool,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    layers: Vec<BoxLayer>,
    queue_capacity: usize,
    this: Weak<BusInner>,
}

/// An in-process event bus: publish events by type name; named subscribers
/// receive those matching their topic patterns.
///
/// Cloning a `Bus` gives another handle to the same bus.
///
/// # Delivery guarantees
///
/// - A failing or panicking subscriber never fails `publish` and never
///   stops the others, unless it was subscribed with
///   [`propagate_errors`](Subscriber::propagate_errors).
/// - Inline subscribers run first, in subscription order; then the event is
///   queued for async subscribers. `publish` waits while a queue is full.
/// - Every failure is logged through `tracing` with the event id, type,
///   subscriber, attempt and error. When a subscriber's retry policy gives
///   up, the event goes to the dead letters.
/// - The bus is volatile: events queued in memory are lost if the process
///   dies. [`shutdown`](Bus::shutdown) drains them. Durable subscribers come
///   with an event store.
///
/// # Examples
///
/// ```
/// use herald::{handler_fn, Bus, Subscriber};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = Bus::new();
/// bus.subscribe(
///     Subscriber::new("notify-user", handler_fn(|event, _ctx| async move {
///         assert_eq!(event.data().to_value()["order_id"], 42);
///         Ok(())
///     }))
///     .topic("order.created"),
/// ).unwrap();
///
/// bus.publish("order.created", json!({"order_id": 42})).await.unwrap();
/// assert_eq!(bus.subscriber("notify-user").unwrap().handled, 1);
/// bus.shutdown().await;
/// # }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

/// Builds a [`Bus`].
///
/// # Examples
///
/// ```
/// use herald::middleware::TracingLayer;
/// use herald::{Bus, MemoryDeadLetterStore};
/// use std::sync::Arc;
///
/// let dead_letters = Arc::new(MemoryDeadLetterStore::new());
/// let bus = Bus::builder()
///     .dead_letter_store(dead_letters)
///     .queue_capacity(4096)
///     .build();
/// ```
pub struct BusBuilder {
    store: Option<BusStore>,
    transport: Option<Arc<dyn Transport>>,
    /// Whether the dead-letter store was chosen (else a transport's wins).
    dead_letters_chosen: bool,
    leases: Option<Arc<dyn LeaseStore>>,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    layers: Vec<BoxLayer>,
    queue_capacity: usize,
}

impl BusBuilder {
    /// Builds the bus on an event store: every published event is appended
    /// to it before any subscriber sees it, and durable subscribers are fed
    /// from it.
    ///
    /// An event published without a stream goes to the stream named after
    /// its type (`order.created`), so that every published event is in the
    /// history; [`NewEvent::in_stream`] chooses another.
    pub fn store<S: EventStore + CheckpointStore>(mut self, store: Arc<S>) -> Self {
        self.store = Some(BusStore {
            events: Arc::clone(&store) as Arc<dyn EventStore>,
            checkpoints: store,
        });
        self
    }

    /// Where competing subscribers keep their members, leases and
    /// partition checkpoints (see [`Subscriber::competing`]): a store that
    /// every process of the group shares, usually the event store itself.
    pub fn lease_store(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.leases = Some(store);
        self
    }

    /// Where given-up events go (a [`MemoryDeadLetterStore`] by default;
    /// the transport's dead letters when the bus has a transport).
    pub fn dead_letter_store(mut self, store: Arc<dyn DeadLetterStore>) -> Self {
        self.dead_letters = Some(store);
        self.dead_letters_chosen = true;
        self
    }

    /// Keeps no dead letters: given-up events are only logged.
    pub fn without_dead_letters(mut self) -> Self {
        self.dead_letters = None;
        self.dead_letters_chosen = true;
        self
    }

    /// Connects the bus to a message broker (see [`crate::transport`]).
    ///
    /// [`Broker`](DeliveryMode::Broker) subscribers consume from it, and
    /// the bus's dead letters are the broker's (unless
    /// [`dead_letter_store`](Self::dead_letter_store) chose others).
    ///
    /// A bus without an event store publishes each event to the broker
    /// first: `publish` waits for the broker's confirmation, and fails
    /// (before any subscriber of this process saw the event) without it. A bus
    /// with an event store does not: it appends to the store, and a relay
    /// forwards the store's events to the broker, so that an event is on
    /// the broker if and only if it was committed (the outbox pattern).
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Adds a layer around every subscriber's stack (outermost, in the order
    /// added).
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxHandler> + Send + Sync + 'static,
        L::Service: Handler,
    {
        self.layers.push(box_layer(layer));
        self
    }

    /// Default queue capacity of async subscribers (256 unless set; at
    /// least 1).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// Builds the bus.
    pub fn build(self) -> Bus {
        let dead_letters = match (&self.transport, self.dead_letters_chosen) {
            (Some(transport), false) => Some(transport.dead_letters()),
            _ => self.dead_letters,
        };
        Bus {
            inner: Arc::new_cyclic(|this| BusInner {
                store: self.store,
                transport: self.transport,
                leases: self.leases,
                registry: RwLock::new(Registry::default()),
                routes: ArcSwap::from_pointee(RouteCache::default()),
                closed: AtomicBool::new(false),
                dead_letters,
                layers: self.layers,
                queue_capacity: self.queue_capacity,
                this: this.clone(),
            }),
        }
    }
}

/// The result of retrying a dead letter.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// The subscriber handled (or skipped) the event; the dead letter is
    /// gone.
    Handled,
    /// It failed again; the dead letter was updated with the new attempts.
    Failed {
        /// The new error.
        error: String,
        /// The dead letter as it is now, if it is still stored.
        dead_letter: Option<DeadLetter>,
    },
    /// It went back to a [`Broker`](DeliveryMode::Broker) subscriber's
    /// group through the broker, as a first attempt; the dead letter is
    /// gone (a new one appears if it fails again).
    Redelivered,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// A bus with a memory dead-letter store.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder, to choose the dead-letter store, bus-wide layers and
    /// queue capacity.
    pub fn builder() -> BusBuilder {
        BusBuilder {
            store: None,
            transport: None,
            dead_letters_chosen: false,
            leases: None,
            dead_letters: Some(Arc::new(MemoryDeadLetterStore::new())),
            layers: Vec::new(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }

    /// Publishes an event of type `event_type` with a payload.
    ///
    /// The payload is serialized once (pass a prebuilt [`Payload`] to share
    /// one without serializing it again). Returns the recorded event, with
    /// its new UUIDv7 id and recorded-at time.
    ///
    /// # Errors
    ///
    /// [`PublishError::InvalidEventType`] for a bad type name,
    /// [`PublishError::ShutDown`] after [`shutdown`](Self::shutdown), and
    /// [`PublishError::Handler`] when a subscriber that propagates errors
    /// failed.
    pub async fn publish(
        &self,
        event_type: &str,
        data: impl Into<Payload>,
    ) -> Result<RecordedEvent, PublishError> {
        self.inner
            .publish_parts(event_type, None, data.into(), Metadata::default(), None)
            .await
    }

    /// Publishes a typed event.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish), and [`PublishError::Payload`] when the
    /// event does not serialize.
    pub async fn publish_event<E: Event>(&self, event: &E) -> Result<RecordedEvent, PublishError> {
        let data = Payload::from_serialize(event)?;
        self.inner
            .publish_parts(E::NAME, None, data, Metadata::default(), None)
            .await
    }

    /// Publishes an event with metadata, and optionally its own id.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_new(&self, event: NewEvent) -> Result<RecordedEvent, PublishError> {
        BusInner::publish_new(&self.inner, event).await
    }

    /// Publishes several events as one: all of them, or none.
    ///
    /// Every type name is checked first. On a bus with an event store, the
    /// events are appended in one atomic step
    /// ([`EventStore::append_all`]), each to its stream (as
    /// [`publish_new`](Self::publish_new) chooses it); a failure in any (a
    /// reused id with other content, say) stores none of them, and no
    /// subscriber sees any. Subscribers then receive them in the order
    /// given.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish). A subscriber that propagates its
    /// errors fails the call after the events were stored.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herald::store::MemoryStore;
    /// use herald::{Bus, NewEvent};
    /// use serde_json::json;
    /// use std::sync::Arc;
    ///
    /// let bus = Bus::builder().store(Arc::new(MemoryStore::new())).build();
    /// let events = bus
    ///     .publish_all(vec![
    ///         NewEvent::new("order.created", json!({"order_id": 7})).in_stream("order-7"),
    ///         NewEvent::new("invoice.issued", json!({"order_id": 7})),
    ///     ])
    ///     .await
    ///     .unwrap();
    /// assert_eq!(events[1].stream(), Some("invoice.issued"));
    /// # }
    /// ```
    pub async fn publish_all(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, PublishError> {
        self.inner.publish_all(events).await
    }

    /// Adds a subscriber.
    ///
    /// # Errors
    ///
    /// [`SubscribeError`] for an invalid or missing pattern, a name in use,
    /// an invalid policy, or an async subscriber outside a tokio runtime.
    pub fn subscribe(&self, subscriber: Subscriber) -> Result<(), SubscribeError> {
        self.inner.subscribe(subscriber)
    }

    /// Removes a subscriber. An async subscriber's queued events are handled
    /// first.
    ///
    /// # Errors
    ///
    /// [`UnknownSubscriber`] when no subscriber has this name.
    pub async fn unsubscribe(&self, name: &str) -> Result<(), UnknownSubscriber> {
        let entry = {
            let mut reg = self.inner.write_registry();
            let index = reg
                .entries
                .iter()
                .position(|e| &*e.core.name == name)
                .ok_or_else(|| UnknownSubscriber(name.to_owned()))?;
            let entry = reg.entries.remove(index);
            self.inner.invalidate_routes(&mut reg);
            entry
        };
        entry.drain().await;
        Ok(())
    }

    /// Stops delivering new events to a subscriber.
    ///
    /// It takes effect here at once: an async subscriber still handles what
    /// is queued, a durable one stops before the next event of its batch.
    ///
    /// # Persistence
    ///
    /// A durable subscriber's enabled state is kept in the store
    /// ([`CheckpointStore::save_enabled`]), so it stays disabled after a
    /// restart, and every process running it (competing members included)
    /// stops too, within its poll interval; the events published meanwhile
    /// wait in the store, and are delivered once it is enabled again. This
    /// call is sync, so the subscriber's runner saves the change on its next
    /// round (retrying while the store fails, and once more when the bus
    /// shuts down); use [`set_enabled`](Self::set_enabled) to wait until it
    /// is saved. A durable subscriber starting up looks at the stored state
    /// before it delivers anything (its [`SubscriberInfo::state`] shows the
    /// state it was added with until then). A subscriber stopped by its
    /// handler stays stopped until enabled in its own process. Inline and
    /// async subscribers are only disabled in this bus.
    ///
    /// # Errors
    ///
    /// [`UnknownSubscriber`] when no subscriber has this name.
    pub fn disable(&self, name: &str) -> Result<(), UnknownSubscriber> {
        self.inner.with_core(name, |c| c.set_enabled(false))
    }

    /// Delivers new events to a disabled or stopped subscriber again.
    ///
    /// A durable subscriber's state is saved as for
    /// [`disable`](Self::disable), and it then receives what it missed.
    ///
    /// # Errors
    ///
    /// [`UnknownSubscriber`] when no subscriber has this name.
    pub fn enable(&self, name: &str) -> Result<(), UnknownSubscriber> {
        self.inner.with_core(name, |c| c.set_enabled(true))
    }

    /// Enables or disables a subscriber as [`enable`](Self::enable) and
    /// [`disable`](Self::disable) do, and for a durable subscriber returns
    /// once the store has the new state: after `Ok`, a restart keeps it and
    /// the other processes follow it within their poll interval.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::store::{CheckpointStore, MemoryStore};
    /// use herald::{handler_fn, Bus, DeliveryMode, Subscriber, SubscriberState};
    /// use std::sync::Arc;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = Arc::new(MemoryStore::new());
    /// let bus = Bus::builder().store(Arc::clone(&store)).build();
    /// bus.subscribe(
    ///     Subscriber::new("projector", handler_fn(|_, _| async { Ok(()) }))
    ///         .topic("order.*")
    ///         .mode(DeliveryMode::Durable),
    /// )
    /// .unwrap();
    /// bus.set_enabled("projector", false).await.unwrap();
    /// assert_eq!(bus.subscriber("projector").unwrap().state, SubscriberState::Disabled);
    /// assert_eq!(store.load_enabled("projector").await.unwrap(), Some(false));
    /// bus.shutdown().await;
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`DurableError::UnknownSubscriber`] when no subscriber has this name;
    /// [`DurableError::Store`] when the store failed: the state has changed
    /// here all the same, and the runner keeps trying to save it.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), DurableError> {
        let core = self
            .inner
            .read_registry()
            .entries
            .iter()
            .find(|e| &*e.core.name == name)
            .map(|e| Arc::clone(&e.core))
            .ok_or_else(|| DurableError::UnknownSubscriber(name.to_owned()))?;
        core.set_enabled(enabled);
        if let Some(p) = &core.persisted {
            core.save_enabled(p).await?;
        }
        Ok(())
    }

    /// The subscribers, in subscription order.
    pub fn subscribers(&self) -> Vec<SubscriberInfo> {
        self.inner
            .read_registry()
            .entries
            .iter()
            .map(|e| e.info())
            .collect()
    }

    /// One subscriber.
    pub fn subscriber(&self, name: &str) -> Option<SubscriberInfo> {
        self.inner
            .read_registry()
            .entries
            .iter()
            .find(|e| &*e.core.name == name)
            .map(|e| e.info())
    }

    /// The event store this bus appends to, if it was built on one.
    pub fn event_store(&self) -> Option<&Arc<dyn EventStore>> {
        self.inner.store.as_ref().map(|s| &s.events)
    }

    /// The dead-letter store, if the bus keeps dead letters.
    pub fn dead_letter_store(&self) -> Option<&Arc<dyn DeadLetterStore>> {
        self.inner.dead_letters.as_ref()
    }

    /// Lists dead letters, oldest first.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Store`] when the store fails; an empty list when
    /// the bus keeps no dead letters.
    pub async fn dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        match &self.inner.dead_letters {
            Some(store) => store.list(query).await,
            None => Ok(Vec::new()),
        }
    }

    /// One dead letter.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::NotFound`], or [`DeadLetterError::Store`].
    pub async fn dead_letter(&self, id: Uuid) -> Result<DeadLetter, DeadLetterError> {
        self.inner
            .dead_letter_store()?
            .get(id)
            .await?
            .ok_or(DeadLetterError::NotFound(id))
    }

    /// Delivers a dead letter's event again, to its subscriber only, through
    /// the subscriber's whole stack (retries included), whether or not the
    /// subscriber is enabled. On success the dead letter is removed; on
    /// failure it is updated with the new attempts.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::NotFound`], [`DeadLetterError::SubscriberGone`] or
    /// [`DeadLetterError::Store`].
    pub async fn retry_dead_letter(&self, id: Uuid) -> Result<RetryOutcome, DeadLetterError> {
        let store = self.inner.dead_letter_store()?;
        let letter = store.get(id).await?.ok_or(DeadLetterError::NotFound(id))?;
        let entry = self
            .inner
            .read_registry()
            .entries
            .iter()
            .find(|e| *e.core.name == letter.subscriber)
            .cloned();
        // A broker subscriber's dead letter goes back through the broker, to
        // its group only; so does one of a group this process does not run.
        let remote = entry
            .as_ref()
            .is_none_or(|e| e.mode == DeliveryMode::Broker);
        if let (true, Some(transport)) = (remote, &self.inner.transport) {
            transport
                .redeliver(&letter.subscriber, &letter.event)
                .await?;
            store.remove(id).await?;
            crate::metrics::dead_letter_resolved(&letter.subscriber, "retried");
            return Ok(RetryOutcome::Redelivered);
        }
        let core =
            entry
                .map(|e| Arc::clone(&e.core))
                .ok_or_else(|| DeadLetterError::SubscriberGone {
                    id,
                    subscriber: letter.subscriber.clone(),
                })?;
        let ctx = Context::for_delivery(&core.ctx, &letter.event)
            .with_attempt(letter.attempts.saturating_add(1));
        match core.attempt(&letter.event, &ctx).await {
            Ok(()) => {
                core.handled.fetch_add(1, Ordering::Relaxed);
                store.remove(id).await?;
                crate::metrics::dead_letter_resolved(&letter.subscriber, "retried");
                Ok(RetryOutcome::Handled)
            }
            Err(err) if err.disposition() == Disposition::Skip => {
                core.skipped.fetch_add(1, Ordering::Relaxed);
                store.remove(id).await?;
                crate::metrics::dead_letter_resolved(&letter.subscriber, "retried");
                Ok(RetryOutcome::Handled)
            }
            Err(err) => {
                let error = err.to_string();
                // A durable subscriber's stack parks nothing (its runner
                // does): this attempt is added to the dead letter here.
                let err = match (&core.durable, err.dead_letter_id()) {
                    (Some(_), None) => park(&**store, &letter.event, &ctx, err).await.err(),
                    (_, _) => Some(err),
                };
                if let Some(err) = err {
                    let _ = core.failed_with(&letter.event, err);
                }
                Ok(RetryOutcome::Failed {
                    error,
                    dead_letter: store.get(id).await?,
                })
            }
        }
    }

    /// Retries every dead letter that `query` selects, one after the other,
    /// as [`retry_dead_letter`](Self::retry_dead_letter) does; returns each
    /// one's outcome. A dead letter whose subscriber is gone is reported
    /// with its error and left in place.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Store`] when listing fails.
    pub async fn retry_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<(Uuid, Result<RetryOutcome, DeadLetterError>)>, DeadLetterError> {
        let letters = self.dead_letters(query).await?;
        let mut outcomes = Vec::with_capacity(letters.len());
        for letter in letters {
            outcomes.push((letter.id, self.retry_dead_letter(letter.id).await));
        }
        Ok(outcomes)
    }

    /// Discards a dead letter.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::NotFound`], or [`DeadLetterError::Store`].
    pub async fn discard_dead_letter(&self, id: Uuid) -> Result<DeadLetter, DeadLetterError> {
        let letter = self
            .inner
            .dead_letter_store()?
            .remove(id)
            .await?
            .ok_or(DeadLetterError::NotFound(id))?;
        crate::metrics::dead_letter_resolved(&letter.subscriber, "discarded");
        Ok(letter)
    }

    /// How many dead letters each subscriber has in the store (subscribers
    /// with none are absent), counted by the store so that dead letters
    /// recorded by other processes sharing it are included.
    ///
    /// Each count is also set as the gauge `herald_dead_letters` (label
    /// `subscriber`) through the [`metrics`](https://docs.rs/metrics)
    /// facade, and the bus's own subscribers without dead letters are set
    /// to 0: an application that exports metrics calls this when it is
    /// scraped. Without a recorder installed the gauges cost nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald::DeadLetterError> {
    /// let bus = herald::Bus::new();
    /// assert!(bus.dead_letter_counts().await?.is_empty());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Store`] when the store fails; an empty map when
    /// the bus keeps no dead letters.
    pub async fn dead_letter_counts(&self) -> Result<BTreeMap<String, u64>, DeadLetterError> {
        let counts = match &self.inner.dead_letters {
            Some(store) => store.counts().await?,
            None => BTreeMap::new(),
        };
        for entry in self.inner.read_registry().entries.iter() {
            if !counts.contains_key(&*entry.core.name) {
                crate::metrics::dead_letter_count(&entry.core.name, 0);
            }
        }
        for (subscriber, count) in &counts {
            crate::metrics::dead_letter_count(subscriber, *count);
        }
        Ok(counts)
    }

    /// Moves a durable subscriber's checkpoint so that it receives events
    /// again: from the beginning, after a position, or from a time. Returns
    /// the new checkpoint, once saved; the subscriber finishes the batch in
    /// hand first.
    ///
    /// For a [`competing`](Subscriber::competing) subscriber, every
    /// partition's checkpoint moves, in the lease store; the members that
    /// hold them (in this process or another) pick the change up at their
    /// next renewal, and a batch in flight cannot save over it.
    ///
    /// # Errors
    ///
    /// [`DurableError`] when no such subscriber runs, it is not durable, or
    /// the store fails.
    pub async fn replay(&self, name: &str, from: ReplayFrom) -> Result<u64, DurableError> {
        let entry = self.inner.durable_entry(name)?;
        let (Some(runner), Some(store)) = (&entry.durable, &self.inner.store) else {
            return Err(DurableError::NotDurable(name.to_owned()));
        };
        let position = match from {
            ReplayFrom::Beginning => 0,
            ReplayFrom::Position(p) => p,
            ReplayFrom::Time(t) => {
                let first = store
                    .events
                    .read_all(ReadAll::after(0).since(t).limit(1))
                    .try_next()
                    .await?;
                match first.and_then(|e| e.position()) {
                    Some(p) => p - 1,
                    None => store.events.head().await?,
                }
            }
        };
        if runner.rewind(position).await {
            Ok(position)
        } else {
            Err(DurableError::NotRunning(name.to_owned()))
        }
    }

    /// How many positions a durable subscriber is behind the store's head;
    /// for a [`competing`](Subscriber::competing) subscriber, the least
    /// advanced of its partitions, whichever process holds it.
    ///
    /// # Errors
    ///
    /// [`DurableError`] when no such subscriber runs, it is not durable, or
    /// the store fails.
    pub async fn lag(&self, name: &str) -> Result<u64, DurableError> {
        let entry = self.inner.durable_entry(name)?;
        let (Some(runner), Some(store)) = (&entry.durable, &self.inner.store) else {
            return Err(DurableError::NotDurable(name.to_owned()));
        };
        let head = store.events.head().await?;
        Ok(head.saturating_sub(runner.current_checkpoint().await?))
    }

    /// Waits until a [`Broker`](DeliveryMode::Broker) subscriber's consumer
    /// group is declared on the broker and consumed from: events published
    /// from then on reach it. Returns at once for other subscribers.
    ///
    /// # Errors
    ///
    /// [`UnknownSubscriber`], also when the bus shut down before the
    /// consumer opened.
    pub async fn ready(&self, name: &str) -> Result<(), UnknownSubscriber> {
        let entry = self
            .inner
            .read_registry()
            .entries
            .iter()
            .find(|e| &*e.core.name == name)
            .cloned()
            .ok_or_else(|| UnknownSubscriber(name.to_owned()))?;
        match &entry.broker {
            Some(broker) if !broker.ready().await => Err(UnknownSubscriber(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// The transport the bus was built with, if any.
    pub fn transport(&self) -> Option<&Arc<dyn Transport>> {
        self.inner.transport.as_ref()
    }

    /// Stops accepting events and waits until every event accepted so far
    /// was handled or dead-lettered by the async subscribers.
    ///
    /// Later `publish` calls return [`PublishError::ShutDown`]. Calling it
    /// again returns at once.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let entries: Vec<Arc<Entry>> = self.inner.read_registry().entries.clone();
        for entry in &entries {
            if let Some(q) = &entry.queue {
                q.sender.store(None);
            }
        }
        for entry in &entries {
            entry.drain().await;
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("subscribers", &self.subscribers().len())
            .field("shut_down", &self.is_shut_down())
            .finish_non_exhaustive()
    }
}

impl BusInner {
    fn read_registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        // Registry updates are single pushes and removes; a panic elsewhere
        // cannot leave it half-updated.
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_registry(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    fn dead_letter_store(&self) -> Result<&Arc<dyn DeadLetterStore>, DeadLetterError> {
        self.dead_letters
            .as_ref()
            .ok_or_else(|| DeadLetterError::Store("this bus keeps no dead letters".into()))
    }

    fn durable_entry(&self, name: &str) -> Result<Arc<Entry>, DurableError> {
        let entry = self
            .read_registry()
            .entries
            .iter()
            .find(|e| &*e.core.name == name)
            .cloned()
            .ok_or_else(|| DurableError::UnknownSubscriber(name.to_owned()))?;
        if entry.durable.is_none() {
            return Err(DurableError::NotDurable(name.to_owned()));
        }
        Ok(entry)
    }

    fn with_core(&self, name: &str, f: impl FnOnce(&Core)) -> Result<(), UnknownSubscriber> {
        let reg = self.read_registry();
        let entry = reg
            .entries
            .iter()
            .find(|e| &*e.core.name == name)
            .ok_or_else(|| UnknownSubscriber(name.to_owned()))?;
        f(&entry.core);
        Ok(())
    }

    /// Called with the registry's write lock held, so no route computed from
    /// the old registry can be cached after this.
    fn invalidate_routes(&self, reg: &mut Registry) {
        reg.generation += 1;
        self.routes.store(Arc::new(RouteCache {
            generation: reg.generation,
            routes: HashMap::default(),
        }));
    }

    fn subscribe(&self, sub: Subscriber) -> Result<(), SubscribeError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SubscribeError::ShutDown);
        }
        if sub.name.is_empty() || sub.name.len() > 255 {
            return Err(SubscribeError::InvalidName(sub.name));
        }
        if sub.name.starts_with(crate::relay::CHECKPOINT_PREFIX) {
            return Err(SubscribeError::ReservedName(sub.name));
        }
        if sub.topics.is_empty() {
            return Err(SubscribeError::NoTopics(sub.name));
        }
        let topics = sub
            .topics
            .iter()
            .map(|t| TopicPattern::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        let brokered = sub.mode == DeliveryMode::Broker;
        let durable_mode = sub.mode == DeliveryMode::Durable;
        // A broker subscriber's retries are the broker's redeliveries, and a
        // durable subscriber's are scheduled by its runner (so that a
        // failing event does not hold back other streams): their stacks get
        // no retry layer; the policy is still checked here.
        let (retry, broker_retry, durable_retry) = match (sub.retry.attempts(), sub.mode) {
            (_, DeliveryMode::Broker) => {
                sub.retry.validate()?;
                (None, Some(sub.retry), None)
            }
            (_, DeliveryMode::Durable) => {
                sub.retry.validate()?;
                (None, None, Some(sub.retry))
            }
            (1, _) => (None, None, None),
            _ => (Some(RetryLayer::new(sub.retry)?), None, None),
        };

        if sub.concurrency == 0 {
            return Err(crate::ConfigError::Zero("concurrency").into());
        }
        if sub.queue_capacity == Some(0) {
            return Err(crate::ConfigError::Zero("queue capacity").into());
        }
        if sub.timeout == Some(Duration::ZERO) {
            return Err(crate::ConfigError::Zero("timeout").into());
        }
        if sub.mode == DeliveryMode::Durable && self.store.is_none() {
            return Err(SubscribeError::NoStore(sub.name));
        }
        if brokered && self.transport.is_none() {
            return Err(SubscribeError::NoTransport(sub.name));
        }
        if brokered && sub.prefetch == 0 {
            return Err(crate::ConfigError::Zero("prefetch").into());
        }
        if sub.competing.is_some() && sub.mode != DeliveryMode::Durable {
            return Err(SubscribeError::CompetingNotDurable(sub.name));
        }
        if sub.competing == Some(0) {
            return Err(crate::ConfigError::Zero("partitions").into());
        }
        if sub.competing.is_some() && sub.lease_ttl.is_zero() {
            return Err(crate::ConfigError::Zero("lease ttl").into());
        }
        let group = match (sub.competing, &self.leases) {
            (None, _) => None,
            (Some(partitions), Some(leases)) => Some((
                GroupSettings {
                    partitions,
                    ttl: sub.lease_ttl,
                },
                Arc::clone(leases),
            )),
            (Some(_), None) => return Err(SubscribeError::NoLeaseStore(sub.name)),
        };
        if sub.batch_size == 0 {
            return Err(crate::ConfigError::Zero("batch size").into());
        }
        if sub.poll_interval.is_zero() {
            return Err(crate::ConfigError::Zero("poll interval").into());
        }
        let runtime = match sub.mode {
            DeliveryMode::Async | DeliveryMode::Durable | DeliveryMode::Broker => Some(
                tokio::runtime::Handle::try_current()
                    .map_err(|_| SubscribeError::NoRuntime(sub.name.clone()))?,
            ),
            DeliveryMode::Inline => None,
        };
        let propagate = sub.propagate_errors && sub.mode == DeliveryMode::Inline;
        // A broker subscriber's dead letters go through its broker; a
        // durable subscriber's runner parks once its retries are spent.
        let dead_letters = if propagate || brokered || durable_mode {
            None
        } else {
            self.dead_letters.clone()
        };
        let durable_failures = durable_retry.map(|retry| DurableFailures {
            retry,
            dead_letters: self.dead_letters.clone(),
        });
        // The direct path skips the stack, so only when the stack would do
        // nothing but trace, catch panics and dead-letter.
        let fast = sub.sync.filter(|_| {
            retry.is_none()
                && sub.timeout.is_none()
                && sub.ledger.is_none()
                && sub.layers.is_empty()
                && self.layers.is_empty()
        });
        let handler = (sub.build)(StackParts {
            retry,
            timeout: sub.timeout.map(TimeoutLayer::new),
            ledger: sub.ledger.map(IdempotencyLayer::new),
            dead_letters: dead_letters.clone().map(DeadLetterLayer::new),
            layers: sub.layers,
            bus_layers: self.layers.clone(),
        });
        let name: Arc<str> = Arc::from(sub.name.as_str());
        let core = Arc::new(Core {
            name: Arc::clone(&name),
            handler,
            fast,
            ctx: Arc::new(ContextShared {
                subscriber: name,
                bus: self.this.clone(),
            }),
            state: AtomicU8::new(if sub.enabled { ENABLED } else { DISABLED }),
            stop_reason: Mutex::new(None),
            propagate,
            dead_letters,
            durable: durable_failures,
            handled: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            persisted: match (sub.mode, &self.store) {
                (DeliveryMode::Durable, Some(store)) => Some(Persisted {
                    store: Arc::clone(&store.checkpoints),
                    every: sub.poll_interval,
                    marks: Mutex::new(Marks::default()),
                    saving: tokio::sync::Mutex::new(()),
                    looked: tokio::sync::Mutex::new(None),
                }),
                _ => None,
            },
            state_watch: tokio::sync::watch::Sender::new(()),
        });

        let mut reg = self.write_registry();
        if reg.entries.iter().any(|e| *e.core.name == *sub.name) {
            return Err(SubscribeError::DuplicateName(sub.name));
        }
        let durable = match (sub.mode, &runtime, &self.store) {
            (DeliveryMode::Durable, Some(rt), Some(store)) => Some(DurableRunner::spawn(
                rt,
                Arc::clone(&core),
                Arc::clone(&store.events),
                Arc::clone(&store.checkpoints),
                DurableSettings {
                    topics: topics.clone(),
                    batch_size: sub.batch_size,
                    concurrency: sub.concurrency,
                    poll_interval: sub.poll_interval,
                    start_from: sub.start_from,
                    group,
                    retries: Some(Arc::clone(&store.checkpoints)),
                },
            )),
            _ => None,
        };
        let broker = match (&runtime, &self.transport, broker_retry) {
            (Some(rt), Some(transport), Some(retry)) => Some(BrokerRunner::spawn(
                rt,
                Arc::new(Brokered {
                    core: Arc::clone(&core),
                    retry,
                }),
                Arc::clone(transport),
                ConsumerSpec::new(sub.name.clone(), topics.clone()).prefetch(sub.prefetch),
                sub.concurrency,
            )),
            _ => None,
        };
        let queue = runtime
            .filter(|_| sub.mode == DeliveryMode::Async)
            .map(|rt| {
                let capacity = sub.queue_capacity.unwrap_or(self.queue_capacity);
                let (tx, rx) = mpsc::channel(capacity);
                let worker = rt.spawn(run_worker(Arc::clone(&core), rx, capacity, sub.concurrency));
                Queue {
                    sender: ArcSwapOption::from_pointee(tx),
                    worker: Mutex::new(Some(worker)),
                    capacity,
                    concurrency: sub.concurrency,
                }
            });
        reg.entries.push(Arc::new(Entry {
            core,
            topics,
            mode: sub.mode,
            queue,
            durable,
            broker,
        }));
        self.invalidate_routes(&mut reg);
        Ok(())
    }

    fn route(&self, event_type: &str) -> Result<Arc<Route>, PublishError> {
        if let Some(route) = self.routes.load().routes.get(event_type) {
            return Ok(Arc::clone(route));
        }
        self.route_slow(event_type)
    }

    #[cold]
    fn route_slow(&self, event_type: &str) -> Result<Arc<Route>, PublishError> {
        let event_type = EventType::new(event_type)?;
        let reg = self.read_registry();
        let matching = reg.entries.iter().filter(|e| e.matches(&event_type));
        let route = Arc::new(Route {
            inline: matching
                .clone()
                .filter(|e| e.mode == DeliveryMode::Inline)
                .map(|e| Arc::clone(&e.core))
                .collect(),
            queued: matching
                .filter(|e| e.mode == DeliveryMode::Async)
                .cloned()
                .collect(),
            event_type,
        });
        // The read lock is still held: the generation cannot change under us.
        let generation = reg.generation;
        self.routes.rcu(|cache| {
            if cache.generation != generation || cache.routes.len() >= ROUTE_CACHE_LIMIT {
                return Arc::clone(cache);
            }
            let mut routes = cache.routes.clone();
            routes.insert(Box::from(route.event_type.as_str()), Arc::clone(&route));
            Arc::new(RouteCache { generation, routes })
        });
        Ok(route)
    }

    pub(crate) async fn publish_new(
        this: &Arc<BusInner>,
        event: NewEvent,
    ) -> Result<RecordedEvent, PublishError> {
        this.publish_parts(
            &event.event_type,
            event.stream.as_deref(),
            event.data,
            event.metadata,
            event.id,
        )
        .await
    }

    async fn publish_parts(
        &self,
        event_type: &str,
        stream: Option<&str>,
        data: Payload,
        mut metadata: Metadata,
        id: Option<EventId>,
    ) -> Result<RecordedEvent, PublishError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PublishError::ShutDown);
        }
        let route = self.route(event_type)?;
        let (id, recorded_at) = match id {
            Some(id) => (id, Utc::now()),
            None => id::now(),
        };
        if metadata.correlation_id.is_none() {
            metadata.correlation_id = Some(*id.as_uuid());
        }
        let event = match &self.store {
            None => RecordedEvent::from_parts(RecordedParts {
                id,
                event_type: route.event_type.clone(),
                stream: None,
                version: None,
                position: None,
                recorded_at,
                data,
                metadata,
                origin: None,
            }),
            Some(store) => {
                let stream =
                    StreamName::new(stream.unwrap_or(event_type)).map_err(StoreError::from)?;
                let new = NewEvent::new(route.event_type.as_str().to_owned(), data)
                    .with_id(id)
                    .with_metadata(metadata);
                store.append(&stream, new).await?
            }
        };
        if let (Some(transport), None) = (&self.transport, &self.store) {
            transport.publish(std::slice::from_ref(&event)).await?;
        }
        self.deliver_published(&route, &event).await?;
        Ok(event)
    }

    async fn publish_all(&self, events: Vec<NewEvent>) -> Result<Vec<RecordedEvent>, PublishError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PublishError::ShutDown);
        }
        let routes = events
            .iter()
            .map(|e| self.route(&e.event_type))
            .collect::<Result<Vec<_>, _>>()?;
        let mut prepared = Vec::with_capacity(events.len());
        for (event, route) in events.into_iter().zip(&routes) {
            let (id, recorded_at) = match event.id {
                Some(id) => (id, Utc::now()),
                None => id::now(),
            };
            let mut metadata = event.metadata;
            if metadata.correlation_id.is_none() {
                metadata.correlation_id = Some(*id.as_uuid());
            }
            prepared.push((id, recorded_at, event.stream, event.data, metadata, route));
        }
        let recorded = match &self.store {
            None => prepared
                .into_iter()
                .map(|(id, recorded_at, _, data, metadata, route)| {
                    RecordedEvent::from_parts(RecordedParts {
                        id,
                        event_type: route.event_type.clone(),
                        stream: None,
                        version: None,
                        position: None,
                        recorded_at,
                        data,
                        metadata,
                        origin: None,
                    })
                })
                .collect::<Vec<_>>(),
            Some(store) => {
                let mut parts: Vec<StreamAppend> = Vec::new();
                let mut ids = Vec::with_capacity(prepared.len());
                for (id, _, stream, data, metadata, route) in prepared {
                    let name = stream.as_deref().unwrap_or(route.event_type.as_str());
                    let stream = StreamName::new(name).map_err(StoreError::from)?;
                    let new = NewEvent::new(route.event_type.as_str().to_owned(), data)
                        .with_id(id)
                        .with_metadata(metadata);
                    ids.push(id);
                    // Neighbours in one stream share a part: fewer statements.
                    match parts.last_mut() {
                        Some(last) if last.stream == stream => last.events.push(new),
                        _ => parts.push(StreamAppend::new(stream, ExpectedVersion::Any, vec![new])),
                    }
                }
                store.events.append_all(parts).await?;
                store.read_back(&ids).await?
            }
        };
        if let (Some(transport), None) = (&self.transport, &self.store) {
            transport.publish(&recorded).await?;
        }
        for (event, route) in recorded.iter().zip(&routes) {
            self.deliver_published(route, event).await?;
        }
        Ok(recorded)
    }

    /// Hands a recorded event to the inline subscribers, then to the async
    /// ones' queues.
    async fn deliver_published(
        &self,
        route: &Route,
        event: &RecordedEvent,
    ) -> Result<(), PublishError> {
        tracing::debug!(
            event_id = %event.id(),
            event_type = event.event_type(),
            stream = event.stream(),
            position = event.position(),
            correlation_id = %event.correlation_id(),
            subscribers = route.inline.len() + route.queued.len(),
            "event published"
        );
        for core in route.inline.iter() {
            if !core.is_enabled() {
                continue;
            }
            if let Err(source) = core.deliver(event).await {
                return Err(PublishError::Handler {
                    subscriber: core.name.to_string(),
                    event_type: event.event_type().to_owned(),
                    event_id: event.id(),
                    source,
                });
            }
        }
        for entry in route.queued.iter() {
            if !entry.core.is_enabled() {
                continue;
            }
            let Some(queue) = &entry.queue else { continue };
            let Some(sender) = queue.sender.load_full() else {
                return Err(PublishError::ShutDown);
            };
            if sender.send(event.clone()).await.is_err() {
                return Err(PublishError::ShutDown);
            }
        }
        Ok(())
    }
}

impl BusStore {
    /// The stored forms of events just appended, in the order given.
    async fn read_back(&self, ids: &[EventId]) -> Result<Vec<RecordedEvent>, PublishError> {
        futures_util::stream::iter(ids.iter().copied())
            .map(|id| async move {
                self.events.event(id).await?.ok_or_else(|| {
                    StoreError::backend(format!("event {id} vanished after its append")).into()
                })
            })
            .buffered(16)
            .try_collect()
            .await
    }

    /// Appends one published event and returns it as stored.
    async fn append(
        &self,
        stream: &StreamName,
        event: NewEvent,
    ) -> Result<RecordedEvent, PublishError> {
        let appended = self
            .events
            .append(stream, ExpectedVersion::Any, vec![event])
            .await?;
        let id = appended
            .events
            .first()
            .map(|e| e.id)
            .ok_or_else(|| StoreError::backend("the store appended no event"))?;
        // Read back, so that every subscriber sees the event exactly as
        // stored (the store's recorded-at time, position and version).
        let stored =
            self.events.event(id).await?.ok_or_else(|| {
                StoreError::backend(format!("event {id} vanished after its append"))
            })?;
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Noop;

    impl Handler for Noop {
        async fn handle(&self, _e: &RecordedEvent, _c: &Context) -> crate::HandlerResult {
            Ok(())
        }
    }

    /// Every delivery moves the stack's future into a box, so its size is
    /// paid per subscriber per event: cold paths (retries, dead letters,
    /// timers) must stay out of line.
    #[test]
    fn the_default_stack_future_stays_small() {
        let event = RecordedEvent::from_parts(RecordedParts {
            id: EventId::new(),
            event_type: EventType::new("a.b").unwrap(),
            stream: None,
            version: None,
            position: None,
            recorded_at: Utc::now(),
            data: Payload::null(),
            metadata: Metadata::default(),
            origin: None,
        });
        let store: Arc<dyn DeadLetterStore> = Arc::new(MemoryDeadLetterStore::new());
        let guarded = CatchPanic::new(optional(None::<TimeoutLayer>, Noop));
        let middle: Either<_, BoxHandler> = Either::Left(guarded);
        let retried = optional(RetryLayer::new(RetryPolicy::immediate(3)).ok(), middle);
        let stack = Tracing::new(optional(
            Some(IdempotencyLayer::new(Arc::new(crate::MemoryLedger::new()))),
            optional(Some(DeadLetterLayer::new(store)), retried),
        ));
        let ctx = Context::detached("probe");
        let future = stack.handle(&event, &ctx);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 400, "the stack future grew to {size} bytes");
    }
}
