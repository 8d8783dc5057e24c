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

use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::competing::{Coordinator, GroupSettings, GroupShared, group_checkpoint};
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
    fn deliver_durable(
        &self,
        event: &RecordedEvent,
    ) -> impl std::future::Future<Output = Settled> + Send;

    /// Delivers a batch read after the checkpoint, up to `last` (the
    /// position the checkpoint may move to once every event is settled;
    /// `head` is the store's head as read before the batch); returns the
    /// position up to which every event is settled. Subscribers deliver
    /// event by event; the relay overrides it to publish the batch at once.
    fn deliver_batch(
        &self,
        events: Vec<RecordedEvent>,
        concurrency: usize,
        last: u64,
        head: u64,
        fence: Option<&Fence>,
    ) -> impl std::future::Future<Output = u64> + Send
    where
        Self: Sized,
    {
        let _ = head;
        deliver_each(self, events, concurrency, last, fence)
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
        // The head is read first: every event at or below it is visible, so
        // when the filtered read comes back short, nothing up to the head is
        // left for this subscriber and the checkpoint can move past the
        // events it does not match.
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
        let mut query = ReadAll::after(checkpoint)
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
        if last <= checkpoint {
            if idle(
                &mut head,
                checkpoint,
                settings.poll_interval,
                signals,
                &mut pending,
            )
            .await
            {
                return;
            }
            continue;
        }
        // A partition's runner passes over the other partitions' events.
        matching.retain(|e| place.owns(e));
        let reached = core
            .deliver_batch(
                matching,
                settings.concurrency,
                last,
                head_before,
                place.fence(),
            )
            .await;
        if reached > checkpoint {
            if !place.save(reached, &mut stop).await {
                return;
            }
            checkpoint = reached;
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

/// Delivers a batch; returns the position up to which every event is
/// settled (`last` when all are).
async fn deliver_each<D: Deliver>(
    core: &D,
    events: Vec<RecordedEvent>,
    concurrency: usize,
    last: u64,
    fence: Option<&Fence>,
) -> u64 {
    let lanes = concurrency.max(1).min(events.len().max(1));
    let mut by_lane: Vec<Vec<RecordedEvent>> = vec![Vec::new(); lanes];
    let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    for event in events {
        let lane = if lanes == 1 {
            0
        } else {
            (hasher.hash_one(event.stream().unwrap_or_default()) % lanes as u64) as usize
        };
        by_lane[lane].push(event);
    }
    let results = futures_util::future::join_all(by_lane.into_iter().map(|lane| async move {
        for event in lane {
            if !core.is_enabled() || fence.is_some_and(|f| !f.holds()) {
                return event.position();
            }
            if let Settled::Pending = core.deliver_durable(&event).await {
                return event.position();
            }
        }
        None
    }))
    .await;
    // The first event not settled in any lane bounds the checkpoint.
    match results.into_iter().flatten().min() {
        Some(first_pending) => first_pending.saturating_sub(1),
        None => last,
    }
}
