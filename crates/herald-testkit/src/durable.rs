//! The durable-subscriber conformance suite: a [`Bus`] built on a store
//! feeds its durable subscribers from that store.
//!
//! Run it with [`durable_conformance!`](crate::durable_conformance) for a
//! store that implements both [`EventStore`] and [`CheckpointStore`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald::store::{CheckpointStore, EventStore, ReadStream, ScheduledRetry, StreamName};
use herald::{
    AttemptError, Bus, DeliveryMode, ErrorKind, EventId, HandlerError, NewEvent, RecordedEvent,
    ReplayFrom, StartFrom, Subscriber, SubscriberState, handler_fn,
};
use serde_json::json;
use tokio::sync::Notify;

/// Turns the scenarios into one test each, for stores made by `$factory`
/// (an `async fn() -> Arc<S>` with `S: EventStore + CheckpointStore`,
/// returning an empty store of the test's own).
#[macro_export]
macro_rules! durable_conformance {
    ($factory:path) => {
        $crate::__durable_scenarios!(
            $factory;
            every_published_event_is_stored_in_a_stream,
            a_durable_subscriber_receives_history_and_new_events,
            a_durable_subscriber_starting_now_skips_history,
            a_durable_subscriber_resumes_after_a_restart_where_it_left_off,
            concurrent_durable_delivery_keeps_order_within_each_stream,
            a_failing_event_that_is_not_parked_is_delivered_again,
            a_dead_lettered_event_lets_the_checkpoint_move_on,
            a_failing_event_holds_back_only_its_own_stream_while_it_waits_for_a_retry,
            a_scheduled_retry_keeps_its_attempt_count_across_a_restart,
            a_replay_delivers_a_scheduled_event_afresh_and_forgets_its_schedule,
            durable_delivery_misses_nothing_from_concurrent_publishers,
            replay_delivers_events_again_from_a_position_a_time_or_the_start,
            the_checkpoint_moves_past_events_the_subscriber_does_not_match,
            a_disabled_durable_subscriber_stays_disabled_after_a_restart_and_catches_up_when_enabled,
            disabling_a_durable_subscriber_on_one_bus_stops_it_on_another_sharing_the_store,
            a_durable_subscriber_added_disabled_receives_nothing_until_enabled,
            scheduled_retries_are_saved_replaced_listed_by_position_and_cleared,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __durable_scenarios {
    ($factory:path; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::durable::$name($factory().await).await;
            }
        )*
    };
}

/// How long a scenario waits for deliveries before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Records what a durable subscriber handled and wakes waiters.
#[derive(Clone, Default)]
struct Log {
    events: Arc<Mutex<Vec<RecordedEvent>>>,
    changed: Arc<Notify>,
}

impl Log {
    fn push(&self, event: RecordedEvent) {
        self.events.lock().expect("log lock").push(event);
        self.changed.notify_waiters();
    }

    fn events(&self) -> Vec<RecordedEvent> {
        self.events.lock().expect("log lock").clone()
    }

    fn ids(&self) -> HashSet<EventId> {
        self.events().iter().map(RecordedEvent::id).collect()
    }

    /// Waits until `done` holds for the events seen.
    async fn until(&self, what: &str, done: impl Fn(&[RecordedEvent]) -> bool) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if done(&self.events()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(PATIENCE, wait).await.is_err() {
            panic!(
                "timed out waiting until {what}; saw {} events",
                self.events().len()
            );
        }
    }
}

fn recording(log: &Log) -> impl herald::Handler {
    let log = log.clone();
    handler_fn(move |event, _ctx| {
        let log = log.clone();
        async move {
            log.push(event);
            Ok(())
        }
    })
}

fn bus_on<S: EventStore + CheckpointStore>(store: &Arc<S>) -> Bus {
    Bus::builder().store(Arc::clone(store)).build()
}

fn n_of(e: &RecordedEvent) -> u64 {
    e.data().to_value()["n"].as_u64().expect("payload with n")
}

/// Publishing on a bus built on a store appends first: the event is in the
/// store, in the stream named after its type unless another is given, and
/// subscribers see it as stored.
pub async fn every_published_event_is_stored_in_a_stream<S: EventStore + CheckpointStore>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    let inline = Log::default();
    bus.subscribe(Subscriber::new("inline", recording(&inline)).topic("#"))
        .expect("subscribe");
    let a = bus
        .publish("order.created", json!({"n": 1}))
        .await
        .expect("publish");
    let b = bus
        .publish_new(NewEvent::new("order.created", json!({"n": 2})).in_stream("order-42"))
        .await
        .expect("publish");
    assert_eq!(a.stream(), Some("order.created"));
    assert_eq!(b.stream(), Some("order-42"));
    assert!(a.position().is_some() && b.position() > a.position());
    let by_type = store
        .read_stream(
            &StreamName::new("order.created").unwrap(),
            ReadStream::forward(),
        )
        .await
        .unwrap();
    assert_eq!(by_type, vec![a.clone()]);
    assert_eq!(store.event(b.id()).await.unwrap(), Some(b.clone()));
    assert_eq!(inline.events(), vec![a, b]);
    // An invalid stream name fails the publish and stores nothing.
    let err = bus
        .publish_new(NewEvent::new("order.created", json!({"n": 3})).in_stream("bad stream"))
        .await
        .unwrap_err();
    assert!(matches!(err, herald::PublishError::Store(_)), "{err:?}");
    assert_eq!(inline.events().len(), 2);
    bus.shutdown().await;
}

/// A durable subscriber sees what was stored before it subscribed, then new
/// events, and its checkpoint follows.
pub async fn a_durable_subscriber_receives_history_and_new_events<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    for n in 0..5 {
        bus.publish("order.created", json!({ "n": n }))
            .await
            .expect("publish");
    }
    bus.publish("invoice.sent", json!({"n": 99}))
        .await
        .expect("publish");
    let log = Log::default();
    bus.subscribe(
        Subscriber::new("orders", recording(&log))
            .topic("order.*")
            .mode(DeliveryMode::Durable)
            .poll_interval(Duration::from_millis(50)),
    )
    .expect("subscribe");
    log.until("the history arrived", |e| e.len() == 5).await;
    for n in 5..8 {
        bus.publish("order.created", json!({ "n": n }))
            .await
            .expect("publish");
    }
    log.until("new events arrived", |e| e.len() == 8).await;
    assert_eq!(
        log.events().iter().map(n_of).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    bus.shutdown().await;
    let head = store.head().await.unwrap();
    assert_eq!(store.load("orders").await.unwrap(), Some(head));
    assert_eq!(bus.subscriber("orders").unwrap().checkpoint, Some(head));
}

/// `StartFrom::Now` begins after the events stored before subscribing.
pub async fn a_durable_subscriber_starting_now_skips_history<S: EventStore + CheckpointStore>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    bus.publish("order.created", json!({"n": 1}))
        .await
        .expect("publish");
    let log = Log::default();
    bus.subscribe(
        Subscriber::new("late", recording(&log))
            .topic("#")
            .mode(DeliveryMode::Durable)
            .start_from(StartFrom::Now)
            .poll_interval(Duration::from_millis(50)),
    )
    .expect("subscribe");
    // The subscriber saves its starting point first; wait for it before
    // publishing, so the next event is certainly after it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while store.load("late").await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no starting checkpoint saved"
        );
        tokio::task::yield_now().await;
    }
    bus.publish("order.created", json!({"n": 2}))
        .await
        .expect("publish");
    log.until("the new event arrived", |e| !e.is_empty()).await;
    bus.shutdown().await;
    assert_eq!(log.events().iter().map(n_of).collect::<Vec<_>>(), [2]);
}

/// A new bus on the same store, with the same subscriber name, continues
/// after the checkpoint: nothing handled twice, nothing skipped.
pub async fn a_durable_subscriber_resumes_after_a_restart_where_it_left_off<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let first = Log::default();
    {
        let bus = bus_on(&store);
        bus.subscribe(
            Subscriber::new("mailer", recording(&first))
                .topic("#")
                .mode(DeliveryMode::Durable)
                .poll_interval(Duration::from_millis(50)),
        )
        .expect("subscribe");
        for n in 0..10 {
            bus.publish("user.registered", json!({ "n": n }))
                .await
                .expect("publish");
        }
        first
            .until("the first run handled 10", |e| e.len() == 10)
            .await;
        bus.shutdown().await;
    }
    // Published while the subscriber is not running.
    let writer = bus_on(&store);
    for n in 10..15 {
        writer
            .publish("user.registered", json!({ "n": n }))
            .await
            .expect("publish");
    }
    writer.shutdown().await;

    let second = Log::default();
    let bus = bus_on(&store);
    bus.subscribe(
        Subscriber::new("mailer", recording(&second))
            .topic("#")
            .mode(DeliveryMode::Durable)
            .poll_interval(Duration::from_millis(50)),
    )
    .expect("subscribe");
    second
        .until("the second run caught up", |e| e.len() >= 5)
        .await;
    bus.shutdown().await;
    assert_eq!(
        second.events().iter().map(n_of).collect::<Vec<_>>(),
        (10..15).collect::<Vec<_>>()
    );
}

/// With concurrency above one, each stream's events still arrive in stream
/// order.
pub async fn concurrent_durable_delivery_keeps_order_within_each_stream<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    for round in 0..20u64 {
        for s in 0..6u64 {
            bus.publish_new(
                NewEvent::new("cart.changed", json!({ "n": round })).in_stream(format!("cart-{s}")),
            )
            .await
            .expect("publish");
        }
    }
    let log = Log::default();
    let inner = log.clone();
    bus.subscribe(
        Subscriber::new(
            "carts",
            handler_fn(move |event, _| {
                let log = inner.clone();
                async move {
                    // Yield so that lanes interleave.
                    tokio::task::yield_now().await;
                    log.push(event);
                    Ok(())
                }
            }),
        )
        .topic("cart.*")
        .mode(DeliveryMode::Durable)
        .concurrency(4)
        .batch_size(37),
    )
    .expect("subscribe");
    log.until("all 120 arrived", |e| e.len() == 120).await;
    bus.shutdown().await;
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    for e in log.events() {
        per_stream
            .entry(e.stream().expect("stored").to_owned())
            .or_default()
            .push(e.version().expect("stored"));
    }
    assert_eq!(per_stream.len(), 6);
    for (stream, versions) in per_stream {
        assert_eq!(versions, (0..20).collect::<Vec<_>>(), "stream {stream}");
    }
}

/// When a failure is neither retried to success nor dead-lettered (the bus
/// keeps no dead letters), the checkpoint stays and the event comes again.
pub async fn a_failing_event_that_is_not_parked_is_delivered_again<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let bus = Bus::builder()
        .store(Arc::clone(&store))
        .without_dead_letters()
        .build();
    let attempts = Arc::new(AtomicU32::new(0));
    let log = Log::default();
    let (a, inner) = (Arc::clone(&attempts), log.clone());
    bus.subscribe(
        Subscriber::new(
            "flaky",
            handler_fn(move |event, _| {
                let (a, log) = (Arc::clone(&a), inner.clone());
                async move {
                    if n_of(&event) == 1 && a.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err(HandlerError::retry("downstream unavailable"));
                    }
                    log.push(event);
                    Ok(())
                }
            }),
        )
        .topic("#")
        .mode(DeliveryMode::Durable)
        .poll_interval(Duration::from_millis(50)),
    )
    .expect("subscribe");
    for n in 0..3 {
        bus.publish("job.queued", json!({ "n": n }))
            .await
            .expect("publish");
    }
    log.until("every event handled", |e| {
        e.iter().any(|e| n_of(e) == 2) && e.iter().any(|e| n_of(e) == 1)
    })
    .await;
    bus.shutdown().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let ns: Vec<u64> = log.events().iter().map(n_of).collect();
    assert!(
        ns.contains(&0) && ns.contains(&1) && ns.contains(&2),
        "{ns:?}"
    );
}

/// A dead-lettered event counts as settled: later events are delivered and
/// the checkpoint passes it.
pub async fn a_dead_lettered_event_lets_the_checkpoint_move_on<S: EventStore + CheckpointStore>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    let log = Log::default();
    let inner = log.clone();
    bus.subscribe(
        Subscriber::new(
            "strict",
            handler_fn(move |event, _| {
                let log = inner.clone();
                async move {
                    if n_of(&event) == 1 {
                        return Err(HandlerError::dead_letter("malformed order"));
                    }
                    log.push(event);
                    Ok(())
                }
            }),
        )
        .topic("#")
        .mode(DeliveryMode::Durable)
        .poll_interval(Duration::from_millis(50)),
    )
    .expect("subscribe");
    for n in 0..3 {
        bus.publish("order.created", json!({ "n": n }))
            .await
            .expect("publish");
    }
    log.until("the later event arrived", |e| {
        e.iter().any(|e| n_of(e) == 2)
    })
    .await;
    bus.shutdown().await;
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(n_of(&letters[0].event), 1);
    assert_eq!(
        store.load("strict").await.unwrap(),
        Some(store.head().await.unwrap())
    );
}

/// One handling: stream, version, attempt.
type Try = (String, u64, u32);

/// Records every call of a handler (stream, version, attempt) and fails
/// the event of `stream` at version 0 while `fails` says so.
fn trying(
    tries: &Arc<Mutex<Vec<Try>>>,
    changed: &Arc<Notify>,
    stream: &'static str,
    fails: impl Fn(u32) -> bool + Send + Sync + 'static,
) -> impl herald::Handler {
    let (tries, changed, fails) = (Arc::clone(tries), Arc::clone(changed), Arc::new(fails));
    handler_fn(move |event, ctx| {
        let (tries, changed, fails) =
            (Arc::clone(&tries), Arc::clone(&changed), Arc::clone(&fails));
        async move {
            let name = event
                .stream()
                .expect("stored events have a stream")
                .to_owned();
            let version = event.version().expect("stored events have a version");
            let failing = name == stream && version == 0 && fails(ctx.attempt());
            tries
                .lock()
                .expect("tries lock")
                .push((name, version, ctx.attempt()));
            changed.notify_waiters();
            if failing {
                return Err(HandlerError::retry("downstream unavailable"));
            }
            Ok(())
        }
    })
}

/// Waits until `done` holds for the tries recorded.
async fn until_tried(
    tries: &Arc<Mutex<Vec<Try>>>,
    changed: &Arc<Notify>,
    what: &str,
    done: impl Fn(&[Try]) -> bool,
) {
    let wait = async {
        loop {
            let notified = changed.notified();
            if done(&tries.lock().expect("tries lock")) {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(PATIENCE, wait).await.is_err() {
        panic!(
            "timed out waiting until {what}; tried {:?}",
            tries.lock().expect("tries lock")
        );
    }
}

/// Polls `probe` until it gives a value, under [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the subscriber's saved checkpoint is the store's head.
async fn until_checkpoint_at_head<S: EventStore + CheckpointStore>(store: &S, subscriber: &str) {
    eventually("the checkpoint never reached the head", || async {
        let head = store.head().await.expect("head");
        (store.load(subscriber).await.expect("load") == Some(head)).then_some(())
    })
    .await;
}

/// Waits until the subscriber has a retry scheduled, and returns them.
async fn until_scheduled<S: CheckpointStore>(
    store: &S,
    subscriber: &str,
) -> Vec<herald::store::ScheduledRetry> {
    eventually("no retry was scheduled", || async {
        let scheduled = store.scheduled_retries(subscriber).await.expect("retries");
        (!scheduled.is_empty()).then_some(scheduled)
    })
    .await
}

/// A durable subscriber with concurrency 1 whose handler fails an event
/// twice before it succeeds: the other streams' events are handled while
/// the failing one waits out its backoff, its own stream's next event only
/// after it, and the checkpoint then reaches the head.
pub async fn a_failing_event_holds_back_only_its_own_stream_while_it_waits_for_a_retry<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    let tries = Arc::new(Mutex::new(Vec::new()));
    let changed = Arc::new(Notify::new());
    bus.subscribe(
        Subscriber::new(
            "shipping",
            trying(&tries, &changed, "order-1", |attempt| attempt < 3),
        )
        .topic("#")
        .mode(DeliveryMode::Durable)
        .concurrency(1)
        .retry(herald::RetryPolicy::fixed(Duration::from_millis(300), 3))
        .poll_interval(Duration::from_millis(50)),
    )
    .expect("subscribe");
    let mut events = vec![
        NewEvent::new("order.placed", json!({ "n": 0 })).in_stream("order-1"),
        NewEvent::new("order.paid", json!({ "n": 1 })).in_stream("order-1"),
    ];
    for n in 0..5 {
        events.push(
            NewEvent::new("order.placed", json!({ "n": n })).in_stream(format!("order-{}", n + 2)),
        );
    }
    // In one append, so that the runner reads them all at once, however
    // slow the store: the other streams' events come in the same batch as
    // the failing one, before its backoff can end.
    bus.publish_all(events).await.expect("publish");
    until_tried(
        &tries,
        &changed,
        "order-1's second event was handled",
        |t| t.iter().any(|(s, v, _)| s == "order-1" && *v == 1),
    )
    .await;
    until_checkpoint_at_head(&*store, "shipping").await;
    bus.shutdown().await;
    let tries = tries.lock().expect("tries lock").clone();
    let at = |stream: &str, version: u64, attempt: u32| {
        tries
            .iter()
            .position(|t| t.0 == stream && t.1 == version && t.2 == attempt)
            .unwrap_or_else(|| panic!("{stream}@{version} attempt {attempt} not tried: {tries:?}"))
    };
    let first_retry = at("order-1", 0, 2);
    for n in 2..7 {
        assert!(
            at(&format!("order-{n}"), 0, 1) < first_retry,
            "order-{n} waited for order-1's retry: {tries:?}"
        );
    }
    assert!(
        at("order-1", 0, 3) < at("order-1", 1, 1),
        "order-1 out of order: {tries:?}"
    );
    let order_1: Vec<(u64, u32)> = tries
        .iter()
        .filter(|t| t.0 == "order-1")
        .map(|t| (t.1, t.2))
        .collect();
    assert_eq!(order_1, [(0, 1), (0, 2), (0, 3), (1, 1)]);
    assert!(
        store
            .scheduled_retries("shipping")
            .await
            .expect("retries")
            .is_empty(),
        "a retry that succeeded is no longer scheduled"
    );
}

/// An event fails once, its retry is scheduled, the process stops; after a
/// restart the subscriber goes on counting: the dead letter shows three
/// attempts in all, not three after the restart.
pub async fn a_scheduled_retry_keeps_its_attempt_count_across_a_restart<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let policy = herald::RetryPolicy::fixed(Duration::from_millis(200), 3);
    let tries = Arc::new(Mutex::new(Vec::new()));
    let changed = Arc::new(Notify::new());
    let first = bus_on(&store);
    first
        .subscribe(
            Subscriber::new("invoicing", trying(&tries, &changed, "invoice-1", |_| true))
                .topic("#")
                .mode(DeliveryMode::Durable)
                // Far enough out that the first process stops before it.
                .retry(herald::RetryPolicy::fixed(Duration::from_secs(3600), 3))
                .poll_interval(Duration::from_millis(50)),
        )
        .expect("subscribe");
    first
        .publish_new(NewEvent::new("invoice.issued", json!({ "n": 0 })).in_stream("invoice-1"))
        .await
        .expect("publish");
    let scheduled = until_scheduled(&*store, "invoicing").await;
    first.shutdown().await;
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].attempts(), 1);
    assert!(scheduled[0].due > chrono::Utc::now() + chrono::Duration::minutes(30));
    // As an operator would to have it tried now: bring the retry forward.
    let mut now = scheduled[0].clone();
    now.due = chrono::Utc::now();
    store
        .schedule_retry("invoicing", &now)
        .await
        .expect("reschedule");

    let second = bus_on(&store);
    second
        .subscribe(
            Subscriber::new("invoicing", trying(&tries, &changed, "invoice-1", |_| true))
                .topic("#")
                .mode(DeliveryMode::Durable)
                .retry(policy)
                .poll_interval(Duration::from_millis(50)),
        )
        .expect("subscribe again");
    until_tried(&tries, &changed, "the third attempt", |t| {
        t.iter().any(|(_, _, attempt)| *attempt == 3)
    })
    .await;
    let letters = eventually("never dead-lettered", || async {
        let letters = second
            .dead_letters(&Default::default())
            .await
            .expect("dead letters");
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    second.shutdown().await;
    let attempts: Vec<u32> = tries
        .lock()
        .expect("tries lock")
        .iter()
        .map(|t| t.2)
        .collect();
    assert_eq!(
        attempts,
        [1, 2, 3],
        "one attempt before the restart, two after"
    );
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    let numbers: Vec<u32> = letters[0].errors.iter().map(|e| e.attempt).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert!(
        store
            .scheduled_retries("invoicing")
            .await
            .expect("retries")
            .is_empty()
    );
    assert_eq!(
        store.load("invoicing").await.expect("load"),
        Some(store.head().await.expect("head"))
    );
}

/// An event waits for a retry an hour away; the subscriber is replayed
/// from the start: the event is delivered again at once, counted from
/// attempt 1, and its schedule is gone from the store.
pub async fn a_replay_delivers_a_scheduled_event_afresh_and_forgets_its_schedule<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    let tries = Arc::new(Mutex::new(Vec::new()));
    let changed = Arc::new(Notify::new());
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let failing = Arc::clone(&broken);
    bus.subscribe(
        Subscriber::new(
            "billing",
            trying(&tries, &changed, "invoice-7", move |_| {
                failing.load(Ordering::SeqCst)
            }),
        )
        .topic("#")
        .mode(DeliveryMode::Durable)
        .retry(herald::RetryPolicy::fixed(Duration::from_secs(3600), 3))
        .poll_interval(Duration::from_millis(50)),
    )
    .expect("subscribe");
    bus.publish_new(NewEvent::new("invoice.issued", json!({ "n": 0 })).in_stream("invoice-7"))
        .await
        .expect("publish");
    until_scheduled(&*store, "billing").await;
    broken.store(false, Ordering::SeqCst);
    bus.replay("billing", ReplayFrom::Beginning)
        .await
        .expect("replay");
    until_tried(&tries, &changed, "the event was delivered again", |t| {
        t.len() >= 2
    })
    .await;
    until_checkpoint_at_head(&*store, "billing").await;
    bus.shutdown().await;
    let attempts: Vec<u32> = tries
        .lock()
        .expect("tries lock")
        .iter()
        .map(|t| t.2)
        .collect();
    assert_eq!(
        attempts,
        [1, 1],
        "failed once, then delivered afresh by the replay"
    );
    assert!(
        store
            .scheduled_retries("billing")
            .await
            .expect("retries")
            .is_empty(),
        "the replay left the schedule in the store"
    );
}

/// Eight publishers at once, a durable subscriber with concurrency 3: it
/// sees every event exactly once.
pub async fn durable_delivery_misses_nothing_from_concurrent_publishers<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    let log = Log::default();
    bus.subscribe(
        Subscriber::new("audit", recording(&log))
            .topic("#")
            .mode(DeliveryMode::Durable)
            .concurrency(3)
            .batch_size(50)
            .poll_interval(Duration::from_millis(20)),
    )
    .expect("subscribe");
    let publishers: Vec<_> = (0..8u64)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..50u64 {
                    let e = bus
                        .publish_new(
                            NewEvent::new("audit.entry", json!({ "n": p * 1000 + i }))
                                .in_stream(format!("audit-{p}")),
                        )
                        .await
                        .expect("publish");
                    ids.push(e.id());
                }
                ids
            })
        })
        .collect();
    let mut published = HashSet::new();
    for p in publishers {
        published.extend(p.await.expect("publisher task"));
    }
    log.until("all 400 arrived", |e| e.len() >= 400).await;
    bus.shutdown().await;
    assert_eq!(log.events().len(), 400, "an event was delivered twice");
    assert_eq!(log.ids(), published);
}

/// Replay moves the checkpoint back: the events after it arrive again, and
/// the lag says how far behind the subscriber is.
pub async fn replay_delivers_events_again_from_a_position_a_time_or_the_start<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    let log = Log::default();
    bus.subscribe(
        Subscriber::new("projector", recording(&log))
            .topic("#")
            .mode(DeliveryMode::Durable)
            .poll_interval(Duration::from_millis(20)),
    )
    .expect("subscribe");
    let mut published = Vec::new();
    for n in 0..6 {
        published.push(
            bus.publish("row.changed", json!({ "n": n }))
                .await
                .expect("publish"),
        );
    }
    log.until("the first pass", |e| e.len() == 6).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while bus.lag("projector").await.expect("lag") != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpoint never caught up"
        );
        tokio::task::yield_now().await;
    }

    let at = published[3].position().expect("stored");
    assert_eq!(
        bus.replay("projector", ReplayFrom::Position(at))
            .await
            .expect("replay"),
        at
    );
    log.until("events after the position again", |e| e.len() == 8)
        .await;
    assert_eq!(
        log.events()[6..].iter().map(n_of).collect::<Vec<_>>(),
        [4, 5]
    );

    // Events recorded at or after the time of event 5: event 5, and event 4
    // too if both fell in the same microsecond.
    let since = published[5].recorded_at();
    bus.replay("projector", ReplayFrom::Time(since))
        .await
        .expect("replay");
    log.until("events since the time again", |e| {
        e.len() >= 9 && n_of(&e[e.len() - 1]) == 5
    })
    .await;
    let after_time = log.events().len();
    assert!(log.events()[8..].iter().all(|e| e.recorded_at() >= since));

    assert_eq!(
        bus.replay("projector", ReplayFrom::Beginning)
            .await
            .expect("replay"),
        0
    );
    log.until("everything again", |e| e.len() >= after_time + 6)
        .await;
    bus.shutdown().await;
    assert_eq!(
        log.events()[after_time..]
            .iter()
            .map(n_of)
            .collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );
    assert!(matches!(
        bus.replay("nobody", ReplayFrom::Beginning).await,
        Err(herald::DurableError::UnknownSubscriber(_))
    ));
}

/// Events of other types move the checkpoint on without being delivered.
pub async fn the_checkpoint_moves_past_events_the_subscriber_does_not_match<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let bus = bus_on(&store);
    let log = Log::default();
    bus.subscribe(
        Subscriber::new("invoices", recording(&log))
            .topic("invoice.*")
            .mode(DeliveryMode::Durable)
            .batch_size(10)
            .poll_interval(Duration::from_millis(20)),
    )
    .expect("subscribe");
    for n in 0..25 {
        bus.publish("order.created", json!({ "n": n }))
            .await
            .expect("publish");
    }
    bus.publish("invoice.sent", json!({"n": 100}))
        .await
        .expect("publish");
    for n in 0..25 {
        bus.publish("order.created", json!({ "n": n }))
            .await
            .expect("publish");
    }
    log.until("the invoice arrived", |e| !e.is_empty()).await;
    let head = store.head().await.expect("head");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while store.load("invoices").await.expect("load") != Some(head) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpoint never reached the head"
        );
        tokio::task::yield_now().await;
    }
    bus.shutdown().await;
    assert_eq!(log.events().iter().map(n_of).collect::<Vec<_>>(), [100]);
}

/// Polls `bus` until its subscriber `name` is in `state`; fails after
/// [`PATIENCE`].
async fn until_state(bus: &Bus, name: &str, state: SubscriberState, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = bus.subscriber(name).map(|s| s.state);
        if now.as_ref() == Some(&state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}; the subscriber is {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn durable(name: &str, log: &Log) -> Subscriber {
    Subscriber::new(name, recording(log))
        .topic("#")
        .mode(DeliveryMode::Durable)
        .poll_interval(Duration::from_millis(50))
}

/// A durable subscriber disabled through the bus is disabled in the store:
/// a new bus on the same store (a restart) keeps it disabled, so it
/// receives nothing of what was published meanwhile; once enabled, it
/// receives every event it missed, in order, and nothing twice.
pub async fn a_disabled_durable_subscriber_stays_disabled_after_a_restart_and_catches_up_when_enabled<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let first = Log::default();
    {
        let bus = bus_on(&store);
        bus.subscribe(durable("auditor", &first))
            .expect("subscribe");
        for n in 0..3 {
            bus.publish("user.registered", json!({ "n": n }))
                .await
                .expect("publish");
        }
        first
            .until("the first run handled 3", |e| e.len() == 3)
            .await;
        bus.set_enabled("auditor", false)
            .await
            .expect("disable and save");
        assert_eq!(
            store.load_enabled("auditor").await.expect("load state"),
            Some(false),
            "the store has the subscriber disabled"
        );
        for n in 3..8 {
            bus.publish("user.registered", json!({ "n": n }))
                .await
                .expect("publish");
        }
        bus.shutdown().await;
    }
    assert_eq!(
        first.events().iter().map(n_of).collect::<Vec<_>>(),
        [0, 1, 2],
        "nothing was delivered after the disable"
    );

    let second = Log::default();
    let witness = Log::default();
    let bus = bus_on(&store);
    bus.subscribe(durable("auditor", &second))
        .expect("subscribe again");
    bus.subscribe(durable("witness", &witness))
        .expect("subscribe witness");
    until_state(
        &bus,
        "auditor",
        SubscriberState::Disabled,
        "the restarted subscriber loaded its disabled state",
    )
    .await;
    bus.publish("user.registered", json!({ "n": 8 }))
        .await
        .expect("publish");
    witness
        .until("the witness handled all 9", |e| e.len() == 9)
        .await;
    assert!(
        second.events().is_empty(),
        "a subscriber disabled before the restart received {:?}",
        second.events().iter().map(n_of).collect::<Vec<_>>()
    );
    assert_eq!(
        bus.subscriber("auditor").map(|s| s.state),
        Some(SubscriberState::Disabled)
    );

    bus.set_enabled("auditor", true).await.expect("enable");
    assert_eq!(
        store.load_enabled("auditor").await.expect("load state"),
        Some(true)
    );
    second
        .until("the enabled subscriber caught up", |e| e.len() >= 6)
        .await;
    bus.shutdown().await;
    assert_eq!(
        second.events().iter().map(n_of).collect::<Vec<_>>(),
        (3..9).collect::<Vec<_>>(),
        "once enabled it receives exactly what it missed"
    );
}

/// Two buses on one store (two processes) running the same durable
/// subscriber: disabling it through one stops it in the other, which
/// receives nothing until it is enabled again (through either bus); then
/// the events published meanwhile are delivered.
pub async fn disabling_a_durable_subscriber_on_one_bus_stops_it_on_another_sharing_the_store<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let (log_a, log_b, witness) = (Log::default(), Log::default(), Log::default());
    let a = bus_on(&store);
    let b = bus_on(&store);
    a.subscribe(durable("reporter", &log_a))
        .expect("subscribe a");
    a.subscribe(durable("witness", &witness))
        .expect("subscribe witness");
    b.subscribe(durable("reporter", &log_b))
        .expect("subscribe b");

    b.set_enabled("reporter", false)
        .await
        .expect("disable on b");
    until_state(
        &a,
        "reporter",
        SubscriberState::Disabled,
        "bus a followed the disable made on bus b",
    )
    .await;
    let published: HashSet<EventId> = {
        let mut ids = HashSet::new();
        for n in 0..5 {
            let e = a
                .publish("report.due", json!({ "n": n }))
                .await
                .expect("publish");
            ids.insert(e.id());
        }
        ids
    };
    witness
        .until("the witness handled the 5", |e| e.len() == 5)
        .await;
    assert!(
        log_a.events().is_empty() && log_b.events().is_empty(),
        "a disabled subscriber received events: {} on a, {} on b",
        log_a.events().len(),
        log_b.events().len()
    );

    a.set_enabled("reporter", true).await.expect("enable on a");
    until_state(
        &b,
        "reporter",
        SubscriberState::Enabled,
        "bus b followed the enable made on bus a",
    )
    .await;
    // The two share the subscriber's checkpoint: between them, every event
    // is delivered.
    let delivered = || -> HashSet<EventId> { log_a.ids().union(&log_b.ids()).copied().collect() };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while delivered() != published {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the enabled subscriber: {} of 5 delivered",
            delivered().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A durable subscriber added [`disabled`](Subscriber::disabled) to a store
/// that has no state for it starts disabled; once enabled it receives the
/// history, and the store has it enabled.
pub async fn a_durable_subscriber_added_disabled_receives_nothing_until_enabled<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    let (log, witness) = (Log::default(), Log::default());
    let bus = bus_on(&store);
    bus.subscribe(durable("late-starter", &log).disabled())
        .expect("subscribe");
    bus.subscribe(durable("witness", &witness))
        .expect("subscribe witness");
    assert_eq!(
        bus.subscriber("late-starter").map(|s| s.state),
        Some(SubscriberState::Disabled)
    );
    for n in 0..4 {
        bus.publish("job.queued", json!({ "n": n }))
            .await
            .expect("publish");
    }
    witness
        .until("the witness handled the 4", |e| e.len() == 4)
        .await;
    assert_eq!(
        store
            .load_enabled("late-starter")
            .await
            .expect("load state"),
        None,
        "the state it was added with is not saved until changed"
    );
    assert!(
        log.events().is_empty(),
        "a disabled subscriber received events"
    );

    bus.enable("late-starter").expect("enable");
    log.until("it received the history", |e| e.len() >= 4).await;
    bus.shutdown().await;
    assert_eq!(
        log.events().iter().map(n_of).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(
        store
            .load_enabled("late-starter")
            .await
            .expect("load state"),
        Some(true),
        "the enable was saved by the time the bus shut down"
    );
}

/// A retry of `event` at `position` after `errors`, due `due_in_ms` after
/// `t0`.
fn retry(
    event: EventId,
    position: u64,
    errors: Vec<AttemptError>,
    t0: DateTime<Utc>,
    due_in_ms: i64,
) -> ScheduledRetry {
    ScheduledRetry {
        event_id: event,
        position,
        errors,
        due: t0 + chrono::Duration::milliseconds(due_in_ms),
    }
}

/// Failed attempts 1 to `kinds.len()`, one a second after `t0`, each with
/// its kind and a message naming it.
fn failures(kinds: &[ErrorKind], t0: DateTime<Utc>) -> Vec<AttemptError> {
    kinds
        .iter()
        .zip(1u32..)
        .map(|(kind, attempt)| AttemptError {
            attempt,
            message: format!("attempt {attempt} failed: \"{kind:?}\" — é"),
            kind: *kind,
            at: t0 + chrono::Duration::seconds(i64::from(attempt)),
        })
        .collect()
}

/// A durable subscriber's scheduled retries are saved as given (position,
/// every attempt's error, due time) and listed by position whatever the
/// order they were scheduled in; scheduling an event again replaces its
/// retry instead of adding one; clearing removes one, and clearing one
/// that is not there is no error. Each subscriber's retries are its own,
/// also of an event both scheduled.
pub async fn scheduled_retries_are_saved_replaced_listed_by_position_and_cleared<
    S: EventStore + CheckpointStore,
>(
    store: Arc<S>,
) {
    // Whole milliseconds, which every store keeps exactly.
    let t0 = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("a time");
    let list = |subscriber: &'static str| {
        let store = Arc::clone(&store);
        async move {
            store
                .scheduled_retries(subscriber)
                .await
                .expect("list scheduled retries")
        }
    };
    let none: &[ScheduledRetry] = &[];
    assert_eq!(list("billing").await, none, "nothing scheduled yet");

    let (late, early, middle) = (EventId::new(), EventId::new(), EventId::new());
    let late_retry = retry(late, 12, failures(&[ErrorKind::Handler], t0), t0, 500);
    let early_retry = retry(
        early,
        3,
        failures(&[ErrorKind::Timeout, ErrorKind::Panic], t0),
        t0,
        2_000,
    );
    let middle_retry = retry(middle, 7, failures(&[ErrorKind::Service], t0), t0, 1_000);
    for r in [&late_retry, &early_retry, &middle_retry] {
        store.schedule_retry("billing", r).await.expect("schedule");
    }
    // Another subscriber, with a retry of the same event as one of billing's.
    let shipping_retry = retry(early, 3, failures(&[ErrorKind::Decode], t0), t0, 9_000);
    store
        .schedule_retry("shipping", &shipping_retry)
        .await
        .expect("schedule for shipping");

    let billing = list("billing").await;
    assert_eq!(
        billing,
        [
            early_retry.clone(),
            middle_retry.clone(),
            late_retry.clone()
        ],
        "listed by position, every field as saved"
    );
    assert_eq!(billing[0].attempts(), 2);
    assert_eq!(
        list("shipping").await,
        std::slice::from_ref(&shipping_retry)
    );
    assert_eq!(list("nobody").await, none, "a subscriber without retries");

    // The middle event fails again: its retry is replaced, not added.
    let middle_again = retry(
        middle,
        7,
        failures(
            &[ErrorKind::Service, ErrorKind::Handler, ErrorKind::Ledger],
            t0,
        ),
        t0,
        60_000,
    );
    store
        .schedule_retry("billing", &middle_again)
        .await
        .expect("schedule again");
    let billing = list("billing").await;
    assert_eq!(
        billing,
        [
            early_retry.clone(),
            middle_again.clone(),
            late_retry.clone()
        ],
        "the retry of the middle event was replaced"
    );
    assert_eq!(billing[1].attempts(), 3);

    // Clearing: one that is there, one that never was, and one scheduled
    // only by the other subscriber.
    store
        .clear_retry("billing", early)
        .await
        .expect("clear a retry");
    store
        .clear_retry("billing", EventId::new())
        .await
        .expect("clearing an unknown retry is no error");
    store
        .clear_retry("shipping", late)
        .await
        .expect("clearing another subscriber's event is no error");
    assert_eq!(
        list("billing").await,
        [middle_again.clone(), late_retry.clone()]
    );
    assert_eq!(
        list("shipping").await,
        std::slice::from_ref(&shipping_retry),
        "clearing billing's retry of an event left shipping's alone"
    );

    store.clear_retry("billing", middle).await.expect("clear");
    store.clear_retry("billing", late).await.expect("clear");
    store
        .clear_retry("billing", late)
        .await
        .expect("clearing twice is no error");
    assert_eq!(list("billing").await, none);
    assert_eq!(list("shipping").await, [shipping_retry]);
}
