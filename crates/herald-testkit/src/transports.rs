//! The [`Transport`] conformance suite.
//!
//! Run it with [`transport_conformance!`](crate::transport_conformance) and a
//! [`TransportHarness`]. Each scenario works in a namespace of its own
//! (`TransportHarness::connect` puts every exchange, queue, stream and
//! consumer under it), so the scenarios run in parallel against one broker.
//!
//! The scenarios drive transports through the [`Bus`], as applications do:
//! [`DeliveryMode::Broker`] subscribers, `publish`, the dead-letter API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::transport::Transport;
use herald::{
    Bus, DeadLetterError, DeadLetterQuery, DeliveryMode, EventId, HandlerError, NewEvent,
    RecordedEvent, RetryOutcome, RetryPolicy, Subscriber, async_trait, handler_fn,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::sync::watch;

/// How long a scenario waits for what it expects before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Connects the suite to one broker.
#[async_trait]
pub trait TransportHarness: Send + Sync + 'static {
    /// A new connection to the broker with every name under `namespace`.
    /// Two calls with the same namespace are two processes of one
    /// application: they share consumer groups and dead letters.
    async fn connect(&self, namespace: &str) -> Arc<dyn Transport>;

    /// Drops the connections of `namespace` from the broker's side (or
    /// restarts the broker), and returns once the broker takes connections
    /// again.
    async fn disrupt(&self, namespace: &str);

    /// Whether one consumer receives each stream's events in publish order
    /// (when nothing is retried). A transport that does not promise it says
    /// so in its docs; the ordering scenario then checks only delivery.
    fn keeps_stream_order(&self) -> bool {
        true
    }
}

/// Turns the scenarios into one test each, for the harness made by
/// `$harness` (an `async fn() -> impl TransportHarness`).
#[macro_export]
macro_rules! transport_conformance {
    ($harness:path) => {
        $crate::__transport_scenarios!(
            $harness;
            publishes_and_consumes_events_with_every_field,
            routes_by_topic_pattern,
            gives_every_group_every_event,
            shares_a_group_between_processes,
            redelivers_what_a_crashed_consumer_held,
            retries_after_a_backoff_then_succeeds,
            dead_letters_then_retries_to_that_group_only_or_discards,
            leaves_a_disabled_members_share_to_the_group,
            consumes_every_confirmed_event_after_a_dropped_connection,
            keeps_each_streams_order_for_one_consumer,
            carries_large_events,
            routes_many_topics,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __transport_scenarios {
    ($harness:path; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::transports::$name($harness().await).await;
            }
        )*
    };
}

/// A namespace of the scenario's own.
pub fn namespace(scenario: &str) -> String {
    let id = herald::EventId::new().to_string().replace('-', "");
    format!("{scenario}-{}", &id[id.len() - 12..])
}

/// A bus on a new connection of `namespace`.
pub async fn bus<H: TransportHarness>(harness: &H, namespace: &str) -> Bus {
    Bus::builder()
        .transport(harness.connect(namespace).await)
        .build()
}

/// A handler that sends each event it gets to a channel.
pub fn forward(tx: mpsc::UnboundedSender<RecordedEvent>) -> impl herald::Handler + Clone + 'static {
    handler_fn(move |event: RecordedEvent, _ctx| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(event);
            Ok(())
        }
    })
}

/// Receives `n` events, or fails naming how many came.
pub async fn receive(
    rx: &mut mpsc::UnboundedReceiver<RecordedEvent>,
    n: usize,
) -> Vec<RecordedEvent> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => got.push(event),
            Ok(None) => panic!("the handler is gone after {} of {n} events", got.len()),
            Err(_) => panic!("received {} of {n} events within {PATIENCE:?}", got.len()),
        }
    }
    got
}

/// Subscribes `subscriber` in broker mode and waits until its group is
/// declared.
pub async fn subscribe(bus: &Bus, subscriber: Subscriber) {
    let name = subscriber.name().to_owned();
    bus.subscribe(subscriber.mode(DeliveryMode::Broker))
        .expect("subscribe");
    bus.ready(&name).await.expect("the consumer opens");
}

/// Events published through the broker arrive with their id, type, stream,
/// version, position, time, metadata and payload unchanged.
pub async fn publishes_and_consumes_events_with_every_field<H: TransportHarness>(harness: H) {
    let ns = namespace("fields");
    let consumer = bus(&harness, &ns).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &consumer,
        Subscriber::new("fields", forward(tx)).topic("order.created"),
    )
    .await;

    let publisher = harness.connect(&ns).await;
    let mut sent = Vec::new();
    for n in 0..20u64 {
        let event = herald::RecordedEvent::from_parts(herald::RecordedParts {
            id: herald::EventId::new(),
            event_type: herald::EventType::new("order.created").unwrap(),
            stream: Some(format!("order-{n}").into()),
            version: Some(n),
            position: Some(1000 + n),
            recorded_at: chrono::Utc::now(),
            data: herald::Payload::from(json!({"order_id": n, "note": "naïve café ✓"})),
            metadata: herald::Metadata {
                correlation_id: Some(uuid_of(n)),
                causation_id: Some(uuid_of(n + 100)),
                headers: BTreeMap::from([("tenant".to_owned(), format!("t{n}"))]),
            },
            origin: None,
        });
        sent.push(event);
    }
    publisher.publish(&sent).await.expect("publish");
    let got = receive(&mut rx, sent.len()).await;
    let by_id: HashMap<_, _> = got.iter().map(|e| (e.id(), e)).collect();
    for event in &sent {
        let received = by_id
            .get(&event.id())
            .unwrap_or_else(|| panic!("event {} never arrived", event.id()));
        assert_eq!(received.event_type(), event.event_type());
        assert_eq!(received.stream(), event.stream());
        assert_eq!(received.version(), event.version());
        assert_eq!(received.position(), event.position());
        assert_eq!(
            received.recorded_at().timestamp_micros(),
            event.recorded_at().timestamp_micros()
        );
        assert_eq!(received.data().to_value(), event.data().to_value());
        assert_eq!(received.metadata(), event.metadata());
    }
    consumer.shutdown().await;
}

fn uuid_of(n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u128(u128::from(n) + 1)
}

/// Waits until `check` holds, or fails with `what`.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn handled(bus: &Bus, name: &str) -> u64 {
    bus.subscriber(name).map_or(0, |s| s.handled)
}

/// Patterns route as AMQP's do: `*` one segment, `#` any number, several
/// patterns on one subscriber deliver a matching event once.
pub async fn routes_by_topic_pattern<H: TransportHarness>(harness: H) {
    let ns = namespace("routes");
    let bus = bus(&harness, &ns).await;
    let mut receivers = HashMap::new();
    for (name, patterns) in [
        ("star", vec!["order.*"]),
        ("hash", vec!["order.#"]),
        ("all", vec!["#"]),
        ("two", vec!["order.created", "order.*"]),
    ] {
        let (tx, rx) = mpsc::unbounded_channel();
        subscribe(&bus, Subscriber::new(name, forward(tx)).topics(patterns)).await;
        receivers.insert(name, rx);
    }
    for event_type in [
        "order.created",
        "order.line.added",
        "payment.received",
        "order",
    ] {
        bus.publish(event_type, json!({"type": event_type}))
            .await
            .expect("publish");
    }
    // Every subscriber matches `order.marker` last: what it got before the
    // marker is all it gets of the four.
    bus.publish("order.marker", json!({}))
        .await
        .expect("publish");
    let expected: [(&str, &[&str]); 4] = [
        ("star", &["order.created"]),
        ("hash", &["order.created", "order.line.added", "order"]),
        (
            "all",
            &[
                "order.created",
                "order.line.added",
                "payment.received",
                "order",
            ],
        ),
        ("two", &["order.created"]),
    ];
    for (name, types) in expected {
        let rx = receivers.get_mut(name).expect("a receiver");
        let mut got = Vec::new();
        loop {
            let event = receive(rx, 1).await.remove(0);
            if event.event_type() == "order.marker" {
                break;
            }
            got.push(event.event_type().to_owned());
        }
        got.sort();
        let mut want: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "subscriber {name} got the wrong events");
    }
    bus.shutdown().await;
}

/// Two subscribers are two consumer groups: each gets every event.
pub async fn gives_every_group_every_event<H: TransportHarness>(harness: H) {
    let ns = namespace("groups");
    let bus = bus(&harness, &ns).await;
    let (tx_a, mut rx_a) = mpsc::unbounded_channel();
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    subscribe(
        &bus,
        Subscriber::new("analytics", forward(tx_a)).topic("order.*"),
    )
    .await;
    subscribe(
        &bus,
        Subscriber::new("notify", forward(tx_b)).topic("order.*"),
    )
    .await;
    let mut ids = HashSet::new();
    for n in 0..50 {
        ids.insert(
            bus.publish("order.created", json!({"n": n}))
                .await
                .unwrap()
                .id(),
        );
    }
    for rx in [&mut rx_a, &mut rx_b] {
        let got: HashSet<EventId> = receive(rx, 50).await.iter().map(|e| e.id()).collect();
        assert_eq!(got, ids);
    }
    bus.shutdown().await;
}

/// Two processes running one subscriber share its events: together they
/// handle each once (nothing crashed), and both take part.
pub async fn shares_a_group_between_processes<H: TransportHarness>(harness: H) {
    let ns = namespace("compete");
    let first = bus(&harness, &ns).await;
    let second = bus(&harness, &ns).await;
    let seen: Arc<Mutex<Vec<(usize, EventId)>>> = Arc::default();
    for (member, bus) in [(0usize, &first), (1, &second)] {
        let seen = Arc::clone(&seen);
        let handler = handler_fn(move |event: RecordedEvent, _ctx| {
            let seen = Arc::clone(&seen);
            async move {
                // Some work, so that one member cannot drain the queue alone.
                tokio::time::sleep(Duration::from_millis(5)).await;
                seen.lock().unwrap().push((member, event.id()));
                Ok(())
            }
        });
        subscribe(
            bus,
            Subscriber::new("workers", handler)
                .topic("job.*")
                .prefetch(4),
        )
        .await;
    }
    let publisher = bus(&harness, &ns).await;
    let mut ids = HashSet::new();
    for n in 0..200 {
        ids.insert(
            publisher
                .publish("job.queued", json!({"n": n}))
                .await
                .unwrap()
                .id(),
        );
    }
    eventually("both members handled 200 events between them", || {
        seen.lock().unwrap().len() >= 200
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let got: HashSet<EventId> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(got, ids, "every event handled");
    assert_eq!(seen.len(), 200, "no event handled twice");
    for member in [0, 1] {
        assert!(
            seen.iter().any(|(m, _)| *m == member),
            "member {member} took no part"
        );
    }
    for bus in [first, second, publisher] {
        bus.shutdown().await;
    }
}

/// A consumer that dies holding unacknowledged deliveries loses nothing:
/// another process of the group gets them.
pub async fn redelivers_what_a_crashed_consumer_held<H: TransportHarness>(harness: H) {
    let ns = namespace("crash");
    let doomed = harness.connect(&ns).await;
    let crashing = Bus::builder().transport(Arc::clone(&doomed)).build();
    let (release_tx, release) = watch::channel(false);
    let taken = Arc::new(AtomicU64::new(0));
    let stuck = {
        let taken = Arc::clone(&taken);
        handler_fn(move |_event: RecordedEvent, _ctx| {
            let taken = Arc::clone(&taken);
            let mut release = release.clone();
            async move {
                taken.fetch_add(1, Ordering::SeqCst);
                // Hangs as a crashed process would, until the test is over.
                let _ = release.wait_for(|r| *r).await;
                Err(HandlerError::retry("released after the crash"))
            }
        })
    };
    subscribe(
        &crashing,
        Subscriber::new("mailer", stuck)
            .topic("mail.*")
            .concurrency(4)
            .prefetch(8),
    )
    .await;
    let publisher = bus(&harness, &ns).await;
    let mut ids = HashSet::new();
    for n in 0..10 {
        ids.insert(
            publisher
                .publish("mail.queued", json!({"n": n}))
                .await
                .unwrap()
                .id(),
        );
    }
    eventually("the doomed consumer took deliveries", || {
        taken.load(Ordering::SeqCst) >= 1
    })
    .await;
    doomed.close().await.expect("close");

    let survivor = bus(&harness, &ns).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &survivor,
        Subscriber::new("mailer", forward(tx)).topic("mail.*"),
    )
    .await;
    let mut got = HashSet::new();
    while got.len() < ids.len() {
        got.insert(receive(&mut rx, 1).await.remove(0).id());
    }
    assert_eq!(got, ids);
    let _ = release_tx.send(true);
    for bus in [crashing, publisher, survivor] {
        bus.shutdown().await;
    }
}

/// A retryable failure comes back after the policy's backoff, with the
/// attempt count raised, until it succeeds; nothing is dead-lettered.
pub async fn retries_after_a_backoff_then_succeeds<H: TransportHarness>(harness: H) {
    let ns = namespace("retry");
    let bus = bus(&harness, &ns).await;
    let calls: Arc<Mutex<Vec<(u32, tokio::time::Instant)>>> = Arc::default();
    let handler = {
        let calls = Arc::clone(&calls);
        handler_fn(move |_event: RecordedEvent, ctx: herald::Context| {
            let calls = Arc::clone(&calls);
            async move {
                let attempt = ctx.attempt();
                calls
                    .lock()
                    .unwrap()
                    .push((attempt, tokio::time::Instant::now()));
                if attempt < 3 {
                    Err(HandlerError::retry(format!("gateway timeout #{attempt}")))
                } else {
                    Ok(())
                }
            }
        })
    };
    let backoff = Duration::from_millis(300);
    subscribe(
        &bus,
        Subscriber::new("charge", handler)
            .topic("order.placed")
            .retry(RetryPolicy::fixed(backoff, 5)),
    )
    .await;
    bus.publish("order.placed", json!({})).await.unwrap();
    eventually("the third attempt succeeded", || {
        handled(&bus, "charge") == 1
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    let attempts: Vec<u32> = calls.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    for pair in calls.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        // A broker may round a delay up, never down.
        assert!(
            gap >= backoff - Duration::from_millis(20),
            "retried after {gap:?}"
        );
    }
    let letters = bus.dead_letters(&DeadLetterQuery::default()).await.unwrap();
    assert!(letters.is_empty(), "nothing dead-lettered: {letters:?}");
    bus.shutdown().await;
}

/// When the policy gives up, the event is in the broker's dead letters with
/// its attempts and errors; retrying it sends it to that subscriber's group
/// only; discarding removes it.
pub async fn dead_letters_then_retries_to_that_group_only_or_discards<H: TransportHarness>(
    harness: H,
) {
    let ns = namespace("dlq");
    let bus = bus(&harness, &ns).await;
    let fixed = Arc::new(AtomicBool::new(false));
    let billing = {
        let fixed = Arc::clone(&fixed);
        handler_fn(move |_event: RecordedEvent, ctx: herald::Context| {
            let fixed = fixed.load(Ordering::SeqCst);
            async move {
                if fixed {
                    Ok(())
                } else {
                    Err(HandlerError::retry(format!(
                        "card declined #{}",
                        ctx.attempt()
                    )))
                }
            }
        })
    };
    subscribe(
        &bus,
        Subscriber::new("billing", billing)
            .topic("order.*")
            .retry(RetryPolicy::fixed(Duration::from_millis(50), 3)),
    )
    .await;
    let (tx, mut audit) = mpsc::unbounded_channel();
    subscribe(&bus, Subscriber::new("audit", forward(tx)).topic("order.*")).await;

    let event = bus
        .publish("order.created", json!({"order_id": 1}))
        .await
        .unwrap();
    let letter = wait_for_letter(&bus, "billing", event.id()).await;
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.event.id(), event.id());
    assert_eq!(letter.event.data().to_value(), event.data().to_value());
    assert!(
        letter.reason.contains("card declined #3"),
        "reason: {}",
        letter.reason
    );
    let last = letter.errors.last().expect("the last error");
    assert!(
        last.message.contains("card declined #3"),
        "errors: {:?}",
        letter.errors
    );
    assert_eq!(
        bus.dead_letter_counts().await.unwrap().get("billing"),
        Some(&1)
    );
    assert_eq!(receive(&mut audit, 1).await[0].id(), event.id());

    fixed.store(true, Ordering::SeqCst);
    let outcome = bus.retry_dead_letter(letter.id).await.unwrap();
    assert_eq!(outcome, RetryOutcome::Redelivered);
    eventually("billing handled the retried dead letter", || {
        handled(&bus, "billing") == 1
    })
    .await;
    assert!(matches!(
        bus.dead_letter(letter.id).await,
        Err(DeadLetterError::NotFound(_))
    ));

    // Discarding: a second event given up on, then thrown away.
    fixed.store(false, Ordering::SeqCst);
    let second = bus
        .publish("order.cancelled", json!({"order_id": 2}))
        .await
        .unwrap();
    let letter = wait_for_letter(&bus, "billing", second.id()).await;
    bus.discard_dead_letter(letter.id).await.unwrap();
    let left = bus
        .dead_letters(&DeadLetterQuery::default().subscriber("billing"))
        .await
        .unwrap();
    assert!(left.is_empty(), "discarded: {left:?}");

    // The audit group got each event once: the retry went to billing only.
    // `order.marker` comes after both in audit's queue.
    bus.publish("order.marker", json!({})).await.unwrap();
    let rest = receive(&mut audit, 2).await;
    assert_eq!(rest[0].id(), second.id());
    assert_eq!(rest[1].event_type(), "order.marker");
    bus.shutdown().await;
}

async fn wait_for_letter(bus: &Bus, subscriber: &str, event: EventId) -> herald::DeadLetter {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let letters = bus
            .dead_letters(&DeadLetterQuery::default().subscriber(subscriber))
            .await
            .expect("list dead letters");
        if let Some(letter) = letters.into_iter().find(|l| l.event.id() == event) {
            return letter;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter of {subscriber} for event {event} within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member disabled in one process stops consuming: the group's other
/// process handles everything published meanwhile.
pub async fn leaves_a_disabled_members_share_to_the_group<H: TransportHarness>(harness: H) {
    let ns = namespace("disable");
    let first = bus(&harness, &ns).await;
    let second = bus(&harness, &ns).await;
    let (tx1, _rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    subscribe(
        &first,
        Subscriber::new("reports", forward(tx1)).topic("sale.*"),
    )
    .await;
    subscribe(
        &second,
        Subscriber::new("reports", forward(tx2)).topic("sale.*"),
    )
    .await;
    first.disable("reports").unwrap();
    let before = handled(&first, "reports");
    let mut ids = HashSet::new();
    for n in 0..30 {
        ids.insert(
            first
                .publish("sale.made", json!({"n": n}))
                .await
                .unwrap()
                .id(),
        );
    }
    let got: HashSet<EventId> = receive(&mut rx2, 30).await.iter().map(|e| e.id()).collect();
    assert_eq!(got, ids);
    assert_eq!(
        handled(&first, "reports"),
        before,
        "the disabled member handled events"
    );
    first.shutdown().await;
    second.shutdown().await;
}

/// The connection drops in the middle of a run: every publish that was
/// confirmed is consumed once the broker is back, and the consumer goes on
/// by itself.
pub async fn consumes_every_confirmed_event_after_a_dropped_connection<H: TransportHarness>(
    harness: H,
) {
    let ns = namespace("reconnect");
    let bus = bus(&harness, &ns).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &bus,
        Subscriber::new("ledger", forward(tx)).topic("entry.*"),
    )
    .await;
    let mut confirmed = HashSet::new();
    let mut failures = 0u32;
    for n in 0..120u32 {
        if n == 60 {
            harness.disrupt(&ns).await;
        }
        // A publish that fails may or may not have reached the broker; the
        // application publishes the same event again.
        let event = NewEvent::new("entry.posted", json!({"n": n})).with_id(EventId::new());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match bus.publish_new(event.clone()).await {
                Ok(recorded) => {
                    confirmed.insert(recorded.id());
                    break;
                }
                Err(err) => {
                    failures += 1;
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "publishing never recovered: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let mut got = HashSet::new();
    while !confirmed.is_subset(&got) {
        let event = receive(&mut rx, 1).await.remove(0);
        got.insert(event.id());
    }
    assert!(failures < 1000, "{failures} failed publishes");
    bus.shutdown().await;
}

/// One consumer, handling several streams at once, keeps each stream's
/// order (where the transport promises it).
pub async fn keeps_each_streams_order_for_one_consumer<H: TransportHarness>(harness: H) {
    let ns = namespace("order");
    let bus = bus(&harness, &ns).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &bus,
        Subscriber::new("projector", forward(tx))
            .topic("account.*")
            .concurrency(4),
    )
    .await;
    let publisher = harness.connect(&ns).await;
    let streams = 8u64;
    let per_stream = 25u64;
    let mut batch = Vec::new();
    for version in 0..per_stream {
        for stream in 0..streams {
            batch.push(recorded(
                "account.credited",
                &format!("account-{stream}"),
                version,
                version * streams + stream + 1,
            ));
        }
    }
    for chunk in batch.chunks(20) {
        publisher.publish(chunk).await.expect("publish");
    }
    let got = receive(&mut rx, batch.len()).await;
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &got {
        versions
            .entry(event.stream().unwrap_or_default().to_owned())
            .or_default()
            .push(event.version().unwrap_or_default());
    }
    assert_eq!(versions.len() as u64, streams);
    for (stream, seen) in &versions {
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..per_stream).collect::<Vec<_>>(),
            "stream {stream}"
        );
        if harness.keeps_stream_order() {
            assert_eq!(seen, &sorted, "stream {stream} out of order");
        }
    }
    bus.shutdown().await;
}

fn recorded(event_type: &str, stream: &str, version: u64, position: u64) -> RecordedEvent {
    RecordedEvent::from_parts(herald::RecordedParts {
        id: EventId::new(),
        event_type: herald::EventType::new(event_type).expect("a valid type"),
        stream: Some(stream.into()),
        version: Some(version),
        position: Some(position),
        recorded_at: chrono::Utc::now(),
        data: herald::Payload::from(json!({"v": version})),
        metadata: herald::Metadata::default(),
        origin: None,
    })
}

/// Size of the payload in [`carries_large_events`]: half a mebibyte, under
/// the smallest default message limit of the brokers Herald supports
/// (NATS: 1 MiB including headers).
pub const LARGE_EVENT_BYTES: usize = 512 * 1024;

/// A large payload arrives whole.
pub async fn carries_large_events<H: TransportHarness>(harness: H) {
    let ns = namespace("large");
    let bus = bus(&harness, &ns).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &bus,
        Subscriber::new("archive", forward(tx)).topic("file.*"),
    )
    .await;
    let blob: String = (0..LARGE_EVENT_BYTES)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap_or(0)))
        .collect();
    let sent = bus
        .publish("file.uploaded", json!({ "blob": blob }))
        .await
        .expect("publish a large event");
    let got = receive(&mut rx, 1).await.remove(0);
    assert_eq!(got.id(), sent.id());
    assert_eq!(got.data().as_bytes(), sent.data().as_bytes());
    bus.shutdown().await;
}

/// Many event types: a wide pattern gets them all, a narrow one just its
/// own.
pub async fn routes_many_topics<H: TransportHarness>(harness: H) {
    let ns = namespace("topics");
    let bus = bus(&harness, &ns).await;
    let (tx_all, mut all) = mpsc::unbounded_channel();
    let (tx_one, mut one) = mpsc::unbounded_channel();
    subscribe(
        &bus,
        Subscriber::new("everything", forward(tx_all)).topic("shop.#"),
    )
    .await;
    subscribe(
        &bus,
        Subscriber::new("t7", forward(tx_one)).topic("shop.t7.*"),
    )
    .await;
    let mut ids = HashSet::new();
    let mut t7 = None;
    for k in 0..100 {
        let event = bus
            .publish(&format!("shop.t{k}.changed"), json!({"k": k}))
            .await
            .unwrap();
        if k == 7 {
            t7 = Some(event.id());
        }
        ids.insert(event.id());
    }
    let got: HashSet<EventId> = receive(&mut all, 100)
        .await
        .iter()
        .map(|e| e.id())
        .collect();
    assert_eq!(got, ids);
    assert_eq!(Some(receive(&mut one, 1).await[0].id()), t7);
    bus.shutdown().await;
}
