//! Consumers: one group member each, polled on a thread of its own, with
//! offsets stored only up to the contiguous settled prefix of each
//! partition.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald::transport::{Acker, Consumer, ConsumerSpec, Delivery, TransportError};
use herald::{AttemptError, NewDeadLetter, RecordedEvent};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::NAME;
use crate::codec;
use crate::config::TopicMapping;
use crate::topics;
use crate::transport::Inner;

/// A partition: topic and number.
type PartKey = (Arc<str>, i32);

/// How long the polling thread waits for a message before it looks at its
/// timers and its stop flag again.
const POLL: Duration = Duration::from_millis(50);

/// What a consumer shares between its polling thread, its rebalance
/// callbacks, the bus's `next` calls and the ackers.
pub(crate) struct ConsumerShared {
    subscriber: String,
    state: Mutex<State>,
    /// Signalled whenever an event is settled (a revoke waits on it).
    settled: Condvar,
    stop: AtomicBool,
    /// Set when the member leaves: a revoke then does not wait for
    /// deliveries in flight.
    closing: AtomicBool,
    stopped: watch::Sender<bool>,
    /// Deliveries given back, to hand out again before anything new.
    released: Mutex<VecDeque<Pending>>,
    wake: Notify,
    /// Messages polled and not yet taken by `next`.
    queued: AtomicUsize,
    consumer: OnceLock<Weak<BaseConsumer<Context>>>,
    revoke_drain: Duration,
    /// Set when partitions were assigned: the polling thread then gathers
    /// what they bring for a moment before handing it out.
    assigned: AtomicBool,
    /// Set once the member was first given partitions.
    joined: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    parts: HashMap<PartKey, Part>,
    next_generation: u64,
}

/// A partition this member owns.
struct Part {
    /// Bumped when the partition is assigned again (or its offsets reset),
    /// so that settling a delivery of an earlier ownership stores nothing.
    generation: u64,
    /// Offsets handed out, and whether each is settled, in order.
    outstanding: BTreeMap<i64, bool>,
    revoking: bool,
    last_seen: Option<i64>,
    /// The last offset stored for commit (the next to read).
    stored: Option<i64>,
}

impl State {
    fn fresh(&mut self) -> Part {
        self.next_generation += 1;
        Part {
            generation: self.next_generation,
            outstanding: BTreeMap::new(),
            revoking: false,
            last_seen: None,
            stored: None,
        }
    }
}

/// A polled message on its way to `next`.
pub(crate) struct Pending {
    key: PartKey,
    generation: u64,
    offset: i64,
    /// `None`: a message this group does not handle (another type of a
    /// shared category topic, or not a Herald event): settled on arrival.
    item: Option<(RecordedEvent, u32, Vec<AttemptError>)>,
    not_before: Option<DateTime<Utc>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConsumerShared {
    /// Asks the polling thread to leave the group.
    pub(crate) fn stop(&self, closing: bool) {
        if closing {
            self.closing.store(true, Ordering::SeqCst);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Waits until the member was first given partitions, at most
    /// `timeout`; whether it was.
    pub(crate) async fn wait_joined(&self, timeout: Duration) -> bool {
        let mut joined = self.joined.subscribe();
        tokio::time::timeout(timeout, joined.wait_for(|j| *j))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the member left its group, at most `timeout`.
    pub(crate) async fn wait_stopped(&self, timeout: Duration) {
        let mut stopped = self.stopped.subscribe();
        let _ = tokio::time::timeout(timeout, stopped.wait_for(|s| *s)).await;
    }

    /// Marks one delivery settled and stores the offset after the
    /// contiguous settled prefix of its partition.
    fn settle(&self, key: &PartKey, generation: u64, offset: i64) -> Result<(), TransportError> {
        // Taken before the lock and so dropped after it: were this the last
        // handle, dropping it closes the member, whose revoke callback
        // takes the lock.
        let consumer = self.consumer.get().and_then(Weak::upgrade);
        let mut state = lock(&self.state);
        let Some(part) = state.parts.get_mut(key) else {
            // The partition was revoked: its new owner handles it again.
            return Err(TransportError::Closed(NAME));
        };
        if part.generation != generation {
            return Err(TransportError::Closed(NAME));
        }
        part.outstanding.insert(offset, true);
        let mut next = None;
        while let Some((&first, &done)) = part.outstanding.first_key_value() {
            if !done {
                break;
            }
            part.outstanding.pop_first();
            next = Some(first + 1);
        }
        let result = match next {
            // Stored under the lock, so that two settlements never store
            // out of order.
            Some(next) => {
                part.stored = Some(next);
                match &consumer {
                    // librdkafka's `rd_kafka_offset_store` takes the last
                    // offset handled and commits the one after it.
                    Some(consumer) => consumer
                        .store_offset(&key.0, key.1, next - 1)
                        .map_err(|e| TransportError::broker(NAME, e)),
                    None => Err(TransportError::Closed(NAME)),
                }
            }
            None => Ok(()),
        };
        drop(state);
        self.settled.notify_all();
        result
    }

    fn give_back(&self, pending: Pending) {
        lock(&self.released).push_back(pending);
        self.wake.notify_one();
    }
}

/// Rebalance callbacks: run on the polling thread.
pub(crate) struct Context {
    shared: Arc<ConsumerShared>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.revoke(consumer, tpl),
            Rebalance::Error(err) => {
                tracing::warn!(subscriber = %self.shared.subscriber, error = %err, "kafka rebalance failed");
            }
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut state = lock(&self.shared.state);
            for element in tpl.elements() {
                let part = state.fresh();
                state
                    .parts
                    .insert((Arc::from(element.topic()), element.partition()), part);
            }
            self.shared.assigned.store(true, Ordering::SeqCst);
            if tpl.count() > 0 {
                self.shared.joined.send_replace(true);
            }
        }
    }
}

impl Context {
    /// Partitions taken away: waits (bounded) for what was handed out from
    /// them to be settled, commits the contiguous settled prefix, and
    /// forgets them, so that whatever is not settled is read again by the
    /// new owner and nothing settled is.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let keys: Vec<PartKey> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        for key in &keys {
            if let Some(part) = state.parts.get_mut(key) {
                part.revoking = true;
            }
        }
        if !shared.closing.load(Ordering::SeqCst) {
            let deadline = Instant::now() + shared.revoke_drain;
            loop {
                let busy = keys.iter().any(|k| {
                    state
                        .parts
                        .get(k)
                        .is_some_and(|p| !p.outstanding.is_empty())
                });
                let now = Instant::now();
                if !busy || now >= deadline {
                    break;
                }
                state = shared
                    .settled
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let mut commit = TopicPartitionList::new();
        for key in &keys {
            if let Some(part) = state.parts.remove(key) {
                if let Some(next) = part.stored {
                    let _ = commit.add_partition_offset(&key.0, key.1, Offset::Offset(next));
                }
            }
        }
        drop(state);
        if commit.count() > 0 {
            if let Err(err) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(subscriber = %shared.subscriber, error = %err, "could not commit offsets of revoked partitions; their events are handled again");
            }
        }
    }
}

/// One member of a consumer group.
pub(crate) struct KafkaConsumer {
    shared: Arc<ConsumerShared>,
    rx: mpsc::UnboundedReceiver<Pending>,
    permits: Arc<Semaphore>,
    transport: Arc<Inner>,
}

impl KafkaConsumer {
    pub(crate) fn shared(&self) -> Weak<ConsumerShared> {
        Arc::downgrade(&self.shared)
    }

    pub(crate) fn shared_ref(&self) -> &ConsumerShared {
        &self.shared
    }
}

/// Joins group `spec.name`, subscribed to `regexes`.
pub(crate) fn open(
    transport: Arc<Inner>,
    spec: &ConsumerSpec,
    retry_topic: String,
    regexes: &[String],
) -> Result<KafkaConsumer, TransportError> {
    let (stopped, _) = watch::channel(false);
    let shared = Arc::new(ConsumerShared {
        subscriber: spec.name.clone(),
        state: Mutex::default(),
        settled: Condvar::new(),
        stop: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        stopped,
        released: Mutex::default(),
        wake: Notify::new(),
        queued: AtomicUsize::new(0),
        consumer: OnceLock::new(),
        revoke_drain: transport.config.revoke_drain,
        assigned: AtomicBool::new(false),
        joined: watch::channel(false).0,
    });
    let group = transport.names.group(&spec.name);
    let consumer: BaseConsumer<Context> = topics::consumer_config(&transport.config, &group)
        .create_with_context(Context {
            shared: Arc::clone(&shared),
        })
        .map_err(|e| TransportError::connection(NAME, e))?;
    let refs: Vec<&str> = regexes.iter().map(String::as_str).collect();
    consumer
        .subscribe(&refs)
        .map_err(|e| TransportError::broker(NAME, e))?;
    let consumer = Arc::new(consumer);
    let _ = shared.consumer.set(Arc::downgrade(&consumer));
    let (tx, rx) = mpsc::unbounded_channel();
    let retry_topic: Arc<str> = Arc::from(retry_topic);
    let poller = Poller {
        consumer,
        shared: Arc::clone(&shared),
        tx,
        spec: spec.clone(),
        retry_topic,
        filter: transport.config.mapping != TopicMapping::PerType,
        // Beyond this many polled and not yet taken, the member stops
        // polling rather than buffering without bound.
        high_water: (spec.prefetch * 4).max(256),
        delayed: HashMap::new(),
        gather: transport.config.assignment_gather,
        held: Vec::new(),
        hold_until: None,
    };
    std::thread::Builder::new()
        .name(format!("herald-kafka-{}", spec.name))
        .spawn(move || poller.run())
        .map_err(|e| TransportError::broker(NAME, e))?;
    Ok(KafkaConsumer {
        shared,
        rx,
        permits: Arc::new(Semaphore::new(spec.prefetch.max(1))),
        transport,
    })
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        self.shared.stop(true);
    }
}

enum Admit {
    Deliver(RecordedEvent, u32, Vec<AttemptError>),
    Drop,
}

impl KafkaConsumer {
    fn admit(&self, pending: &Pending, again: bool) -> Admit {
        let mut state = lock(&self.shared.state);
        let Some(part) = state.parts.get_mut(&pending.key) else {
            return Admit::Drop;
        };
        if part.generation != pending.generation || part.revoking {
            return Admit::Drop;
        }
        match &pending.item {
            Some((event, attempt, errors)) => {
                if !again {
                    part.outstanding.insert(pending.offset, false);
                }
                Admit::Deliver(event.clone(), *attempt, errors.clone())
            }
            None => {
                part.outstanding.insert(pending.offset, false);
                drop(state);
                let _ = self
                    .shared
                    .settle(&pending.key, pending.generation, pending.offset);
                Admit::Drop
            }
        }
    }

    fn ended(&self) -> TransportError {
        if self.shared.closing.load(Ordering::SeqCst) {
            TransportError::Closed(NAME)
        } else {
            TransportError::connection(NAME, "the consumer's polling thread ended")
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        // Cancel-safe: a permit dropped before a message is taken is just
        // returned, and a message is taken only when it is handed out.
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| TransportError::Closed(NAME))?;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) && self.rx.is_empty() {
                return Err(self.ended());
            }
            let released = lock(&self.shared.released).pop_front();
            let (pending, again) = match released {
                Some(pending) => (pending, true),
                None => tokio::select! {
                    pending = self.rx.recv() => match pending {
                        Some(pending) => {
                            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                            (pending, false)
                        }
                        None => return Err(self.ended()),
                    },
                    () = self.shared.wake.notified() => continue,
                },
            };
            if let Admit::Deliver(event, attempt, errors) = self.admit(&pending, again) {
                let acker = KafkaAcker {
                    shared: Arc::clone(&self.shared),
                    transport: Arc::clone(&self.transport),
                    pending: Some(pending),
                    _permit: permit,
                };
                return Ok(Delivery::new(event, attempt, errors, acker));
            }
        }
    }
}

/// Settles one delivery.
struct KafkaAcker {
    shared: Arc<ConsumerShared>,
    transport: Arc<Inner>,
    /// Until settled: given back when the acker is dropped unsettled.
    pending: Option<Pending>,
    _permit: OwnedSemaphorePermit,
}

impl KafkaAcker {
    fn settle(mut self) -> Result<(), TransportError> {
        self.transport.check_open()?;
        let pending = self.pending.take().ok_or(TransportError::Closed(NAME))?;
        self.shared
            .settle(&pending.key, pending.generation, pending.offset)
    }

    fn event(&self) -> Result<&RecordedEvent, TransportError> {
        self.pending
            .as_ref()
            .and_then(|p| p.item.as_ref())
            .map(|(event, _, _)| event)
            .ok_or(TransportError::Closed(NAME))
    }
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.shared.give_back(pending);
        }
    }
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.settle()
    }

    async fn retry(
        self: Box<Self>,
        delay: Duration,
        attempt: u32,
        errors: Vec<AttemptError>,
    ) -> Result<(), TransportError> {
        self.transport.check_open()?;
        let event = self.event()?.clone();
        // On the retry topic first: if that fails, the drop gives the event
        // back and nothing is committed past it.
        self.transport
            .send_retry(&self.shared.subscriber, &event, delay, attempt, &errors)
            .await?;
        self.settle()
    }

    async fn dead_letter(
        self: Box<Self>,
        letter: NewDeadLetter,
        attempts: u32,
    ) -> Result<(), TransportError> {
        self.transport.check_open()?;
        self.transport
            .dead_letter_store_ref()
            .record_attempts(letter, attempts)
            .await
            .map_err(|e| TransportError::broker(NAME, e))?;
        self.settle()
    }

    async fn release(mut self: Box<Self>) -> Result<(), TransportError> {
        if let Some(pending) = self.pending.take() {
            self.shared.give_back(pending);
        }
        Ok(())
    }
}

/// At most this many messages are taken from librdkafka's queue at once.
const MAX_BATCH: usize = 1024;

/// When a message was produced, then when its event was recorded: the
/// order messages of different partitions are handed out in.
type SortKey = (i64, i64);

/// Merges messages of several partitions by [`SortKey`], keeping each
/// partition's own order whatever the clocks say: Kafka orders partitions
/// only one by one, and a batch often holds several (new topics assigned
/// together, say), in the order librdkafka fetched them.
fn merge(batch: Vec<(SortKey, Pending)>) -> Vec<Pending> {
    if batch.len() < 2 {
        return batch.into_iter().map(|(_, p)| p).collect();
    }
    let mut queues: Vec<(PartKey, VecDeque<(SortKey, Pending)>)> = Vec::new();
    for (sort, pending) in batch {
        match queues.iter_mut().find(|(k, _)| *k == pending.key) {
            Some((_, queue)) => queue.push_back((sort, pending)),
            None => queues.push((pending.key.clone(), VecDeque::from([(sort, pending)]))),
        }
    }
    if queues.len() == 1 {
        return queues
            .pop()
            .map(|(_, q)| q.into_iter().map(|(_, p)| p).collect())
            .unwrap_or_default();
    }
    let mut merged = Vec::new();
    loop {
        let first = queues
            .iter()
            .enumerate()
            .filter_map(|(i, (_, q))| q.front().map(|(sort, _)| (*sort, i)))
            .min();
        let Some((_, i)) = first else { break };
        merged.extend(queues[i].1.pop_front().map(|(_, p)| p));
    }
    merged
}

/// The polling thread's state.
struct Poller {
    consumer: Arc<BaseConsumer<Context>>,
    shared: Arc<ConsumerShared>,
    tx: mpsc::UnboundedSender<Pending>,
    spec: ConsumerSpec,
    retry_topic: Arc<str>,
    /// Whether topics carry types the group may not handle.
    filter: bool,
    high_water: usize,
    /// Retry partitions held back until their head's not-before time.
    delayed: HashMap<PartKey, VecDeque<Pending>>,
    /// How long to gather after an assignment.
    gather: Duration,
    /// Gathered since the last assignment, until `hold_until`.
    held: Vec<(SortKey, Pending)>,
    hold_until: Option<Instant>,
}

impl Poller {
    fn run(mut self) {
        while !self.shared.stop.load(Ordering::SeqCst) {
            let next_due = self.release_due();
            if self.backpressure() {
                // Rebalance callbacks wait meanwhile; librdkafka keeps the
                // membership alive from its own threads.
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let wait = next_due.map_or(POLL, |due| {
                (due - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(POLL)
            });
            let consumer = Arc::clone(&self.consumer);
            let mut batch = Vec::new();
            let mut wait = match self.hold_until {
                Some(until) => wait.min(until.saturating_duration_since(Instant::now())),
                None => wait,
            };
            // Everything already fetched is taken at once, so that it can
            // be handed out in publish order across partitions.
            while batch.len() < MAX_BATCH {
                match consumer.poll(wait) {
                    None => break,
                    Some(Ok(message)) => batch.push(self.take(&message)),
                    Some(Err(err)) => {
                        tracing::debug!(subscriber = %self.shared.subscriber, error = %err, "kafka consumer error; librdkafka retries by itself");
                        break;
                    }
                }
                wait = Duration::ZERO;
            }
            if self.shared.assigned.swap(false, Ordering::SeqCst) && !self.gather.is_zero() {
                // New partitions (new topics, often several at once) start
                // fetching one by one: what they hold is gathered for a
                // moment and handed out in publish order, not in the order
                // librdkafka happened to fetch it.
                self.hold_until = Some(Instant::now() + self.gather);
            }
            if let Some(until) = self.hold_until {
                self.held.extend(batch);
                if Instant::now() < until {
                    continue;
                }
                self.hold_until = None;
                batch = std::mem::take(&mut self.held);
            }
            for pending in merge(batch) {
                self.dispatch(pending);
            }
        }
        let Self {
            consumer, shared, ..
        } = self;
        // Dropping the last handle closes the member: librdkafka commits
        // the stored offsets and leaves the group.
        drop(consumer);
        let _ = shared.stopped.send(true);
    }

    fn take(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) -> (SortKey, Pending) {
        let key: PartKey = (Arc::from(message.topic()), message.partition());
        let offset = message.offset();
        let generation = {
            let mut state = lock(&self.shared.state);
            if !state.parts.contains_key(&key) {
                let part = state.fresh();
                state.parts.insert(key.clone(), part);
            }
            let next_generation = state.next_generation + 1;
            let part = state.parts.get_mut(&key).expect("inserted above");
            if part.last_seen.is_some_and(|last| offset <= last) {
                // The broker reset the offsets (a topic made again): what
                // was outstanding belongs to another log.
                part.generation = next_generation;
                part.outstanding.clear();
                part.stored = None;
                state.next_generation = next_generation;
            }
            let part = state.parts.get_mut(&key).expect("inserted above");
            part.last_seen = Some(offset);
            part.generation
        };
        let headers = codec::header_map(message.headers());
        let from_retry = *key.0 == *self.retry_topic;
        let (item, not_before) = match codec::decode(&headers, message.payload()) {
            Ok((event, envelope)) => {
                if !from_retry && self.filter && !self.spec.matches(event.event_type()) {
                    (None, None)
                } else {
                    let not_before = if from_retry {
                        envelope.not_before
                    } else {
                        None
                    };
                    (Some((event, envelope.attempt, envelope.errors)), not_before)
                }
            }
            Err(err) => {
                tracing::warn!(subscriber = %self.shared.subscriber, topic = %key.0, partition = key.1, offset, error = %err, "skipping a message that is not a herald event");
                (None, None)
            }
        };
        let sort = (
            message.timestamp().to_millis().unwrap_or(0),
            item.as_ref()
                .map_or(0, |(event, _, _)| event.recorded_at().timestamp_micros()),
        );
        let pending = Pending {
            key,
            generation,
            offset,
            item,
            not_before,
        };
        (sort, pending)
    }

    fn dispatch(&mut self, pending: Pending) {
        let key = pending.key.clone();
        let generation = pending.generation;
        if let Some(queue) = self.delayed.get_mut(&key) {
            queue.retain(|p| p.generation == generation);
            queue.push_back(pending);
        } else if pending.not_before.is_some_and(|t| t > Utc::now()) {
            // Held back in a queue of its partition, with a timer, rather
            // than sleeping here: other partitions go on, and later messages
            // of this partition wait behind it.
            self.delayed.insert(key, VecDeque::from([pending]));
        } else {
            self.send(pending);
        }
    }

    fn send(&self, pending: Pending) {
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(pending).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Hands out held-back retries whose time has come; the earliest time
    /// still to wait for.
    fn release_due(&mut self) -> Option<DateTime<Utc>> {
        if self.delayed.is_empty() {
            return None;
        }
        let now = Utc::now();
        let mut next_due: Option<DateTime<Utc>> = None;
        let mut done = Vec::new();
        let mut due = Vec::new();
        for (key, queue) in &mut self.delayed {
            while let Some(front) = queue.front() {
                match front.not_before {
                    Some(t) if t > now => {
                        next_due = Some(next_due.map_or(t, |d| d.min(t)));
                        break;
                    }
                    _ => due.extend(queue.pop_front()),
                }
            }
            if queue.is_empty() {
                done.push(key.clone());
            }
        }
        for pending in due {
            self.send(pending);
        }
        for key in done {
            self.delayed.remove(&key);
        }
        next_due
    }

    /// Whether too much is polled and not yet taken: the thread then stops
    /// polling for a moment rather than buffering without bound.
    ///
    /// Not by pausing the partitions: with librdkafka 2.12 against tansu,
    /// resuming paused partitions lost some of the messages fetched before
    /// the pause (a benchmark run stalled short of its count).
    fn backpressure(&mut self) -> bool {
        self.shared.queued.load(Ordering::Relaxed) >= self.high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(topic: &str, offset: i64) -> Pending {
        Pending {
            key: (Arc::from(topic), 0),
            generation: 1,
            offset,
            item: None,
            not_before: None,
        }
    }

    #[test]
    fn merges_partitions_by_time_keeping_each_partitions_order() {
        let batch = vec![
            ((5, 0), pending("b", 0)),
            ((1, 0), pending("a", 0)),
            // A clock that went back: still after a's offset 0.
            ((0, 0), pending("a", 1)),
            ((3, 0), pending("c", 0)),
            ((6, 0), pending("b", 1)),
        ];
        let order: Vec<(String, i64)> = merge(batch)
            .into_iter()
            .map(|p| (p.key.0.to_string(), p.offset))
            .collect();
        let want = [("a", 0), ("a", 1), ("c", 0), ("b", 0), ("b", 1)];
        assert_eq!(
            order,
            want.map(|(t, o)| (t.to_owned(), o)).to_vec(),
            "by time across partitions, by offset within one"
        );
    }
}
