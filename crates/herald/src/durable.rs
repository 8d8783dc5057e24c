//! Durable delivery: a subscriber fed from an event store, with a persisted
//! checkpoint.
//!
//! The runner reads the global log after the subscriber's checkpoint in
//! batches, hands the matching events to the subscriber's stack (so
//! timeouts, idempotency and the application's layers apply as for any
//! subscriber), and saves the checkpoint once every event up to it was
//! handled, skipped or dead-lettered. A crash between the two means those
//! events are delivered again: delivery is at least once.
//!
//! # Retries
//!
//! The runner, not the stack, carries out the retry policy. An event whose
//! attempt fails with a retryable error is *held back* until its backoff is
//! over, with the events of its stream that come after it (so the stream
//! keeps its order), and the runner reads and delivers the other streams
//! meanwhile: one failing event never stalls the subscriber. Each retry is
//! persisted in the [`CheckpointStore`] (errors so far, due time), so a
//! restart neither forgets how often the event failed nor retries it early
//! (a replay forgets the schedules: its events are delivered afresh).
//! Once the policy gives up, the event is dead-lettered with every attempt's
//! error, and its stream moves on. The checkpoint stays below the first
//! event held back: after a crash, events of other streams handled past it
//! are delivered again (at least once), and at most `MAX_HELD` (10,000)
//! events are held back before the runner stops reading ahead.
//!
//! # Ordering
//!
//! With concurrency 1, events arrive in global position order. With more,
//! the events of a batch are split into lanes by stream, each lane in
//! position order: one stream's events keep their order, different streams
//! run at the same time.
//!
//! # Competing consumers
//!
//! A subscriber declared [`competing`](crate::Subscriber::competing) runs
//! this loop once per partition that its process holds a lease on (see the
//! `competing` module): each worker reads the log after its partition's
//! checkpoint and delivers only its partition's streams. Saves go through
//! the [`LeaseStore`](crate::store::LeaseStore), fenced by the lease, and a
//! worker stops before its lease could expire when renewals fail.
//!
//! Each worker reads the whole log (filtered by topic in the store, by
//! partition here), so a process holding `k` partitions reads the log `k`
//! times: cheap next to the handlers' own work for a few dozen partitions,
//! and the price of needing no partition column in the store.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::competing::{Coordinator, GroupSettings, GroupShared, group_checkpoint};
use crate::error::AttemptError;
use crate::event::RecordedEvent;
use crate::id::EventId;
use crate::store::{
    CheckpointStore, EventStore, Lease, LeaseStore, ReadAll, ScheduledRetry, StoreError,
    partition_of,
};
use crate::topic::TopicPattern;

/// Where a durable subscriber that has no checkpoint yet starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StartFrom {
    /// From the first event in the store: the subscriber sees the history.
    #[default]
    Beginning,
    /// From the events appended after it first subscribed.
    Now,
}

/// Where [`Bus::replay`](crate::Bus::replay) moves a durable subscriber's
/// checkpoint back (or forward) to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplayFrom {
    /// The first event in the store.
    Beginning,
    /// The events after this position.
    Position(u64),
    /// The events recorded at or after this time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// A rewind asked of a running subscriber: the new checkpoint and who to
/// tell once it is saved.
pub(crate) type Rewind = (u64, oneshot::Sender<()>);

/// Settings of a durable subscriber.
#[derive(Clone)]
pub(crate) struct DurableSettings {
    pub(crate) topics: Vec<TopicPattern>,
    pub(crate) batch_size: usize,
    pub(crate) concurrency: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) start_from: StartFrom,
    /// Set for a competing subscriber, with the store of its leases.
    pub(crate) group: Option<(GroupSettings, Arc<dyn LeaseStore>)>,
    /// Where scheduled retries are persisted (`None`: the runner's deliveries
    /// never ask for one, as the relay's).
    pub(crate) retries: Option<Arc<dyn CheckpointStore>>,
}

/// At most how many events a runner holds back behind failing ones before
/// it stops reading further: the memory a stream that keeps failing may
/// cost, after which it holds back the other streams too.
const MAX_HELD: usize = 10_000;

/// What the delivery of one event came to, for the checkpoint.
pub(crate) enum Settled {
    /// Handled, skipped or dead-lettered: the checkpoint may pass it.
    Done,
    /// Failed without being parked, or the subscriber stopped: it must be
    /// delivered again.
    Pending,
    /// Failed, to be tried again after `after`; `errors` holds every failed
    /// attempt so far. The runner holds back the rest of its stream until
    /// then and goes on with the other streams.
    Retry {
        after: Duration,
        errors: Vec<AttemptError>,
    },
}

/// What a batch came to: the position up to which every event is settled
/// or held back, and the events newly held back.
pub(crate) struct Batch {
    pub(crate) reached: u64,
    held: Vec<HeldEvent>,
}

impl Batch {
    /// Every event up to `reached` settled, none held back.
    pub(crate) fn reached(reached: u64) -> Self {
        Self {
            reached,
            held: Vec::new(),
        }
    }
}

/// An event held back: failed and waiting for its retry, or behind such an
/// event in its stream (then with no errors, and due at once).
pub(crate) struct HeldEvent {
    event: RecordedEvent,
    errors: Vec<AttemptError>,
    due: tokio::time::Instant,
}

impl HeldEvent {
    fn behind(event: RecordedEvent) -> Self {
        Self {
            event,
            errors: Vec::new(),
            due: tokio::time::Instant::now(),
        }
    }

    fn position(&self) -> u64 {
        self.event.position().unwrap_or_default()
    }
}

fn stream_of(event: &RecordedEvent) -> &str {
    event.stream().unwrap_or_default()
}

/// The events a runner holds back, by stream, each stream's in order: the
/// first of each is the next to try. The checkpoint stays below the first
/// of them all; reading and delivering go on past them.
#[derive(Default)]
pub(crate) struct Held {
    streams: HashMap<String, VecDeque<HeldEvent>>,
    positions: BTreeSet<u64>,
    /// Retries scheduled before a restart, applied when their events are
    /// read again.
    restored: HashMap<EventId, ScheduledRetry>,
}

impl Held {
    fn blocks(&self, stream: &str) -> bool {
        !self.streams.is_empty() && self.streams.contains_key(stream)
    }

    fn restored(&self, event: EventId) -> Option<&ScheduledRetry> {
        if self.restored.is_empty() {
            return None;
        }
        self.restored.get(&event)
    }

    fn len(&self) -> usize {
        self.positions.len()
    }

    /// Holds `held` back at the end of its stream, unless it already is
    /// (read again after a partial batch).
    fn hold(&mut self, held: HeldEvent) {
        let position = held.position();
        let stream = stream_of(&held.event);
        // An event before its stream's first held-back one was settled
        // before that one failed: read again, it is not held behind it.
        if self
            .streams
            .get(stream)
            .and_then(VecDeque::front)
            .is_some_and(|first| first.position() > position)
        {
            return;
        }
        if self.positions.insert(position) {
            self.streams
                .entry(stream.to_owned())
                .or_default()
                .push_back(held);
        }
    }

    /// The checkpoint may not pass the first event held back.
    fn bound(&self, reached: u64) -> u64 {
        self.positions
            .first()
            .map_or(reached, |first| reached.min(first.saturating_sub(1)))
    }

    /// When the next held-back stream can be tried.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.streams
            .values()
            .filter_map(|q| q.front().map(|h| h.due))
            .min()
    }

    /// Takes out the streams whose first event is due.
    fn take_due(&mut self, now: tokio::time::Instant) -> Vec<VecDeque<HeldEvent>> {
        let due: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, q)| q.front().is_some_and(|h| h.due <= now))
            .map(|(s, _)| s.clone())
            .collect();
        due.iter().filter_map(|s| self.streams.remove(s)).collect()
    }

    /// Puts back what is left of a stream taken out by `take_due`, and
    /// forgets the settled events' positions.
    fn put_back(&mut self, queue: VecDeque<HeldEvent>, settled: &[u64]) {
        for p in settled {
            self.positions.remove(p);
        }
        if let Some(first) = queue.front() {
            self.streams
                .insert(stream_of(&first.event).to_owned(), queue);
        }
    }

    fn clear(&mut self) {
        self.streams.clear();
        self.positions.clear();
    }
}

/// Delivers one event; implemented by the bus's subscriber core.
pub(crate) trait Deliver: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn is_enabled(&self) -> bool;
    /// Syncs the enabled state with the store (saving changes made here,
    /// following changes made elsewhere), then says whether it is enabled.
    fn refresh_enabled(&self) -> impl std::future::Future<Output = bool> + Send;
    /// Delivers `event`; `prior` holds the errors of its earlier failed
    /// attempts (empty for a first delivery).
    fn deliver_durable(
        &self,
        event: &RecordedEvent,
        prior: &[AttemptError],
    ) -> impl std::future::Future<Output = Settled> + Send;

    /// Delivers a batch read after the checkpoint, up to `last` (the
    /// position the checkpoint may move to once every event is settled;
    /// `head` is the store's head as read before the batch); returns the
    /// position up to which every event is settled or held back (events of
    /// the streams in `held` are held back behind them). Subscribers
    /// deliver event by event; the relay overrides it to publish the batch
    /// at once.
    fn deliver_batch(
        &self,
        events: Vec<RecordedEvent>,
        concurrency: usize,
        last: u64,
        head: u64,
        fence: Option<&Fence>,
        held: &Held,
    ) -> impl std::future::Future<Output = Batch> + Send
    where
        Self: Sized,
    {
        let _ = head;
        deliver_each(self, events, concurrency, last, fence, held)
    }
}

/// A running durable subscriber.
pub(crate) struct DurableRunner {
    stop: watch::Sender<bool>,
    rewind: mpsc::UnboundedSender<Rewind>,
    task: Mutex<Option<JoinHandle<()>>>,
    checkpoint: Arc<AtomicU64>,
    name: String,
    group: Option<Arc<GroupShared>>,
}

impl DurableRunner {
    pub(crate) fn spawn<D: Deliver>(
        runtime: &tokio::runtime::Handle,
        core: Arc<D>,
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        settings: DurableSettings,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let (rewind, rewinds) = mpsc::unbounded_channel();
        let checkpoint = Arc::new(AtomicU64::new(0));
        let signals = Signals {
            stop: stopped,
            rewinds,
        };
        let name = core.name().to_owned();
        let (task, group) = match settings.group.clone() {
            Some((group, leases)) => {
                let shared = Arc::new(GroupShared {
                    leases,
                    partitions: group.partitions,
                    owned: Mutex::new(Vec::new()),
                    initial: AtomicU64::new(0),
                });
                let coordinator = Coordinator {
                    core,
                    store,
                    settings,
                    group,
                    shared: Arc::clone(&shared),
                    checkpoint: Arc::clone(&checkpoint),
                };
                (runtime.spawn(coordinator.run(signals)), Some(shared))
            }
            None => (
                runtime.spawn(run(
                    core,
                    store,
                    checkpoints,
                    settings,
                    signals,
                    Arc::clone(&checkpoint),
                )),
                None,
            ),
        };
        Self {
            stop,
            rewind,
            task: Mutex::new(Some(task)),
            checkpoint,
            name,
            group,
        }
    }

    /// The partitions this process works on, for a competing subscriber.
    pub(crate) fn owned_partitions(&self) -> Option<Vec<u32>> {
        self.group.as_ref().map(|g| g.owned())
    }

    /// The checkpoint as the store has it now: for a competing subscriber,
    /// the least of its partitions' checkpoints.
    pub(crate) async fn current_checkpoint(&self) -> Result<u64, StoreError> {
        match &self.group {
            Some(group) => group_checkpoint(group, &self.name).await,
            None => Ok(self.checkpoint()),
        }
    }

    /// The last checkpoint saved or loaded (for a competing subscriber, the
    /// least of its partitions' checkpoints when last looked at).
    pub(crate) fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Moves the checkpoint to `position` once the current batch is done;
    /// returns once it is saved, or `false` if the runner has ended.
    pub(crate) async fn rewind(&self, position: u64) -> bool {
        let (done, saved) = oneshot::channel();
        if self.rewind.send((position, done)).is_err() {
            return false;
        }
        saved.await.is_ok()
    }

    /// Asks the runner to stop after its current batch, without waiting.
    pub(crate) fn ask_to_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Asks the runner to stop after its current batch, and waits for it.
    pub(crate) async fn stop(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "durable subscriber task ended abnormally");
            }
        }
    }
}

/// What a runner listens to besides the store.
pub(crate) struct Signals {
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) rewinds: mpsc::UnboundedReceiver<Rewind>,
}

/// Waits until the store's head moves, `interval` passes, a rewind comes
/// (kept in `pending`), or a stop is asked; returns whether to stop.
async fn idle(
    head: &mut Option<watch::Receiver<u64>>,
    known_head: u64,
    interval: Duration,
    signals: &mut Signals,
    pending: &mut Option<Rewind>,
) -> bool {
    let stop = &mut signals.stop;
    let moved = async {
        match head {
            Some(rx) => {
                let _ = rx.wait_for(|h| *h > known_head).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = moved => {}
        _ = tokio::time::sleep(interval) => {}
        _ = stop.wait_for(|s| *s) => {}
        Some(rewind) = signals.rewinds.recv() => *pending = Some(rewind),
    }
    *stop.borrow()
}

/// Waits `interval` (or for a rewind or a stop); returns whether to stop.
async fn pause(interval: Duration, signals: &mut Signals, pending: &mut Option<Rewind>) -> bool {
    idle(&mut None, u64::MAX, interval, signals, pending).await
}

/// Retries a store call until it succeeds or a stop is asked.
pub(crate) async fn persist<T, F, Fut>(
    what: &str,
    subscriber: &str,
    stop: &mut watch::Receiver<bool>,
    mut call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(value) => return Some(value),
            Err(err) => {
                tracing::error!(subscriber, error = %err, retry_in = ?backoff, "durable subscriber could not {what}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn run<D: Deliver>(
    core: Arc<D>,
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    settings: DurableSettings,
    mut signals: Signals,
    shared_checkpoint: Arc<AtomicU64>,
) {
    let mut stop = signals.stop.clone();
    let name = core.name().to_owned();
    let Some(saved) = persist("load its checkpoint", &name, &mut stop, || {
        checkpoints.load(&name)
    })
    .await
    else {
        return;
    };
    let checkpoint = match (saved, settings.start_from) {
        (Some(p), _) => p,
        (None, StartFrom::Beginning) => 0,
        (None, StartFrom::Now) => {
            let Some(head) = persist("read the head", &name, &mut stop, || store.head()).await
            else {
                return;
            };
            if persist("save its checkpoint", &name, &mut stop, || {
                checkpoints.save(&name, head)
            })
            .await
            .is_none()
            {
                return;
            }
            head
        }
    };
    let place = Place::Solo { checkpoints, name };
    drive(
        &*core,
        &*store,
        &settings,
        place,
        checkpoint,
        &mut signals,
        &shared_checkpoint,
    )
    .await;
}

/// Where a runner keeps its checkpoint.
pub(crate) enum Place {
    /// The subscriber's own checkpoint in the checkpoint store.
    Solo {
        checkpoints: Arc<dyn CheckpointStore>,
        name: String,
    },
    /// One partition of a competing group: only its streams, and saves
    /// fenced by its lease.
    Partition(PartitionPlace),
}

/// A partition that this process holds the lease on.
pub(crate) struct PartitionPlace {
    pub(crate) leases: Arc<dyn LeaseStore>,
    pub(crate) group: String,
    pub(crate) member: String,
    pub(crate) partitions: u32,
    pub(crate) lease: Lease,
    pub(crate) fence: Arc<Fence>,
}

/// The moment until which a worker may deliver the events of a partition:
/// a little before its lease could expire, moved on by every renewal.
///
/// A worker checks it before each event; once it has passed, the worker
/// stops (self-fencing), so it never works on a partition another member
/// may have taken.
pub(crate) struct Fence {
    deadline: Mutex<tokio::time::Instant>,
}

impl Fence {
    pub(crate) fn new(deadline: tokio::time::Instant) -> Self {
        Self {
            deadline: Mutex::new(deadline),
        }
    }

    /// Moves the deadline on (never back).
    pub(crate) fn extend(&self, deadline: tokio::time::Instant) {
        let mut d = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        if deadline > *d {
            *d = deadline;
        }
    }

    /// Whether the lease is still safely held.
    pub(crate) fn holds(&self) -> bool {
        tokio::time::Instant::now() < *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Place {
    fn name(&self) -> String {
        match self {
            Self::Solo { name, .. } => name.clone(),
            Self::Partition(p) => format!("{}[{}]", p.group, p.lease.partition),
        }
    }

    fn fence(&self) -> Option<&Fence> {
        match self {
            Self::Solo { .. } => None,
            Self::Partition(p) => Some(&p.fence),
        }
    }

    /// Whether `event` is this runner's to deliver.
    fn owns(&self, event: &RecordedEvent) -> bool {
        match self {
            Self::Solo { .. } => true,
            Self::Partition(p) => {
                partition_of(event.stream().unwrap_or_default(), p.partitions) == p.lease.partition
            }
        }
    }

    /// Saves the checkpoint; `false` when the runner must end (a stop was
    /// asked while the store failed, or the partition's lease is lost).
    async fn save(&self, position: u64, stop: &mut watch::Receiver<bool>) -> bool {
        match self {
            Self::Solo { checkpoints, name } => persist("save its checkpoint", name, stop, || {
                checkpoints.save(name, position)
            })
            .await
            .is_some(),
            Self::Partition(p) => {
                let name = self.name();
                let mut backoff = Duration::from_millis(50);
                // The store's save is fenced by the lease itself (owner,
                // epoch, unexpired), so it is tried even when the local
                // fence has passed: events handled while the fence held
                // are then not delivered again just because a renewal came
                // late.
                loop {
                    match p.leases.save(&p.group, &p.member, p.lease, position).await {
                        Ok(true) => return true,
                        Ok(false) => {
                            tracing::info!(subscriber = %name, "partition lease lost or partition rewound: stopping work on it");
                            return false;
                        }
                        Err(err) if !p.fence.holds() => {
                            tracing::warn!(subscriber = %name, error = %err, "could not save the checkpoint before the lease could expire: stopping work on the partition");
                            return false;
                        }
                        Err(err) => {
                            tracing::error!(subscriber = %name, error = %err, retry_in = ?backoff, "durable subscriber could not save its checkpoint");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = stop.wait_for(|s| *s) => return false,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        }
    }
}

/// The read, deliver and save loop, from `checkpoint`, until a stop (or,
/// for a partition, until its lease is lost).
///
/// Events whose delivery is to be retried later are held back, with the
/// rest of their stream, while the loop reads and delivers on; the
/// checkpoint stays below the first event held back.
pub(crate) async fn drive<D: Deliver>(
    core: &D,
    store: &dyn EventStore,
    settings: &DurableSettings,
    place: Place,
    mut checkpoint: u64,
    signals: &mut Signals,
    shared_checkpoint: &AtomicU64,
) {
    let mut stop = signals.stop.clone();
    let mut pending: Option<Rewind> = None;
    let name = place.name();
    shared_checkpoint.store(checkpoint, Ordering::Release);
    let mut head = store.watch_head();
    let mut failures = 0u32;
    // Read and either settled or held back up to here.
    let mut cursor = checkpoint;
    let mut held = Held::default();
    let mut held_back = crate::metrics::HeldBack::new(core.name());
    if let Some(retries) = &settings.retries {
        held.restored = restore(&**retries, core.name(), &place, checkpoint, &mut stop).await;
    }
    loop {
        if *stop.borrow() {
            return;
        }
        if place.fence().is_some_and(|f| !f.holds()) {
            tracing::warn!(subscriber = %name, "lease not renewed in time: stopping work on the partition");
            return;
        }
        if pending.is_none() {
            pending = signals.rewinds.try_recv().ok();
        }
        if let Some((position, done)) = pending.take() {
            if !place.save(position, &mut stop).await {
                return;
            }
            checkpoint = position;
            cursor = position;
            held.clear();
            held.restored.clear();
            if let Some(retries) = &settings.retries {
                forget_retries(&**retries, core.name()).await;
            }
            shared_checkpoint.store(checkpoint, Ordering::Release);
            tracing::info!(subscriber = %name, checkpoint, "durable subscriber rewound");
            let _ = done.send(());
            continue;
        }
        if !core.refresh_enabled().await {
            if pause(settings.poll_interval, signals, &mut pending).await {
                return;
            }
            continue;
        }
        retry_due(core, &mut held, settings, place.fence()).await;
        held_back.set(held.len());
        let bound = held.bound(cursor);
        if bound > checkpoint {
            if !place.save(bound, &mut stop).await {
                return;
            }
            checkpoint = bound;
            shared_checkpoint.store(checkpoint, Ordering::Release);
        }
        // Until the next held-back stream is due, or the poll interval.
        let wait = held.next_due().map_or(settings.poll_interval, |due| {
            due.saturating_duration_since(tokio::time::Instant::now())
                .min(settings.poll_interval)
        });
        if held.len() >= MAX_HELD {
            if pause(wait, signals, &mut pending).await {
                return;
            }
            continue;
        }
        // The head is read first: every event at or below it is visible, so
        // when the filtered read comes back short, nothing up to the head is
        // left for this subscriber and the cursor can move past the events
        // it does not match.
        let head_before = match store.head().await {
            Ok(h) => h,
            Err(err) => {
                tracing::error!(subscriber = %name, error = %err, "durable subscriber could not read the head");
                if pause(settings.poll_interval, signals, &mut pending).await {
                    return;
                }
                continue;
            }
        };
        let mut query = ReadAll::after(cursor)
            .limit(settings.batch_size)
            .batch_size(settings.batch_size);
        query.topics = settings.topics.clone();
        let batch: Result<Vec<RecordedEvent>, StoreError> =
            store.read_all(query).try_collect().await;
        let mut matching = match batch {
            Ok(events) => events,
            Err(err) => {
                tracing::error!(subscriber = %name, error = %err, "durable subscriber could not read the log");
                if pause(settings.poll_interval, signals, &mut pending).await {
                    return;
                }
                continue;
            }
        };
        let full = matching.len() >= settings.batch_size;
        let last_read = matching.last().and_then(RecordedEvent::position);
        let last = match (full, last_read) {
            (true, Some(p)) => p,
            _ => last_read.unwrap_or(0).max(head_before),
        };
        if last <= cursor {
            if idle(&mut head, cursor, wait, signals, &mut pending).await {
                return;
            }
            continue;
        }
        // A partition's runner passes over the other partitions' events.
        matching.retain(|e| place.owns(e));
        let batch = core
            .deliver_batch(
                matching,
                settings.concurrency,
                last,
                head_before,
                place.fence(),
                &held,
            )
            .await;
        let reached = batch.reached;
        for event in batch.held {
            // A restored schedule is in the store already.
            let restored = held.restored.remove(&event.event.id()).is_some();
            if !restored && !event.errors.is_empty() {
                schedule(settings, core.name(), &event).await;
            }
            held.hold(event);
        }
        held_back.set(held.len());
        cursor = cursor.max(reached);
        let bound = held.bound(cursor);
        if bound > checkpoint {
            if !place.save(bound, &mut stop).await {
                return;
            }
            checkpoint = bound;
            shared_checkpoint.store(checkpoint, Ordering::Release);
        }
        if reached < last {
            if place.fence().is_some_and(|f| !f.holds()) {
                return;
            }
            // Something must be delivered again: back off so that a failing
            // event does not spin.
            failures = failures.saturating_add(1);
            let wait = (Duration::from_millis(100) * failures.min(50)).min(Duration::from_secs(5));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        } else {
            failures = 0;
        }
    }
}

/// The retries scheduled before this runner started, for the events after
/// its checkpoint. A solo runner clears the ones at or below it (left by a
/// clear that failed); a partition's cannot tell which are its own.
async fn restore(
    retries: &dyn CheckpointStore,
    subscriber: &str,
    place: &Place,
    checkpoint: u64,
    stop: &mut watch::Receiver<bool>,
) -> HashMap<EventId, ScheduledRetry> {
    let Some(scheduled) = persist("load its scheduled retries", subscriber, stop, || {
        retries.scheduled_retries(subscriber)
    })
    .await
    else {
        return HashMap::new();
    };
    let mut restored = HashMap::new();
    for retry in scheduled {
        if retry.position > checkpoint {
            restored.insert(retry.event_id, retry);
        } else if matches!(place, Place::Solo { .. }) {
            if let Err(err) = retries.clear_retry(subscriber, retry.event_id).await {
                tracing::warn!(subscriber, error = %err, "could not clear a stale scheduled retry");
            }
        }
    }
    restored
}

/// Persists an event's retry, so that a restart keeps its attempt count and
/// backoff; on failure only that is lost, so it is logged and not retried.
async fn schedule(settings: &DurableSettings, subscriber: &str, held: &HeldEvent) {
    let Some(retries) = &settings.retries else {
        return;
    };
    crate::metrics::durable_retry_scheduled(subscriber);
    let wait = held
        .due
        .saturating_duration_since(tokio::time::Instant::now());
    let retry = ScheduledRetry {
        event_id: held.event.id(),
        position: held.position(),
        errors: held.errors.clone(),
        due: chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
    };
    if let Err(err) = retries.schedule_retry(subscriber, &retry).await {
        tracing::warn!(subscriber, event_id = %retry.event_id, error = %err, "could not persist a scheduled retry; a restart would count its attempts again");
    }
}

/// Tries the held-back streams that are due, each in order, several at
/// once up to the subscriber's concurrency.
async fn retry_due<D: Deliver>(
    core: &D,
    held: &mut Held,
    settings: &DurableSettings,
    fence: Option<&Fence>,
) {
    let due = held.take_due(tokio::time::Instant::now());
    if due.is_empty() {
        return;
    }
    let results: Vec<(VecDeque<HeldEvent>, Vec<u64>)> = futures_util::stream::iter(due)
        .map(|mut queue| async move {
            let mut settled = Vec::new();
            while let Some(front) = queue.front_mut() {
                if !core.is_enabled() || fence.is_some_and(|f| !f.holds()) {
                    break;
                }
                match core.deliver_durable(&front.event, &front.errors).await {
                    Settled::Done => {
                        if let Some(done) = queue.pop_front() {
                            settled.push(done.position());
                            if !done.errors.is_empty() {
                                unschedule(settings, core.name(), done.event.id()).await;
                            }
                        }
                    }
                    Settled::Pending => {
                        // The subscriber stopped, or parking failed: later.
                        front.due = tokio::time::Instant::now() + settings.poll_interval;
                        break;
                    }
                    Settled::Retry { after, errors } => {
                        front.errors = errors;
                        front.due = tokio::time::Instant::now() + after;
                        schedule(settings, core.name(), &*front).await;
                        break;
                    }
                }
            }
            (queue, settled)
        })
        .buffer_unordered(settings.concurrency.max(1))
        .collect()
        .await;
    for (queue, settled) in results {
        held.put_back(queue, &settled);
    }
}

/// Forgets every retry the subscriber has scheduled: a replay delivers
/// its events afresh, attempts counted from 1. Best effort: one left
/// behind only carries an older attempt count.
pub(crate) async fn forget_retries(retries: &dyn CheckpointStore, subscriber: &str) {
    let scheduled = match retries.scheduled_retries(subscriber).await {
        Ok(scheduled) => scheduled,
        Err(err) => {
            tracing::warn!(subscriber, error = %err, "could not list the scheduled retries to forget on a replay");
            return;
        }
    };
    for retry in scheduled {
        if let Err(err) = retries.clear_retry(subscriber, retry.event_id).await {
            tracing::warn!(subscriber, event_id = %retry.event_id, error = %err, "could not forget a scheduled retry on a replay");
        }
    }
}

async fn unschedule(settings: &DurableSettings, subscriber: &str, event: EventId) {
    if let Some(retries) = &settings.retries {
        if let Err(err) = retries.clear_retry(subscriber, event).await {
            tracing::warn!(subscriber, event_id = %event, error = %err, "could not clear a scheduled retry; it is cleared when the subscriber restarts");
        }
    }
}

/// Delivers a batch; returns the position up to which every event is
/// settled or held back (`last` when all are), and the events newly held
/// back.
async fn deliver_each<D: Deliver>(
    core: &D,
    events: Vec<RecordedEvent>,
    concurrency: usize,
    last: u64,
    fence: Option<&Fence>,
    held: &Held,
) -> Batch {
    let lanes = concurrency.max(1).min(events.len().max(1));
    let mut by_lane: Vec<Vec<RecordedEvent>> = vec![Vec::new(); lanes];
    let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    for event in events {
        let lane = if lanes == 1 {
            0
        } else {
            (hasher.hash_one(stream_of(&event)) % lanes as u64) as usize
        };
        by_lane[lane].push(event);
    }
    // A stream goes to one lane, so each lane knows which of its streams
    // it held back.
    let results = futures_util::future::join_all(by_lane.into_iter().map(|lane| async move {
        let mut blocked: HashSet<String> = HashSet::new();
        let mut newly_held = Vec::new();
        for event in lane {
            if !core.is_enabled() || fence.is_some_and(|f| !f.holds()) {
                return (event.position(), newly_held);
            }
            let stream = stream_of(&event);
            if held.blocks(stream) || (!blocked.is_empty() && blocked.contains(stream)) {
                newly_held.push(HeldEvent::behind(event));
                continue;
            }
            if let Some(retry) = held.restored(event.id()) {
                // Failed before a restart: it keeps its attempts and waits
                // out what is left of its backoff.
                let wait = (retry.due - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default();
                blocked.insert(stream.to_owned());
                newly_held.push(HeldEvent {
                    errors: retry.errors.clone(),
                    due: tokio::time::Instant::now() + wait,
                    event,
                });
                continue;
            }
            match core.deliver_durable(&event, &[]).await {
                Settled::Done => {}
                Settled::Pending => return (event.position(), newly_held),
                Settled::Retry { after, errors } => {
                    blocked.insert(stream.to_owned());
                    newly_held.push(HeldEvent {
                        event,
                        errors,
                        due: tokio::time::Instant::now() + after,
                    });
                }
            }
        }
        (None, newly_held)
    }))
    .await;
    // The first event not settled in any lane bounds the cursor; what was
    // held back after it is read again, and kept once.
    let mut first_pending = None::<u64>;
    let mut newly_held = Vec::new();
    for (pending, lane_held) in results {
        if let Some(p) = pending {
            first_pending = Some(first_pending.map_or(p, |f| f.min(p)));
        }
        newly_held.extend(lane_held);
    }
    Batch {
        reached: first_pending.map_or(last, |p| p.saturating_sub(1)),
        held: newly_held,
    }
}
