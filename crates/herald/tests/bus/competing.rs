//! Competing consumers on the memory store: buses of one process that run
//! the same durable subscriber share its partitions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::store::{LeaseStore, MemoryStore, partition_of};
use herald::{
    Bus, ConfigError, DeliveryMode, NewEvent, ReplayFrom, SubscribeError, Subscriber,
    SubscriberState, handler_fn,
};
use serde_json::json;

const NAME: &str = "shared-work";
const PARTITIONS: u32 = 8;
const PATIENCE: Duration = Duration::from_secs(20);

/// One handling: which bus, the stream, the version, the event id.
type Handled = (&'static str, String, u64, herald::EventId);

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Handled>>>);

impl Log {
    fn all(&self) -> Vec<Handled> {
        self.0.lock().unwrap().clone()
    }
}

fn bus_on(store: &Arc<MemoryStore>) -> Bus {
    Bus::builder()
        .store(Arc::clone(store))
        .lease_store(Arc::clone(store) as Arc<dyn LeaseStore>)
        .build()
}

fn join(bus: &Bus, label: &'static str, log: &Log) {
    let log = log.clone();
    bus.subscribe(
        Subscriber::new(
            NAME,
            handler_fn(move |event, _ctx| {
                let log = log.clone();
                async move {
                    log.0.lock().unwrap().push((
                        label,
                        event.stream().unwrap().to_owned(),
                        event.version().unwrap(),
                        event.id(),
                    ));
                    Ok(())
                }
            }),
        )
        .topic("work.#")
        .mode(DeliveryMode::Durable)
        .competing(PARTITIONS)
        .lease_ttl(Duration::from_millis(600))
        .poll_interval(Duration::from_millis(50))
        .batch_size(10),
    )
    .unwrap();
}

/// Polls `done` until it holds, under a deadline.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn owned(bus: &Bus) -> Vec<u32> {
    bus.subscriber(NAME)
        .and_then(|s| s.partitions)
        .unwrap_or_default()
}

async fn publish(bus: &Bus, streams: usize, per_stream: usize, tag: &str) {
    for n in 0..per_stream {
        for s in 0..streams {
            bus.publish_new(
                NewEvent::new("work.queued", json!({ "n": n })).in_stream(format!("{tag}-{s}")),
            )
            .await
            .unwrap();
        }
    }
}

/// Within each stream, the handled versions, in the order of handling.
fn versions_by_stream(log: &[Handled]) -> HashMap<String, Vec<u64>> {
    let mut by_stream: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, stream, version, _) in log {
        by_stream.entry(stream.clone()).or_default().push(*version);
    }
    by_stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_share_the_partitions_keep_stream_order_and_handle_each_event_once() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::default();
    let (a, b) = (bus_on(&store), bus_on(&store));
    join(&a, "a", &log);
    join(&b, "b", &log);
    until("the partitions are spread evenly", || {
        owned(&a).len() == 4 && owned(&b).len() == 4
    })
    .await;
    let (mine, theirs): (HashSet<u32>, HashSet<u32>) = (
        owned(&a).into_iter().collect(),
        owned(&b).into_iter().collect(),
    );
    assert!(mine.is_disjoint(&theirs), "{mine:?} and {theirs:?} overlap");

    publish(&a, 20, 10, "order").await;
    until("every event is handled", || log.all().len() >= 200).await;
    a.shutdown().await;
    b.shutdown().await;

    let handled = log.all();
    let ids: HashSet<_> = handled.iter().map(|h| h.3).collect();
    assert_eq!(ids.len(), handled.len(), "an event was handled twice");
    assert_eq!(handled.len(), 200);
    for (stream, versions) in versions_by_stream(&handled) {
        assert_eq!(versions, (0..10).collect::<Vec<_>>(), "stream {stream}");
    }
    for (label, stream, _, _) in &handled {
        let partition = partition_of(stream, PARTITIONS);
        let owner = if mine.contains(&partition) { "a" } else { "b" };
        assert_eq!(
            label, &owner,
            "{stream} (partition {partition}) handled off its owner"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_leaves_hands_its_partitions_over_without_duplicates() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::default();
    let (a, b) = (bus_on(&store), bus_on(&store));
    join(&a, "a", &log);
    join(&b, "b", &log);
    until("the partitions are spread evenly", || {
        owned(&a).len() == 4 && owned(&b).len() == 4
    })
    .await;
    publish(&b, 16, 20, "order").await;
    // Leaves while work is in flight: its batches finish and their
    // checkpoints are saved before its partitions are given back.
    a.shutdown().await;
    until("the other member took every partition", || {
        owned(&b).len() == PARTITIONS as usize
    })
    .await;
    publish(&b, 16, 5, "order").await;
    until("every event is handled", || log.all().len() >= 16 * 25).await;
    b.shutdown().await;

    let handled = log.all();
    let ids: HashSet<_> = handled.iter().map(|h| h.3).collect();
    assert_eq!(ids.len(), handled.len(), "an event was handled twice");
    assert_eq!(handled.len(), 16 * 25);
    for (stream, versions) in versions_by_stream(&handled) {
        assert_eq!(versions, (0..25).collect::<Vec<_>>(), "stream {stream}");
    }
    assert!(
        handled.iter().any(|h| h.0 == "a") && handled.iter().any(|h| h.0 == "b"),
        "both members worked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_a_group_rewinds_every_partition_in_every_member() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::default();
    let (a, b) = (bus_on(&store), bus_on(&store));
    join(&a, "a", &log);
    join(&b, "b", &log);
    publish(&a, 10, 5, "order").await;
    until("every event is handled", || log.all().len() >= 50).await;
    let deadline = Instant::now() + PATIENCE;
    while a.lag(NAME).await.unwrap() != 0 {
        assert!(Instant::now() < deadline, "the group never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        b.lag(NAME).await.unwrap(),
        0,
        "both members see the group's lag"
    );

    assert_eq!(b.replay(NAME, ReplayFrom::Beginning).await.unwrap(), 0);
    until("every event is handled again", || log.all().len() >= 100).await;
    a.shutdown().await;
    b.shutdown().await;
    let handled = log.all();
    assert_eq!(handled.len(), 100, "each event once more, no more");
    for (stream, versions) in versions_by_stream(&handled) {
        let expected: Vec<u64> = (0..5).chain(0..5).collect();
        assert_eq!(versions, expected, "stream {stream}");
    }
}

#[tokio::test]
async fn competing_needs_a_durable_subscriber_a_lease_store_and_partitions() {
    let store = Arc::new(MemoryStore::new());
    let sub = || Subscriber::new(NAME, handler_fn(|_, _| async { Ok(()) })).topic("#");
    let without_leases = Bus::builder().store(Arc::clone(&store)).build();
    assert!(matches!(
        without_leases.subscribe(sub().mode(DeliveryMode::Durable).competing(4)),
        Err(SubscribeError::NoLeaseStore(name)) if name == NAME
    ));
    let bus = bus_on(&store);
    assert!(matches!(
        bus.subscribe(sub().mode(DeliveryMode::Async).competing(4)),
        Err(SubscribeError::CompetingNotDurable(_))
    ));
    assert!(matches!(
        bus.subscribe(sub().mode(DeliveryMode::Durable).competing(0)),
        Err(SubscribeError::Config(ConfigError::Zero("partitions")))
    ));
    assert!(matches!(
        bus.subscribe(
            sub()
                .mode(DeliveryMode::Durable)
                .competing(4)
                .lease_ttl(Duration::ZERO)
        ),
        Err(SubscribeError::Config(ConfigError::Zero("lease ttl")))
    ));
    assert_eq!(bus.subscriber(NAME), None, "nothing was subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_leases_are_taken_stops_working_on_them() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::default();
    let a = bus_on(&store);
    join(&a, "a", &log);
    until("the only member holds every partition", || {
        owned(&a).len() == PARTITIONS as usize
    })
    .await;
    publish(&a, 8, 5, "order").await;
    until("the first events are handled", || log.all().len() >= 40).await;

    // Another member takes every partition, as if the first one's leases
    // had expired (again if the first one took some back in between).
    let ttl = Duration::from_secs(60);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let states = store.partitions(NAME).await.unwrap();
        for owner in states.iter().filter_map(|s| s.owner.as_deref()) {
            if owner != "intruder" {
                store.leave(NAME, owner).await.unwrap();
            }
        }
        store.renew(NAME, "intruder", ttl).await.unwrap();
        for p in 0..PARTITIONS {
            store.acquire(NAME, "intruder", p, ttl, 0).await.unwrap();
        }
        let states = store.partitions(NAME).await.unwrap();
        if states
            .iter()
            .all(|s| s.owner.as_deref() == Some("intruder"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the intruder never took over");
    }
    until("the first member notices", || owned(&a).is_empty()).await;
    publish(&a, 8, 5, "order").await;

    // The intruder goes without working: the first member takes the
    // partitions back from their checkpoints. Had it delivered the new
    // events while it held no lease, its saves would have been refused and
    // it would now deliver them a second time.
    store.leave(NAME, "intruder").await.unwrap();
    until("every event is handled", || log.all().len() >= 80).await;
    a.shutdown().await;
    let handled = log.all();
    let ids: HashSet<_> = handled.iter().map(|h| h.3).collect();
    assert_eq!(ids.len(), handled.len(), "an event was handled twice");
    assert_eq!(handled.len(), 80);
    for (stream, versions) in versions_by_stream(&handled) {
        assert_eq!(versions, (0..10).collect::<Vec<_>>(), "stream {stream}");
    }
}

/// A disable through one member stops every member's workers (they look at
/// the state in the store each round); the events published meanwhile wait,
/// and an enable through another member has them handled, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disable_through_one_member_stops_the_whole_group_until_enabled() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::default();
    let (a, b) = (bus_on(&store), bus_on(&store));
    join(&a, "a", &log);
    join(&b, "b", &log);
    until("the partitions are spread evenly", || {
        owned(&a).len() == 4 && owned(&b).len() == 4
    })
    .await;

    a.set_enabled(NAME, false).await.unwrap();
    until("member b follows the disable", || {
        b.subscriber(NAME).unwrap().state == SubscriberState::Disabled
    })
    .await;
    publish(&a, 10, 3, "paused").await;
    // A solo subscriber on the same store shows the events were there to
    // be delivered.
    let witness = Arc::new(Mutex::new(0usize));
    let seen = Arc::clone(&witness);
    a.subscribe(
        Subscriber::new(
            "witness",
            handler_fn(move |_, _| {
                let seen = Arc::clone(&seen);
                async move {
                    *seen.lock().unwrap() += 1;
                    Ok(())
                }
            }),
        )
        .topic("work.#")
        .mode(DeliveryMode::Durable)
        .poll_interval(Duration::from_millis(50)),
    )
    .unwrap();
    until("the witness handled the 30", || {
        *witness.lock().unwrap() == 30
    })
    .await;
    assert!(log.all().is_empty(), "a disabled group handled events");

    b.set_enabled(NAME, true).await.unwrap();
    until("every event is handled", || log.all().len() >= 30).await;
    a.shutdown().await;
    b.shutdown().await;
    let handled = log.all();
    let ids: HashSet<_> = handled.iter().map(|h| h.3).collect();
    assert_eq!(handled.len(), 30);
    assert_eq!(ids.len(), 30, "an event was handled twice");
    assert_eq!(
        a.subscriber(NAME).unwrap().state,
        SubscriberState::Enabled,
        "member a followed the enable"
    );
}

/// The memory store's leases, with renewals that can be held up, as a
/// database that stalls would: the members' leases stay valid until they
/// expire, but no renewal moves their fences on.
struct StallingLeases {
    store: Arc<MemoryStore>,
    stalled: tokio::sync::watch::Sender<bool>,
    /// When the last renewal that went through started.
    renewed_at: Mutex<Option<tokio::time::Instant>>,
}

#[herald::async_trait]
impl LeaseStore for StallingLeases {
    async fn renew(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<herald::store::GroupView, herald::store::StoreError> {
        let mut stalled = self.stalled.subscribe();
        let _ = stalled.wait_for(|s| !*s).await;
        *self.renewed_at.lock().unwrap() = Some(tokio::time::Instant::now());
        self.store.renew(group, member, ttl).await
    }

    async fn acquire(
        &self,
        group: &str,
        member: &str,
        partition: u32,
        ttl: Duration,
        initial: u64,
    ) -> Result<Option<herald::store::Lease>, herald::store::StoreError> {
        self.store
            .acquire(group, member, partition, ttl, initial)
            .await
    }

    async fn save(
        &self,
        group: &str,
        member: &str,
        lease: herald::store::Lease,
        position: u64,
    ) -> Result<bool, herald::store::StoreError> {
        self.store.save(group, member, lease, position).await
    }

    async fn release(
        &self,
        group: &str,
        member: &str,
        partition: u32,
    ) -> Result<(), herald::store::StoreError> {
        self.store.release(group, member, partition).await
    }

    async fn leave(&self, group: &str, member: &str) -> Result<(), herald::store::StoreError> {
        self.store.leave(group, member).await
    }

    async fn rewind(
        &self,
        group: &str,
        partitions: u32,
        position: u64,
    ) -> Result<(), herald::store::StoreError> {
        self.store.rewind(group, partitions, position).await
    }

    async fn partitions(
        &self,
        group: &str,
    ) -> Result<Vec<herald::store::PartitionState>, herald::store::StoreError> {
        self.store.partitions(group).await
    }
}

/// A renewal that comes late lets a worker's own fence pass while the
/// lease is still valid in the store: the event it handled just then is
/// saved through the (lease-checked) save, and the worker started again
/// afterwards resumes after it, so nothing is handled twice.
#[tokio::test(start_paused = true)]
async fn a_late_renewal_does_not_deliver_a_handled_event_again() {
    let store = Arc::new(MemoryStore::new());
    let leases = Arc::new(StallingLeases {
        store: Arc::clone(&store),
        stalled: tokio::sync::watch::Sender::new(false),
        renewed_at: Mutex::new(None),
    });
    let bus = Bus::builder()
        .store(Arc::clone(&store))
        .lease_store(Arc::clone(&leases) as Arc<dyn LeaseStore>)
        .build();
    let ttl = Duration::from_secs(3);
    let calls = Arc::new(Mutex::new(Vec::<u64>::new()));
    // The first delivery waits here until the test lets it go.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (seen, wait) = (Arc::clone(&calls), Arc::clone(&gate));
    bus.subscribe(
        Subscriber::new(
            NAME,
            handler_fn(move |event, _ctx| {
                let (seen, wait) = (Arc::clone(&seen), Arc::clone(&wait));
                async move {
                    let first = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(event.version().unwrap());
                        seen.len() == 1
                    };
                    if first {
                        wait.acquire().await.unwrap().forget();
                    }
                    Ok(())
                }
            }),
        )
        .topic("work.#")
        .mode(DeliveryMode::Durable)
        .competing(PARTITIONS)
        .lease_ttl(ttl)
        .poll_interval(Duration::from_millis(50)),
    )
    .unwrap();
    until("the only member holds every partition", || {
        owned(&bus).len() == PARTITIONS as usize
    })
    .await;
    let event = || NewEvent::new("work.queued", json!({})).in_stream("job-1");
    bus.publish_new(event()).await.unwrap();
    until("the first event is in its handler", || {
        calls.lock().unwrap().len() == 1
    })
    .await;
    // No renewal from now on: the fence (a tenth of the TTL before the
    // lease's expiry) passes, the lease itself is still valid.
    leases.stalled.send_replace(true);
    let renewed = leases.renewed_at.lock().unwrap().expect("renewed once");
    tokio::time::sleep_until(renewed + ttl.mul_f64(0.95)).await;
    gate.add_permits(1);
    bus.publish_new(event()).await.unwrap();
    // Renewals resume before the lease expires; the member keeps the
    // partition and starts its worker again.
    tokio::time::sleep_until(renewed + ttl.mul_f64(0.97)).await;
    leases.stalled.send_replace(false);
    until("the second event is handled", || {
        calls.lock().unwrap().contains(&1)
    })
    .await;
    bus.shutdown().await;
    assert_eq!(
        *calls.lock().unwrap(),
        [0, 1],
        "the first event was handled again"
    );
}

/// A competing subscriber's partition worker holds back a failing event
/// with the rest of its stream while the other streams go on; the retry
/// succeeds and the stream keeps its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_worker_retries_a_failing_stream_without_holding_up_the_others() {
    let store = Arc::new(MemoryStore::new());
    let bus = bus_on(&store);
    let calls = Arc::new(Mutex::new(Vec::<(String, u64, u32)>::new()));
    let seen = Arc::clone(&calls);
    bus.subscribe(
        Subscriber::new(
            NAME,
            handler_fn(move |event, ctx| {
                let seen = Arc::clone(&seen);
                async move {
                    let stream = event.stream().unwrap().to_owned();
                    let version = event.version().unwrap();
                    seen.lock()
                        .unwrap()
                        .push((stream.clone(), version, ctx.attempt()));
                    if stream == "job-0" && version == 0 && ctx.attempt() == 1 {
                        return Err(herald::HandlerError::retry("not yet"));
                    }
                    Ok(())
                }
            }),
        )
        .topic("work.#")
        .mode(DeliveryMode::Durable)
        .competing(PARTITIONS)
        .lease_ttl(Duration::from_secs(5))
        .retry(herald::RetryPolicy::fixed(Duration::from_secs(1), 2))
        .poll_interval(Duration::from_millis(50)),
    )
    .unwrap();
    until("the only member holds every partition", || {
        owned(&bus).len() == PARTITIONS as usize
    })
    .await;
    publish(&bus, 20, 2, "job").await;
    until("every event is handled", || {
        let calls = calls.lock().unwrap();
        let done: HashSet<(String, u64)> = calls
            .iter()
            .filter(|c| !(c.0 == "job-0" && c.1 == 0 && c.2 == 1))
            .map(|c| (c.0.clone(), c.1))
            .collect();
        done.len() == 40
    })
    .await;
    bus.shutdown().await;
    let calls = calls.lock().unwrap().clone();
    let at = |stream: &str, version: u64, attempt: u32| {
        calls
            .iter()
            .position(|c| c.0 == stream && c.1 == version && c.2 == attempt)
            .unwrap_or_else(|| panic!("{stream}@{version}#{attempt} missing: {calls:?}"))
    };
    let retry = at("job-0", 0, 2);
    // Every other stream's events, in every partition, came before the
    // retry: none waited out its backoff.
    for s in 1..20 {
        for v in 0..2 {
            assert!(
                at(&format!("job-{s}"), v, 1) < retry,
                "job-{s}@{v} waited: {calls:?}"
            );
        }
    }
    assert!(retry < at("job-0", 1, 1), "job-0 out of order: {calls:?}");
    assert_eq!(calls.len(), 41, "each event once, the failing one twice");
}
