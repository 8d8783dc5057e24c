//! The outbox relay on the in-memory store and broker: order, restarts,
//! failing publishes, topic filters, bad settings, and single-active relays
//! on a lease store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald::relay::{Relay, RelayError, STOP_GRACE, checkpoint_name};
use herald::store::{
    CheckpointStore, EventStore, ExpectedVersion, GroupView, Lease, LeaseStore, MemoryStore,
    PartitionState, StoreError, StreamName,
};
use herald::transport::{Consumer, ConsumerSpec, MemoryTransport, Transport, TransportError};
use herald::{
    Bus, ConfigError, DeadLetterStore, EventId, NewEvent, RecordedEvent, SubscribeError,
    Subscriber, TopicPattern, handler_fn,
};
use serde_json::json;

/// How long any wait in these tests may take before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// One delivered event: stream, version, id.
type Seen = (String, u64, EventId);

async fn consumer(broker: &MemoryTransport, group: &str, pattern: &str) -> Box<dyn Consumer> {
    broker
        .subscribe(&ConsumerSpec::new(
            group,
            vec![TopicPattern::parse(pattern).unwrap()],
        ))
        .await
        .unwrap()
}

/// Appends `per_stream` events to each of `streams` streams, interleaved
/// (one event per stream in turn); returns their ids.
async fn append_interleaved(
    store: &MemoryStore,
    prefix: &str,
    streams: usize,
    per_stream: usize,
) -> Vec<EventId> {
    let mut ids = Vec::new();
    for n in 0..per_stream {
        for s in 0..streams {
            let stream = StreamName::new(format!("{prefix}-{s}")).unwrap();
            let done = store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::new("order.created", json!({ "n": n }))],
                )
                .await
                .unwrap();
            ids.push(done.events[0].id);
        }
    }
    ids
}

/// Takes, acknowledging each, every delivery queued in `group` now.
async fn drain(broker: &MemoryTransport, group: &str, consumer: &mut dyn Consumer) -> Vec<Seen> {
    let mut seen = Vec::new();
    for _ in 0..broker.queued(group) {
        let delivery = tokio::time::timeout(PATIENCE, consumer.next())
            .await
            .expect("a queued delivery comes")
            .unwrap();
        let e = delivery.event();
        seen.push((e.stream().unwrap().to_owned(), e.version().unwrap(), e.id()));
        delivery.ack().await.unwrap();
    }
    seen
}

/// Checks that each stream's first deliveries come in version order from 0
/// with no gap, and that a copy only ever repeats a run that came before
/// (a batch published again from its start); returns the distinct ids.
fn assert_stream_order(seen: &[Seen]) -> HashSet<EventId> {
    let mut next: HashMap<&str, u64> = HashMap::new();
    for (stream, version, _) in seen {
        let expected = next.entry(stream).or_insert(0);
        assert!(
            *version <= *expected,
            "stream {stream}: version {version} came before version {expected}: {seen:?}"
        );
        if *version == *expected {
            *expected += 1;
        }
    }
    seen.iter().map(|(_, _, id)| *id).collect()
}

async fn wait_forwarded(relay: &Relay, position: u64) {
    tokio::time::timeout(PATIENCE, relay.wait_forwarded(position))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "relay {} forwarded up to {} only, not {position}",
                relay.name(),
                relay.forwarded()
            )
        });
}

/// Waits until the relay's saved checkpoint is `position`: forwarded means
/// confirmed by the broker, and the save follows right after.
async fn wait_checkpoint(relay: &Relay, position: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let saved = relay.checkpoint().await.unwrap();
        if saved == position {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "relay {} saved {saved}, not {position}",
            relay.name()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn forwards_every_event_to_the_broker_in_stream_order() {
    let store = Arc::new(MemoryStore::new());
    let broker = Arc::new(MemoryTransport::new());
    let mut all = consumer(&broker, "all", "#").await;
    // Some history before the relay starts, and more while it runs.
    let mut ids = append_interleaved(&store, "early", 5, 40).await;
    let relay = Relay::builder("orders", Arc::clone(&store), broker.clone())
        .batch_size(64)
        .spawn()
        .unwrap();
    ids.extend(append_interleaved(&store, "late", 7, 30).await);
    let head = store.head().await.unwrap();
    wait_forwarded(&relay, head).await;

    let seen = drain(&broker, "all", &mut *all).await;
    assert_eq!(seen.len(), ids.len(), "every event once, without failures");
    assert_eq!(
        assert_stream_order(&seen),
        ids.iter().copied().collect::<HashSet<_>>()
    );
    wait_checkpoint(&relay, head).await;
    assert_eq!(relay.lag().await.unwrap(), 0);
    relay.stop().await;
    assert_eq!(
        CheckpointStore::load(&*store, &checkpoint_name("orders"))
            .await
            .unwrap(),
        Some(head),
        "the checkpoint is saved under the relay's reserved name"
    );
}

#[tokio::test]
async fn wakes_at_once_on_new_events_without_waiting_for_the_poll_interval() {
    let store = Arc::new(MemoryStore::new());
    let broker = Arc::new(MemoryTransport::new());
    let mut all = consumer(&broker, "all", "#").await;
    let relay = Relay::builder("wake", Arc::clone(&store), broker.clone())
        .poll_interval(Duration::from_secs(3600))
        .spawn()
        .unwrap();
    // Let it go idle first: one event forwarded, then nothing to read.
    append_interleaved(&store, "wake", 1, 1).await;
    wait_forwarded(&relay, 1).await;
    append_interleaved(&store, "wake", 1, 2).await;
    // Far below the hour of polling: the head watch woke it.
    tokio::time::timeout(Duration::from_secs(10), relay.wait_forwarded(3))
        .await
        .expect("the relay woke on the append");
    assert_eq!(drain(&broker, "all", &mut *all).await.len(), 3);
    relay.stop().await;
}

#[tokio::test]
async fn resumes_from_its_checkpoint_after_a_restart_repeating_at_most_one_batch() {
    const BATCH: usize = 10;
    let store = Arc::new(MemoryStore::new());
    let broker = Arc::new(MemoryTransport::new());
    let mut all = consumer(&broker, "all", "#").await;
    let mut ids = append_interleaved(&store, "restart", 4, 100).await;
    let head = store.head().await.unwrap();

    // Stopped in the middle of its work.
    let first = Relay::builder("restart", Arc::clone(&store), broker.clone())
        .batch_size(BATCH)
        .spawn()
        .unwrap();
    wait_forwarded(&first, 50).await;
    first.stop().await;
    let saved = CheckpointStore::load(&*store, &checkpoint_name("restart"))
        .await
        .unwrap()
        .expect("a checkpoint was saved");
    assert!(saved >= 50, "{saved}");

    ids.extend(append_interleaved(&store, "restart", 4, 10).await);
    let head_after = store.head().await.unwrap();
    assert!(head_after > head);
    let second = Relay::builder("restart", Arc::clone(&store), broker.clone())
        .batch_size(BATCH)
        .spawn()
        .unwrap();
    wait_forwarded(&second, head_after).await;
    second.stop().await;

    let seen = drain(&broker, "all", &mut *all).await;
    assert_eq!(
        assert_stream_order(&seen),
        ids.iter().copied().collect::<HashSet<_>>(),
        "nothing lost"
    );
    assert!(
        seen.len() <= ids.len() + BATCH,
        "{} deliveries of {} events: more than one batch repeated",
        seen.len(),
        ids.len()
    );
}

/// A broker that fails some publish calls: every `every`-th call fails, half
/// of them after handing the first half of the batch to the broker (a
/// connection lost before the last confirms).
struct Flaky {
    inner: MemoryTransport,
    every: usize,
    calls: AtomicUsize,
    failed: AtomicUsize,
}

#[async_trait]
impl Transport for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call % self.every == 0 {
            let failed = self.failed.fetch_add(1, Ordering::SeqCst);
            if failed % 2 == 1 {
                self.inner.publish(&events[..events.len() / 2]).await?;
            }
            return Err(TransportError::NotConfirmed {
                transport: "flaky",
                event_id: events[events.len() / 2].id(),
                reason: "no confirm came".into(),
            });
        }
        self.inner.publish(events).await
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, TransportError> {
        self.inner.subscribe(spec).await
    }

    async fn redeliver(
        &self,
        subscriber: &str,
        event: &RecordedEvent,
    ) -> Result<(), TransportError> {
        self.inner.redeliver(subscriber, event).await
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        self.inner.dead_letters()
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.close().await
    }
}

#[tokio::test]
async fn a_failing_broker_leads_to_no_loss_and_no_skip() {
    const BATCH: usize = 16;
    let store = Arc::new(MemoryStore::new());
    let broker = MemoryTransport::new();
    let mut all = consumer(&broker, "all", "#").await;
    let flaky = Arc::new(Flaky {
        inner: broker.clone(),
        every: 3,
        calls: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let ids = append_interleaved(&store, "flaky", 6, 30).await;
    let head = store.head().await.unwrap();
    let relay = Relay::builder("flaky", Arc::clone(&store), flaky.clone())
        .batch_size(BATCH)
        .spawn()
        .unwrap();
    wait_forwarded(&relay, head).await;
    relay.stop().await;

    let failed = flaky.failed.load(Ordering::SeqCst);
    assert!(failed >= 3, "only {failed} publishes failed");
    let seen = drain(&broker, "all", &mut *all).await;
    assert_eq!(
        assert_stream_order(&seen),
        ids.iter().copied().collect::<HashSet<_>>(),
        "an event was lost"
    );
    assert!(
        seen.len() > ids.len(),
        "half-confirmed batches were published again"
    );
    assert_eq!(
        CheckpointStore::load(&*store, &checkpoint_name("flaky"))
            .await
            .unwrap(),
        Some(head)
    );
}

#[tokio::test]
async fn a_relay_started_from_now_skips_the_history() {
    let store = Arc::new(MemoryStore::new());
    let broker = Arc::new(MemoryTransport::new());
    let mut all = consumer(&broker, "all", "#").await;
    append_interleaved(&store, "history", 2, 5).await;
    let relay = Relay::builder("from-now", Arc::clone(&store), broker.clone())
        .start_from(herald::StartFrom::Now)
        .spawn()
        .unwrap();
    tokio::time::timeout(PATIENCE, async {
        while CheckpointStore::load(&*store, &checkpoint_name("from-now"))
            .await
            .unwrap()
            != Some(10)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the relay saved the head as its checkpoint");
    let ids = append_interleaved(&store, "new", 1, 3).await;
    wait_forwarded(&relay, 13).await;
    let seen = drain(&broker, "all", &mut *all).await;
    assert_eq!(
        seen.iter().map(|(_, _, id)| *id).collect::<Vec<_>>(),
        ids,
        "only the events appended after it started"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_topic_filter_forwards_only_matching_types() {
    let store = Arc::new(MemoryStore::new());
    let broker = Arc::new(MemoryTransport::new());
    let mut all = consumer(&broker, "all", "#").await;
    let relay = Relay::builder("filtered", Arc::clone(&store), broker.clone())
        .topic("order.*")
        .topic("invoice.paid")
        .spawn()
        .unwrap();
    let stream = StreamName::new("mixed-1").unwrap();
    let types = [
        "order.created",
        "payment.settled",
        "order.line.added",
        "invoice.paid",
        "order.shipped",
        "invoice.sent",
    ];
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            types.iter().map(|t| NewEvent::new(*t, json!({}))).collect(),
        )
        .await
        .unwrap();
    let head = store.head().await.unwrap();
    // The checkpoint passes the events it leaves out.
    wait_forwarded(&relay, head).await;
    let mut got = Vec::new();
    for _ in 0..broker.queued("all") {
        let delivery = all.next().await.unwrap();
        got.push(delivery.event().event_type().to_owned());
        delivery.ack().await.unwrap();
    }
    assert_eq!(got, ["order.created", "invoice.paid", "order.shipped"]);
    wait_checkpoint(&relay, head).await;
    relay.stop().await;
}

#[tokio::test]
async fn bad_settings_get_typed_errors() {
    let store = Arc::new(MemoryStore::new());
    let broker: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let builder = || Relay::builder("r", Arc::clone(&store), Arc::clone(&broker));
    assert!(matches!(
        builder().batch_size(0).spawn(),
        Err(RelayError::Config(ConfigError::Zero(_)))
    ));
    assert!(matches!(
        builder().topic("order.*s").spawn(),
        Err(RelayError::InvalidPattern(_))
    ));
    assert!(matches!(
        builder().poll_interval(Duration::ZERO).spawn(),
        Err(RelayError::Config(ConfigError::Zero(_)))
    ));
    assert!(matches!(
        builder()
            .lease_store(store.clone())
            .lease_ttl(Duration::from_millis(1))
            .spawn(),
        Err(RelayError::Config(ConfigError::OutOfRange { .. }))
    ));
    assert!(matches!(
        Relay::builder("", Arc::clone(&store), Arc::clone(&broker)).spawn(),
        Err(RelayError::InvalidName(_))
    ));
    assert!(matches!(
        Relay::builder("x".repeat(249), Arc::clone(&store), Arc::clone(&broker)).spawn(),
        Err(RelayError::InvalidName(_))
    ));
    let message = builder().batch_size(0).spawn().unwrap_err().to_string();
    assert!(message.contains("batch size"), "{message}");

    // A subscriber cannot take a relay's checkpoint name.
    let bus = Bus::builder().store(Arc::clone(&store)).build();
    let err = bus
        .subscribe(Subscriber::new("$relay:orders", handler_fn(|_, _| async { Ok(()) })).topic("#"))
        .unwrap_err();
    assert!(matches!(err, SubscribeError::ReservedName(_)), "{err}");
}

#[test]
fn spawning_outside_a_runtime_is_an_error() {
    let store = Arc::new(MemoryStore::new());
    let err = Relay::builder("r", store, Arc::new(MemoryTransport::new()))
        .spawn()
        .unwrap_err();
    assert!(matches!(err, RelayError::NoRuntime(_)), "{err}");
}

/// Who published, when, how many events.
type PublishLog = Arc<Mutex<Vec<(&'static str, Instant, usize)>>>;

/// A broker handle that records which relay published what.
struct Tagged {
    inner: MemoryTransport,
    tag: &'static str,
    log: PublishLog,
}

#[async_trait]
impl Transport for Tagged {
    fn name(&self) -> &'static str {
        "tagged"
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError> {
        self.inner.publish(events).await?;
        self.log
            .lock()
            .unwrap()
            .push((self.tag, Instant::now(), events.len()));
        Ok(())
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, TransportError> {
        self.inner.subscribe(spec).await
    }

    async fn redeliver(
        &self,
        subscriber: &str,
        event: &RecordedEvent,
    ) -> Result<(), TransportError> {
        self.inner.redeliver(subscriber, event).await
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        self.inner.dead_letters()
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.close().await
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_relays_and_another_takes_over_when_it_dies() {
    const TTL: Duration = Duration::from_millis(600);
    let store = Arc::new(MemoryStore::new());
    let broker = MemoryTransport::new();
    let mut all = consumer(&broker, "all", "#").await;
    let log: PublishLog = Arc::default();
    let transport = |tag| {
        Arc::new(Tagged {
            inner: broker.clone(),
            tag,
            log: Arc::clone(&log),
        })
    };
    let relay = |tag| {
        Relay::builder("single", Arc::clone(&store), transport(tag))
            .batch_size(20)
            .lease_store(store.clone())
            .lease_ttl(TTL)
    };

    // The first relay runs on a runtime of its own, so that the test can
    // kill it as a crash would: every task gone, nothing released.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let first = {
        let _inside = doomed.enter();
        relay("first").spawn().unwrap()
    };
    until("the first relay holds the lease", || first.is_active()).await;
    let second = relay("second").spawn().unwrap();

    let mut ids = append_interleaved(&store, "single", 3, 40).await;
    let head = store.head().await.unwrap();
    wait_forwarded(&first, head).await;
    // The standby has had several renewals to try to take the lease.
    tokio::time::sleep(TTL).await;
    assert!(!second.is_active());
    assert_eq!(second.forwarded(), 0);
    let by = |tag| -> usize {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(t, ..)| *t == tag)
            .map(|(.., n)| n)
            .sum()
    };
    assert_eq!(by("first"), ids.len());
    assert_eq!(by("second"), 0, "the standby published");

    // Crash the active relay.
    doomed.shutdown_background();
    let crashed = Instant::now();
    ids.extend(append_interleaved(&store, "single", 3, 10).await);
    let head = store.head().await.unwrap();
    wait_forwarded(&second, head).await;
    let took = crashed.elapsed();
    assert!(second.is_active());
    // Expiry after the TTL, noticed at the next renewal (a third of it),
    // plus scheduling slack.
    assert!(
        took < TTL + TTL / 3 + Duration::from_secs(2),
        "the standby took over after {took:?}"
    );
    assert!(by("second") > 0);
    let after_crash = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(tag, at, _)| *tag == "first" && *at > crashed)
        .count();
    assert_eq!(
        after_crash, 0,
        "the crashed relay published after its death"
    );
    // The checkpoint is the lease store's (fenced) one.
    wait_checkpoint(&second, head).await;
    second.stop().await;
    drop(first);

    let seen = drain(&broker, "all", &mut *all).await;
    assert_eq!(
        assert_stream_order(&seen),
        ids.iter().copied().collect::<HashSet<_>>()
    );
    // Who published what, for a failure message.
    let mut per_tag: BTreeMap<&str, usize> = BTreeMap::new();
    for (tag, _, n) in log.lock().unwrap().iter() {
        *per_tag.entry(tag).or_default() += n;
    }
    assert!(seen.len() <= ids.len() + 20, "{per_tag:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_lease_holder_hands_over_without_waiting_for_the_ttl() {
    const TTL: Duration = Duration::from_secs(6);
    let store = Arc::new(MemoryStore::new());
    let broker = Arc::new(MemoryTransport::new());
    let mut all = consumer(&broker, "all", "#").await;
    let relay = || {
        Relay::builder("handover", Arc::clone(&store), broker.clone())
            .lease_store(store.clone())
            .lease_ttl(TTL)
    };
    let first = relay().spawn().unwrap();
    until("the first relay holds the lease", || first.is_active()).await;
    let second = relay().spawn().unwrap();
    let mut ids = append_interleaved(&store, "handover", 2, 20).await;
    wait_forwarded(&first, store.head().await.unwrap()).await;
    first.stop().await;
    ids.extend(append_interleaved(&store, "handover", 2, 20).await);
    // The lease was given back: the standby takes it at its next renewal
    // (a third of the TTL), not after the TTL.
    tokio::time::timeout(
        TTL / 3 + Duration::from_secs(2),
        second.wait_forwarded(store.head().await.unwrap()),
    )
    .await
    .expect("the standby took over a released lease");
    second.stop().await;
    let seen = drain(&broker, "all", &mut *all).await;
    assert_eq!(seen.len(), ids.len(), "a graceful handover repeats nothing");
    assert_eq!(
        assert_stream_order(&seen),
        ids.iter().copied().collect::<HashSet<_>>()
    );
}

#[test]
fn forwarded_events_failures_and_lag_are_reported_as_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A thread-local recorder, and a runtime on this thread, so that other
    // tests running at the same time do not report into it.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(MemoryStore::new());
        let broker = MemoryTransport::new();
        let flaky = Arc::new(Flaky {
            inner: broker.clone(),
            every: 2,
            calls: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        });
        append_interleaved(&store, "metered", 2, 10).await;
        let relay = Relay::builder("metered", Arc::clone(&store), flaky.clone())
            .batch_size(5)
            .spawn()
            .unwrap();
        wait_forwarded(&relay, 20).await;
        relay.stop().await;
    });

    let metric = |name: &str| {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(key, _, _, _)| {
                let key = key.key();
                key.name() == name
                    && key
                        .labels()
                        .any(|l| l.key() == "relay" && l.value() == "metered")
            })
            .map(|(_, _, _, value)| value)
    };
    // Four batches of five confirmed in seven calls: every second call
    // fails, so the second, third and fourth batch each failed once first.
    // Events a failed call handed over are not counted as forwarded.
    match metric("herald_relay_forwarded_total") {
        Some(DebugValue::Counter(n)) => assert_eq!(n, 20),
        other => panic!("forwarded: {other:?}"),
    }
    match metric("herald_relay_publish_failures_total") {
        Some(DebugValue::Counter(n)) => assert_eq!(n, 3),
        other => panic!("failures: {other:?}"),
    }
    match metric("herald_relay_lag") {
        Some(DebugValue::Gauge(lag)) => assert_eq!(lag.into_inner(), 0.0),
        other => panic!("lag: {other:?}"),
    }
}

/// A lease store whose renewals can be cut off, as a network partition
/// between one relay and the store would.
struct Cuttable {
    inner: Arc<MemoryStore>,
    cut: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl LeaseStore for Cuttable {
    async fn renew(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<GroupView, StoreError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(StoreError::backend("cut off from the lease store"));
        }
        self.inner.renew(group, member, ttl).await
    }

    async fn acquire(
        &self,
        group: &str,
        member: &str,
        partition: u32,
        ttl: Duration,
        initial: u64,
    ) -> Result<Option<Lease>, StoreError> {
        self.inner
            .acquire(group, member, partition, ttl, initial)
            .await
    }

    async fn save(
        &self,
        group: &str,
        member: &str,
        lease: Lease,
        position: u64,
    ) -> Result<bool, StoreError> {
        LeaseStore::save(&*self.inner, group, member, lease, position).await
    }

    async fn release(&self, group: &str, member: &str, partition: u32) -> Result<(), StoreError> {
        self.inner.release(group, member, partition).await
    }

    async fn leave(&self, group: &str, member: &str) -> Result<(), StoreError> {
        self.inner.leave(group, member).await
    }

    async fn rewind(&self, group: &str, partitions: u32, position: u64) -> Result<(), StoreError> {
        self.inner.rewind(group, partitions, position).await
    }

    async fn partitions(&self, group: &str) -> Result<Vec<PartitionState>, StoreError> {
        self.inner.partitions(group).await
    }
}

/// A broker handle whose publishes wait while its gate is closed.
struct Gated {
    inner: MemoryTransport,
    open: tokio::sync::watch::Sender<bool>,
    waiting: tokio::sync::Notify,
    /// Events published through the gate.
    passed: AtomicUsize,
}

#[async_trait]
impl Transport for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError> {
        let mut open = self.open.subscribe();
        if !*open.borrow() {
            self.waiting.notify_one();
            let _ = open.wait_for(|o| *o).await;
        }
        self.inner.publish(events).await?;
        self.passed.fetch_add(events.len(), Ordering::SeqCst);
        Ok(())
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, TransportError> {
        self.inner.subscribe(spec).await
    }

    async fn redeliver(
        &self,
        subscriber: &str,
        event: &RecordedEvent,
    ) -> Result<(), TransportError> {
        self.inner.redeliver(subscriber, event).await
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        self.inner.dead_letters()
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_lost_its_lease_cannot_move_the_checkpoint() {
    const TTL: Duration = Duration::from_millis(300);
    let store = Arc::new(MemoryStore::new());
    let broker = MemoryTransport::new();
    let mut all = consumer(&broker, "all", "#").await;
    let leases_a = Arc::new(Cuttable {
        inner: Arc::clone(&store),
        cut: false.into(),
    });
    let gated = Arc::new(Gated {
        inner: broker.clone(),
        open: tokio::sync::watch::channel(false).0,
        waiting: tokio::sync::Notify::new(),
        passed: AtomicUsize::new(0),
    });
    let a = Relay::builder("fenced", Arc::clone(&store), gated.clone())
        .lease_store(leases_a.clone())
        .lease_ttl(TTL)
        .spawn()
        .unwrap();
    until("the first relay holds the lease", || a.is_active()).await;
    let b = Relay::builder("fenced", Arc::clone(&store), Arc::new(broker.clone()))
        .lease_store(store.clone())
        .lease_ttl(TTL)
        .spawn()
        .unwrap();

    // The first relay publishes a batch the broker does not confirm yet,
    // and loses touch with the lease store meanwhile.
    let mut ids = append_interleaved(&store, "fenced", 2, 5).await;
    tokio::time::timeout(PATIENCE, gated.waiting.notified())
        .await
        .expect("the first relay publishes");
    leases_a.cut.store(true, Ordering::SeqCst);
    // Its lease expires; the second relay takes over and moves on.
    ids.extend(append_interleaved(&store, "fenced", 2, 5).await);
    wait_forwarded(&b, 20).await;
    wait_checkpoint(&b, 20).await;

    // The late confirm comes; the first relay must not save its checkpoint
    // (where its batch ended, at most 10) over the second's (20). Stopping
    // it waits for its worker, which finishes the batch and tries to save:
    // when `stop` returns, the save has been tried.
    gated.open.send_replace(true);
    a.stop().await;
    assert!(
        gated.passed.load(Ordering::SeqCst) > 0,
        "the late batch was published"
    );
    assert!(
        a.forwarded() > 0 && a.forwarded() <= 10,
        "{}",
        a.forwarded()
    );
    let partitions = store.partitions(&checkpoint_name("fenced")).await.unwrap();
    assert_eq!(partitions[0].position, 20, "the checkpoint moved back");

    ids.extend(append_interleaved(&store, "fenced", 2, 5).await);
    wait_forwarded(&b, 30).await;
    b.stop().await;
    let seen = drain(&broker, "all", &mut *all).await;
    assert_eq!(
        assert_stream_order(&seen[..]),
        ids.iter().copied().collect::<HashSet<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn a_stopping_relay_gives_up_a_batch_the_broker_never_confirms() {
    let store = Arc::new(MemoryStore::new());
    let broker = MemoryTransport::new();
    let mut all = consumer(&broker, "all", "#").await;
    // A gate never opened: a broker that never answers.
    let silent = Arc::new(Gated {
        inner: broker.clone(),
        open: tokio::sync::watch::channel(false).0,
        waiting: tokio::sync::Notify::new(),
        passed: AtomicUsize::new(0),
    });
    let relay = Relay::builder("silent", Arc::clone(&store), silent.clone())
        .spawn()
        .unwrap();
    append_interleaved(&store, "silent", 1, 3).await;
    tokio::time::timeout(PATIENCE, silent.waiting.notified())
        .await
        .expect("the relay publishes");

    let asked = tokio::time::Instant::now();
    tokio::time::timeout(STOP_GRACE * 2, relay.stop())
        .await
        .expect("stop returns although the broker never answers");
    assert!(asked.elapsed() >= STOP_GRACE, "{:?}", asked.elapsed());
    assert_eq!(relay.forwarded(), 0);
    assert_eq!(
        CheckpointStore::load(&*store, &checkpoint_name("silent"))
            .await
            .unwrap(),
        None,
        "the unconfirmed batch moved the checkpoint"
    );

    // The next relay publishes the batch given up.
    let next = Relay::builder("silent", Arc::clone(&store), Arc::new(broker.clone()))
        .spawn()
        .unwrap();
    wait_forwarded(&next, 3).await;
    next.stop().await;
    assert_eq!(drain(&broker, "all", &mut *all).await.len(), 3);
}
