//! Durable delivery: a subscriber fed from an event store, with a persisted
//! checkpoint.
//!
//! The runner reads the global log after the subscriber's checkpoint in
//! batches, hands the matching events to the subscriber's stack (so retries,
//! dead letters and idempotency apply as for any subscriber), and saves the
//! checkpoint once every event of the batch was handled, skipped or
//! dead-lettered. A crash between the two means the batch is delivered
//! again: delivery is at least once.
//!
//! # Ordering
//!
//! One stream's events arrive in its order, one at a time. With
//! concurrency 1, events arrive in global position order; with more,
//! different streams run at the same time, up to the concurrency.
//!
//! # Retries
//!
//! The runner, not a middleware, applies a durable subscriber's
//! [`RetryPolicy`](crate::RetryPolicy): a failed event waits for its delay
//! without holding a delivery slot, and only its own stream waits behind
//! it; the other streams' events keep going (reading runs up to one batch
//! of unsettled events ahead of the checkpoint). When the policy gives up,
//! the event goes to the dead letters with every attempt's error, and the
//! checkpoint passes it. The checkpoint never passes an event that is
//! waiting for a retry, so a crash delivers it again; its attempt count
//! then starts again from one (the count is kept in memory, the event in
//! the log).
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::competing::{Coordinator, GroupSettings, GroupShared, group_checkpoint};
use crate::error::AttemptError;
use crate::event::RecordedEvent;
use crate::store::{
    CheckpointStore, EventStore, Lease, LeaseStore, ReadAll, StoreError, partition_of,
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
}

/// What the delivery of one event came to, for the checkpoint.
pub(crate) enum Settled {
    /// Handled, skipped or dead-lettered: the checkpoint may pass it.
    Done,
    /// Failed, and the subscriber's retry policy tries it again after this
    /// delay; its stream waits meanwhile, the others go on.
    RetryAfter(Duration),
    /// Failed without being parked, or the subscriber stopped: it must be
    /// delivered again.
    Pending,
}

/// Delivers one event; implemented by the bus's subscriber core.
pub(crate) trait Deliver: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn is_enabled(&self) -> bool;
    /// Syncs the enabled state with the store (saving changes made here,
    /// following changes made elsewhere), then says whether it is enabled.
    fn refresh_enabled(&self) -> impl std::future::Future<Output = bool> + Send;
    /// Delivers attempt `attempt` (from 1) of `event`; `history` holds the
    /// errors of the attempts before, and gets this one's.
    fn deliver_durable(
        &self,
        event: &RecordedEvent,
        attempt: u32,
        history: &mut Vec<AttemptError>,
    ) -> impl std::future::Future<Output = Settled> + Send;
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
                loop {
                    if !p.fence.holds() {
                        tracing::warn!(subscriber = %name, "lease about to expire: stopping work on the partition");
                        return false;
                    }
                    match p.leases.save(&p.group, &p.member, p.lease, position).await {
                        Ok(true) => return true,
                        Ok(false) => {
                            tracing::info!(subscriber = %name, "partition lease lost or partition rewound: stopping work on it");
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

/// One event waiting in its stream's queue: how many attempts it had, and
/// their errors (for the dead letter when the policy gives up).
struct Queued {
    event: RecordedEvent,
    attempt: u32,
    history: Vec<AttemptError>,
}

/// A delivery in flight: the stream, the event and what came of it.
type Flight<'a> = Pin<Box<dyn Future<Output = (Arc<str>, Queued, Settled)> + Send + 'a>>;
/// A stream waiting for a retry's delay: wakes with the stream's name.
type Wait = Pin<Box<dyn Future<Output = Arc<str>> + Send>>;

/// The events read but not yet settled, by stream, and what is running.
///
/// Each stream has a queue; at most one of its events is in flight or
/// waiting for a retry at a time, which keeps the stream's order. Streams
/// whose next event may go are kept by that event's position, so with
/// concurrency 1 events go in global position order, and a stream waiting
/// for a retry lets the others pass.
struct Pipeline<'a> {
    queues: HashMap<Arc<str>, VecDeque<Queued>>,
    /// Streams with an event in flight or waiting for a retry.
    busy: HashSet<Arc<str>>,
    /// Streams whose front event may be delivered, by its position.
    ready: BTreeMap<u64, Arc<str>>,
    /// Positions read and not settled: the least bounds the checkpoint.
    unsettled: BTreeSet<u64>,
    flying: FuturesUnordered<Flight<'a>>,
    waiting: FuturesUnordered<Wait>,
}

impl<'a> Pipeline<'a> {
    fn new() -> Self {
        Self {
            queues: HashMap::new(),
            busy: HashSet::new(),
            ready: BTreeMap::new(),
            unsettled: BTreeSet::new(),
            flying: FuturesUnordered::new(),
            waiting: FuturesUnordered::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.unsettled.is_empty()
    }

    /// Queues an event read from the log.
    fn push(&mut self, event: RecordedEvent) {
        let Some(position) = event.position() else {
            return;
        };
        let stream: Arc<str> = Arc::from(event.stream().unwrap_or_default());
        self.unsettled.insert(position);
        let idle = !self.busy.contains(&stream);
        let queue = self.queues.entry(Arc::clone(&stream)).or_default();
        let idle = idle && queue.is_empty();
        queue.push_back(Queued {
            event,
            attempt: 1,
            history: Vec::new(),
        });
        if idle {
            self.ready.insert(position, stream);
        }
    }

    /// Starts deliveries while there are free slots.
    fn launch<D: Deliver>(&mut self, core: &'a D, concurrency: usize, fence: Option<&Fence>) {
        while self.flying.len() < concurrency {
            if !core.is_enabled() || fence.is_some_and(|f| !f.holds()) {
                return;
            }
            let Some((_, stream)) = self.ready.pop_first() else {
                return;
            };
            let Some(mut item) = self.queues.get_mut(&stream).and_then(VecDeque::pop_front) else {
                continue;
            };
            self.busy.insert(Arc::clone(&stream));
            self.flying.push(Box::pin(async move {
                let settled = core
                    .deliver_durable(&item.event, item.attempt, &mut item.history)
                    .await;
                (stream, item, settled)
            }));
        }
    }

    /// Takes in what a delivery came to.
    fn land(&mut self, stream: Arc<str>, mut item: Queued, settled: Settled, failures: &mut u32) {
        let again = match settled {
            Settled::Done => {
                *failures = 0;
                if let Some(position) = item.event.position() {
                    self.unsettled.remove(&position);
                }
                self.release(&stream);
                return;
            }
            Settled::RetryAfter(delay) => {
                item.attempt = item.attempt.saturating_add(1);
                delay
            }
            Settled::Pending => {
                // Not parked (no dead-letter store, or the store failed, or
                // the subscriber stopped): delivered again after a pause
                // that grows while failures go on.
                *failures = failures.saturating_add(1);
                (Duration::from_millis(100) * (*failures).min(50)).min(Duration::from_secs(5))
            }
        };
        self.queues
            .entry(Arc::clone(&stream))
            .or_default()
            .push_front(item);
        self.waiting.push(Box::pin(async move {
            tokio::time::sleep(again).await;
            stream
        }));
    }

    /// Lets a stream's next event go, if it has one.
    fn release(&mut self, stream: &Arc<str>) {
        self.busy.remove(stream);
        match self.queues.get(stream).and_then(VecDeque::front) {
            Some(next) => {
                if let Some(position) = next.event.position() {
                    self.ready.insert(position, Arc::clone(stream));
                }
            }
            None => {
                self.queues.remove(stream);
            }
        }
    }

    /// The position up to which every event read is settled.
    fn settled(&self, read_to: u64) -> u64 {
        self.unsettled
            .first()
            .map_or(read_to, |first| first.saturating_sub(1))
    }

    /// Lets the deliveries in flight finish and drops the rest (they are
    /// not settled, so they come again from the checkpoint); returns the
    /// position up to which every event read is settled.
    async fn drain(&mut self, read_to: u64, failures: &mut u32) -> u64 {
        while let Some((stream, item, settled)) = self.flying.next().await {
            self.land(stream, item, settled, failures);
        }
        let settled = self.settled(read_to);
        self.waiting = FuturesUnordered::new();
        self.ready.clear();
        self.queues.clear();
        self.busy.clear();
        self.unsettled.clear();
        settled
    }
}

/// Runs `work` (a read, a save) while the deliveries in flight go on,
/// keeping what they come to in `landed`.
///
/// Deliveries are futures of this loop, not tasks: left unpolled while the
/// loop waits for the store, one holding a pooled connection would keep
/// the loop's own store call waiting for it, and the two would wait for
/// each other.
async fn alongside<T>(
    flying: &mut FuturesUnordered<Flight<'_>>,
    landed: &mut Vec<(Arc<str>, Queued, Settled)>,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Some(done) = flying.next(), if !flying.is_empty() => landed.push(done),
        }
    }
}

/// The read, deliver and save loop, from `checkpoint`, until a stop (or,
/// for a partition, until its lease is lost).
///
/// Reading runs ahead of delivery by up to one batch of unsettled events,
/// so a stream whose event waits for a retry holds up only itself: the
/// other streams' events keep going, and the checkpoint stays before the
/// waiting event until it is settled.
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
    let mut pipeline = Pipeline::new();
    // Read and queued up to here.
    let mut read_to = checkpoint;
    // Whether the last read reached the head: then wait for it to move.
    let mut caught_up = false;
    let window = settings.batch_size.max(1);
    let mut last_save = tokio::time::Instant::now();
    loop {
        let lost = place.fence().is_some_and(|f| !f.holds());
        if *stop.borrow() || lost {
            let settled = pipeline.drain(read_to, &mut failures).await;
            if lost {
                tracing::warn!(subscriber = %name, "lease not renewed in time: stopping work on the partition");
                return;
            }
            if settled > checkpoint && place.save(settled, &mut stop).await {
                shared_checkpoint.store(settled, Ordering::Release);
            }
            return;
        }
        if pending.is_none() {
            pending = signals.rewinds.try_recv().ok();
        }
        if let Some((position, done)) = pending.take() {
            pipeline.drain(read_to, &mut failures).await;
            if !place.save(position, &mut stop).await {
                return;
            }
            checkpoint = position;
            read_to = position;
            caught_up = false;
            shared_checkpoint.store(checkpoint, Ordering::Release);
            tracing::info!(subscriber = %name, checkpoint, "durable subscriber rewound");
            let _ = done.send(());
            continue;
        }
        let mut landed = Vec::new();
        let enabled = alongside(&mut pipeline.flying, &mut landed, core.refresh_enabled()).await;
        for (stream, item, settled) in landed.drain(..) {
            pipeline.land(stream, item, settled, &mut failures);
        }
        if !enabled {
            let settled = pipeline.drain(read_to, &mut failures).await;
            if settled > checkpoint {
                if !place.save(settled, &mut stop).await {
                    return;
                }
                checkpoint = settled;
                shared_checkpoint.store(checkpoint, Ordering::Release);
            }
            read_to = checkpoint;
            caught_up = false;
            if pause(settings.poll_interval, signals, &mut pending).await {
                return;
            }
            continue;
        }
        if !caught_up && pipeline.unsettled.len() < window {
            let want = window - pipeline.unsettled.len();
            let read = alongside(
                &mut pipeline.flying,
                &mut landed,
                read_next(store, settings, read_to, want),
            )
            .await;
            for (stream, item, settled) in landed.drain(..) {
                pipeline.land(stream, item, settled, &mut failures);
            }
            match read {
                Ok((events, last)) => {
                    caught_up = last <= read_to;
                    for event in events {
                        // A partition's runner passes over the other
                        // partitions' events.
                        if place.owns(&event) {
                            pipeline.push(event);
                        }
                    }
                    read_to = read_to.max(last);
                }
                Err(err) => {
                    tracing::error!(subscriber = %name, error = %err, "durable subscriber could not read the log");
                    if pause(settings.poll_interval, signals, &mut pending).await {
                        return;
                    }
                    continue;
                }
            }
        }
        pipeline.launch(core, settings.concurrency.max(1), place.fence());
        let settled = pipeline.settled(read_to);
        // Saved when the pipeline is empty, a batch further on, or a poll
        // interval after the last save: what was handled since is
        // delivered again after a crash, or by the next owner of a
        // partition whose lease lapsed.
        if settled > checkpoint
            && (pipeline.is_empty()
                || settled - checkpoint >= window as u64
                || last_save.elapsed() >= settings.poll_interval)
        {
            let saved = alongside(
                &mut pipeline.flying,
                &mut landed,
                place.save(settled, &mut stop),
            )
            .await;
            for (stream, item, settled) in landed.drain(..) {
                pipeline.land(stream, item, settled, &mut failures);
            }
            if !saved {
                return;
            }
            checkpoint = settled;
            last_save = tokio::time::Instant::now();
            shared_checkpoint.store(checkpoint, Ordering::Release);
        }
        let room = !caught_up && pipeline.unsettled.len() < window;
        if room && !pipeline.flying.is_empty() {
            // More to read and room for it: take in the deliveries that are
            // done without waiting, then read on.
            while let Some(Some((stream, item, settled))) = pipeline.flying.next().now_or_never() {
                pipeline.land(stream, item, settled, &mut failures);
            }
            continue;
        }
        if room {
            continue;
        }
        let stop_signal = &mut signals.stop;
        let known = read_to;
        let moved = async {
            match (&mut head, caught_up) {
                (Some(rx), true) => {
                    let _ = rx.wait_for(|h| *h > known).await;
                }
                _ => std::future::pending::<()>().await,
            }
        };
        let nothing_else = pipeline.flying.is_empty() && pipeline.waiting.is_empty();
        let poll = async {
            if caught_up || nothing_else {
                tokio::time::sleep(settings.poll_interval).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            Some((stream, item, settled)) = pipeline.flying.next(), if !pipeline.flying.is_empty() => {
                pipeline.land(stream, item, settled, &mut failures);
            }
            Some(stream) = pipeline.waiting.next(), if !pipeline.waiting.is_empty() => {
                pipeline.release(&stream);
            }
            _ = moved => caught_up = false,
            _ = poll => caught_up = false,
            _ = stop_signal.wait_for(|s| *s) => {}
            Some(rewind) = signals.rewinds.recv() => pending = Some(rewind),
        }
    }
}

/// Reads up to `limit` matching events after `after`; returns them and the
/// position up to which the log is known to hold nothing else for this
/// subscriber.
async fn read_next(
    store: &dyn EventStore,
    settings: &DurableSettings,
    after: u64,
    limit: usize,
) -> Result<(Vec<RecordedEvent>, u64), StoreError> {
    // The head is read first: every event at or below it is visible, so
    // when the filtered read comes back short, nothing up to the head is
    // left for this subscriber and the checkpoint can move past the events
    // it does not match.
    let head_before = store.head().await?;
    let limit = limit.max(1);
    let mut query = ReadAll::after(after).limit(limit).batch_size(limit);
    query.topics = settings.topics.clone();
    let events: Vec<RecordedEvent> = store.read_all(query).try_collect().await?;
    let last_read = events.last().and_then(RecordedEvent::position);
    let last = match (events.len() >= limit, last_read) {
        (true, Some(p)) => p,
        _ => last_read.unwrap_or(0).max(head_before),
    };
    Ok((events, last.max(after)))
}
