//! What the conformance suites do not see: the duplicate window, pattern
//! routing on the server, names, idempotent topology, the messages as they
//! lie on the server, retries, dead letters and dropped connections.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald::transport::{ConsumerSpec, Transport, TransportError};
use herald::{
    Bus, DeadLetterQuery, DeliveryMode, EventId, EventType, HandlerError, Metadata, Payload,
    RecordedEvent, RecordedParts, RetryPolicy, Subscriber, TopicPattern, handler_fn,
};
use herald_nats::NatsTransport;
use herald_testkit::transports::{forward, namespace, receive};
use serde_json::json;
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(30);

fn event(event_type: &str, n: u64) -> RecordedEvent {
    let id = EventId::new();
    RecordedEvent::from_parts(RecordedParts {
        id,
        event_type: EventType::new(event_type).unwrap(),
        stream: Some(format!("s-{}", n % 4).into()),
        version: Some(n),
        position: Some(n + 1),
        recorded_at: chrono::Utc::now(),
        data: Payload::from(json!({ "n": n })),
        metadata: Metadata {
            // What the bus and the stores set when none is given.
            correlation_id: Some(*id.as_uuid()),
            causation_id: None,
            headers: BTreeMap::from([("k".to_owned(), format!("v{n}"))]),
        },
        origin: None,
    })
}

async fn broker_bus(transport: &NatsTransport) -> Bus {
    Bus::builder()
        .transport(Arc::new(transport.clone()))
        .build()
}

async fn subscribe(bus: &Bus, subscriber: Subscriber) {
    let name = subscriber.name().to_owned();
    bus.subscribe(subscriber.mode(DeliveryMode::Broker))
        .unwrap();
    tokio::time::timeout(PATIENCE, bus.ready(&name))
        .await
        .expect("the consumer opens in time")
        .unwrap();
}

/// Nothing more arrives within `wait` (used after everything expected
/// arrived, to catch extras).
async fn nothing_more(rx: &mut mpsc::UnboundedReceiver<RecordedEvent>, wait: Duration) {
    if let Ok(Some(extra)) = tokio::time::timeout(wait, rx.recv()).await {
        panic!(
            "unexpected extra event {} {}",
            extra.event_type(),
            extra.id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duplicate_window_drops_a_republished_event_id() {
    let ns = namespace("dup");
    let _cleanup = common::Cleanup(ns.clone());
    let transport = common::connect(&common::url(), &ns).await;
    let bus = broker_bus(&transport).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &bus,
        Subscriber::new("dup", forward(tx)).topic("order.created"),
    )
    .await;

    let e = event("order.created", 1);
    transport.publish(std::slice::from_ref(&e)).await.unwrap();
    transport.publish(std::slice::from_ref(&e)).await.unwrap();
    let other = event("order.created", 2);
    transport
        .publish(&[e.clone(), other.clone()])
        .await
        .unwrap();

    let got = receive(&mut rx, 2).await;
    assert_eq!(
        got.iter().map(|e| e.id()).collect::<HashSet<_>>(),
        HashSet::from([e.id(), other.id()])
    );
    let mut stream = transport
        .jetstream()
        .get_stream(transport.events_stream())
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    nothing_more(&mut rx, Duration::from_millis(300)).await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lie_on_the_server_under_their_subject_with_headers_and_json_data() {
    let ns = namespace("raw");
    let _cleanup = common::Cleanup(ns.clone());
    let transport = common::connect(&common::url(), &ns).await;
    let e = event("billing.invoice.paid", 7);
    transport.publish(std::slice::from_ref(&e)).await.unwrap();
    let stream = transport
        .jetstream()
        .get_stream(transport.events_stream())
        .await
        .unwrap();
    let message = stream.get_raw_message(1).await.unwrap();
    let prefix = herald_nats::sanitize_prefix(&ns);
    assert_eq!(
        message.subject.as_str(),
        format!("{prefix}.ev.billing.invoice.paid")
    );
    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("Nats-Msg-Id"), Some(e.id().to_string()));
    // The rest of the envelope in one line; the type is the subject's tail,
    // the correlation id is left out when it is the event id.
    assert_eq!(
        header(herald_nats::headers::ENVELOPE),
        Some(format!(
            "1 t={} s=s-3 v=7 p=8 h=k:v7",
            e.recorded_at().timestamp_micros()
        ))
    );
    assert_eq!(message.headers.iter().count(), 2, "{:?}", message.headers);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&message.payload).unwrap(),
        json!({"n": 7})
    );
    let back = herald_nats::decode_event(
        message.subject.as_str(),
        Some(&message.headers),
        &message.payload,
    )
    .unwrap();
    assert_eq!(back.id(), e.id());
    assert_eq!(back.event_type(), "billing.invoice.paid");
    assert_eq!(
        back.recorded_at().timestamp_micros(),
        e.recorded_at().timestamp_micros()
    );
    assert_eq!(back.metadata(), e.metadata());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_route_on_the_server_as_herald_matches_them() {
    let ns = namespace("routing");
    let _cleanup = common::Cleanup(ns.clone());
    let transport = common::connect(&common::url(), &ns).await;
    let bus = broker_bus(&transport).await;
    let (hash_tx, mut hash_rx) = mpsc::unbounded_channel();
    subscribe(
        &bus,
        Subscriber::new("hash", forward(hash_tx)).topic("order.#"),
    )
    .await;
    let (mid_tx, mut mid_rx) = mpsc::unbounded_channel();
    subscribe(&bus, Subscriber::new("mid", forward(mid_tx)).topic("a.#.z")).await;
    // Two overlapping patterns: an event under both arrives once.
    let (two_tx, mut two_rx) = mpsc::unbounded_channel();
    subscribe(
        &bus,
        Subscriber::new("two", forward(two_tx)).topics(["order.*", "*.created"]),
    )
    .await;

    let types = [
        "order",
        "order.created",
        "order.line.added",
        "orders.created",
        "a.z",
        "a.b.z",
        "a.b",
        "a.b.c.z",
        "invoice.created",
    ];
    let events: Vec<RecordedEvent> = types.iter().zip(0..).map(|(t, n)| event(t, n)).collect();
    transport.publish(&events).await.unwrap();

    let types_of = |got: Vec<RecordedEvent>| {
        let mut t: Vec<String> = got.iter().map(|e| e.event_type().to_owned()).collect();
        t.sort();
        t
    };
    assert_eq!(
        types_of(receive(&mut hash_rx, 3).await),
        ["order", "order.created", "order.line.added"]
    );
    assert_eq!(
        types_of(receive(&mut mid_rx, 3).await),
        ["a.b.c.z", "a.b.z", "a.z"]
    );
    assert_eq!(
        types_of(receive(&mut two_rx, 3).await),
        ["invoice.created", "order.created", "orders.created"]
    );
    nothing_more(&mut hash_rx, Duration::from_millis(300)).await;
    nothing_more(&mut mid_rx, Duration::from_millis(10)).await;
    nothing_more(&mut two_rx, Duration::from_millis(10)).await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_declared_once_and_found_again() {
    let ns = namespace("topology");
    let _cleanup = common::Cleanup(ns.clone());
    let first = common::connect(&common::url(), &ns).await;
    let second = common::connect(&common::url(), &ns).await;
    let spec = ConsumerSpec::new(
        "app.mailer",
        vec![
            TopicPattern::parse("order.#").unwrap(),
            TopicPattern::parse("invoice.paid").unwrap(),
        ],
    )
    .prefetch(16);
    let a = first.subscribe(&spec).await.unwrap();
    let b = second.subscribe(&spec).await.unwrap();
    let c = first.subscribe(&spec).await.unwrap();
    drop((a, b, c));
    let stream = first
        .jetstream()
        .get_stream(first.events_stream())
        .await
        .unwrap();
    let mut names: Vec<String> = stream
        .consumer_names()
        .map(|n| n.unwrap())
        .collect::<Vec<_>>()
        .await;
    names.sort();
    // `order.#` needs `order` and `order.>`; plus `invoice.paid`; plus the
    // redeliveries: four durable consumers, whoever declared them first.
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("app_2Emailer__")),
        "{names:?}"
    );
    assert!(names.contains(&"app_2Emailer__rd".to_owned()));
    for name in &names {
        let info = stream.consumer_info(name).await.unwrap();
        assert_eq!(info.config.max_ack_pending, 16);
        assert_eq!(info.config.ack_wait, Duration::from_secs(4));
    }
    // A new prefetch updates the shared consumers in place.
    drop(first.subscribe(&spec.clone().prefetch(32)).await.unwrap());
    let info = stream.consumer_info("app_2Emailer__rd").await.unwrap();
    assert_eq!(info.config.max_ack_pending, 32);
    // Streams are found again too.
    drop(common::connect(&common::url(), &ns).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_oversized_events_get_typed_errors() {
    let ns = namespace("bad");
    let _cleanup = common::Cleanup(ns.clone());
    let transport = common::connect(&common::url(), &ns).await;
    let empty = ConsumerSpec::new("", vec![TopicPattern::parse("a").unwrap()]);
    match transport.subscribe(&empty).await {
        Err(TransportError::InvalidName { reason, .. }) => assert!(reason.contains("name")),
        Err(other) => panic!("expected an invalid name, got {other}"),
        Ok(_) => panic!("expected an invalid name, got a consumer"),
    }
    let long = ConsumerSpec::new("ü".repeat(40), vec![TopicPattern::parse("a").unwrap()]);
    assert!(matches!(
        transport.subscribe(&long).await,
        Err(TransportError::InvalidName { .. })
    ));
    let bad_prefix =
        NatsTransport::connect(common::config(&common::url(), "x").prefix("a.b")).await;
    assert!(matches!(
        bad_prefix,
        Err(TransportError::InvalidName { .. })
    ));

    // Headers alone over the server's max_payload: nothing of the batch is
    // written.
    let small = event("big.thing", 1);
    let mut parts = event("big.thing", 2).into_parts();
    parts
        .metadata
        .headers
        .insert("huge".to_owned(), "x".repeat(1024 * 1024 + 10));
    let big = RecordedEvent::from_parts(parts);
    let err = transport.publish(&[small, big.clone()]).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("max_payload"), "{text}");
    assert!(text.contains(&big.id().to_string()), "{text}");
    let mut stream = transport
        .jetstream()
        .get_stream(transport.events_stream())
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_above_max_payload_travels_through_the_object_store() {
    let ns = namespace("large");
    let _cleanup = common::Cleanup(ns.clone());
    let transport = common::connect(&common::url(), &ns).await;
    let bus = broker_bus(&transport).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(&bus, Subscriber::new("large", forward(tx)).topic("big.*")).await;

    let small = event("big.small", 1);
    let mut parts = event("big.large", 2).into_parts();
    parts.data = Payload::from(json!({ "blob": "y".repeat(2 * 1024 * 1024) }));
    let large = RecordedEvent::from_parts(parts);
    transport
        .publish(&[small.clone(), large.clone()])
        .await
        .unwrap();

    let got = receive(&mut rx, 2).await;
    let by_id: std::collections::HashMap<_, _> = got.iter().map(|e| (e.id(), e)).collect();
    assert_eq!(
        by_id[&large.id()].data().to_value(),
        large.data().to_value()
    );
    assert_eq!(
        by_id[&small.id()].data().to_value(),
        small.data().to_value()
    );

    // On the events stream, the large one is a reference.
    let stream = transport
        .jetstream()
        .get_stream(transport.events_stream())
        .await
        .unwrap();
    let message = stream.get_raw_message(2).await.unwrap();
    assert!(message.payload.is_empty());
    let envelope = message
        .headers
        .get(herald_nats::headers::ENVELOPE)
        .map(|v| v.as_str().to_owned())
        .unwrap();
    assert!(
        envelope.ends_with(&format!(" x={}", large.id())),
        "{envelope}"
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_attempts_and_dead_letters_come_back_as_a_first_attempt() {
    let ns = namespace("retries");
    let _cleanup = common::Cleanup(ns.clone());
    let transport = common::connect(&common::url(), &ns).await;
    let bus = broker_bus(&transport).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = {
        let healthy = Arc::clone(&healthy);
        handler_fn(move |event: RecordedEvent, ctx: herald::Context| {
            let tx = tx.clone();
            let healthy = Arc::clone(&healthy);
            async move {
                let _ = tx.send((event.id(), ctx.attempt()));
                if healthy.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(HandlerError::retry(format!(
                        "down on attempt {}",
                        ctx.attempt()
                    )))
                }
            }
        })
    };
    subscribe(
        &bus,
        Subscriber::new("flaky", handler)
            .topic("order.created")
            .retry(RetryPolicy::fixed(Duration::from_millis(200), 3)),
    )
    .await;
    let e = event("order.created", 1);
    transport.publish(std::slice::from_ref(&e)).await.unwrap();
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (id, attempt) = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id, e.id());
        attempts.push(attempt);
    }
    assert_eq!(attempts, [1, 2, 3]);

    // Given up after three attempts: a dead letter on the server.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let letter = loop {
        let letters = bus.dead_letters(&DeadLetterQuery::default()).await.unwrap();
        if let Some(letter) = letters.into_iter().next() {
            break letter;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letter.subscriber, "flaky");
    assert_eq!(letter.event.id(), e.id());
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.reason, "down on attempt 3");
    // Earlier errors do not ride on a nak'd message: the last one is kept.
    assert_eq!(letter.errors.len(), 1);

    // Retried from the dead letters: back to this group as attempt 1.
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    bus.retry_dead_letter(letter.id).await.unwrap();
    let (id, attempt) = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id, attempt), (e.id(), 1));
    assert!(
        bus.dead_letters(&DeadLetterQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_publish_is_lost_when_connections_drop() {
    let ns = namespace("cut");
    let _cleanup = common::Cleanup(ns.clone());
    let proxy = common::Proxy::start().await;
    let consumer = common::connect(&proxy.url(), &ns).await;
    let bus = broker_bus(&consumer).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(&bus, Subscriber::new("cut", forward(tx)).topic("order.*")).await;
    let publisher = common::connect(&proxy.url(), &ns).await;

    let mut acked = HashSet::new();
    let mut failed = 0;
    for round in 0..20u64 {
        if round == 5 || round == 12 {
            assert!(proxy.cut() >= 2, "the proxy carried both connections");
        }
        let batch: Vec<RecordedEvent> = (0..50)
            .map(|n| event("order.placed", round * 100 + n))
            .collect();
        // Waits out the reconnect: a publish either fails or is stored.
        match publisher.publish(&batch).await {
            Ok(()) => acked.extend(batch.iter().map(|e| e.id())),
            Err(_) => failed += 1,
        }
    }
    assert!(
        acked.len() >= 50 * 10,
        "most batches went through ({failed} failed)"
    );

    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !acked.is_subset(&seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => {
                seen.insert(e.id());
            }
            _ => panic!(
                "{} acknowledged events never arrived",
                acked.difference(&seen).count()
            ),
        }
    }
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_keep_pulling_after_the_harness_disrupts_their_connections() {
    use herald_testkit::transports::TransportHarness;
    let harness = common::NatsHarness::default();
    let ns = namespace("disrupt");
    let bus = Bus::builder().transport(harness.connect(&ns).await).build();
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(&bus, Subscriber::new("d", forward(tx)).topic("order.*")).await;
    let publisher = harness.connect(&ns).await;
    let before = event("order.placed", 1);
    publisher
        .publish(std::slice::from_ref(&before))
        .await
        .unwrap();
    assert_eq!(receive(&mut rx, 1).await[0].id(), before.id());

    // Returns once both clients are connected again.
    harness.disrupt(&ns).await;
    let after: Vec<RecordedEvent> = (2..12).map(|n| event("order.placed", n)).collect();
    publisher
        .publish(&after)
        .await
        .expect("a publish after the reconnect");
    let got: HashSet<EventId> = receive(&mut rx, after.len())
        .await
        .iter()
        .map(|e| e.id())
        .collect();
    assert_eq!(got, after.iter().map(|e| e.id()).collect());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_of_a_large_event_goes_through_the_object_store() {
    let ns = namespace("largedlq");
    let _cleanup = common::Cleanup(ns.clone());
    let transport = common::connect(&common::url(), &ns).await;
    let store = transport.nats_dead_letters();
    let mut parts = event("big.failed", 1).into_parts();
    parts.data = Payload::from(json!({ "blob": "z".repeat(1536 * 1024) }));
    let large = RecordedEvent::from_parts(parts);
    let error = |attempt: u32, message: &str| herald::AttemptError {
        attempt,
        message: message.to_owned(),
        kind: herald::ErrorKind::Handler,
        at: chrono::Utc::now(),
    };
    let letter = |errors| herald::NewDeadLetter {
        subscriber: "archive".to_owned(),
        event: large.clone(),
        reason: "too big to handle".to_owned(),
        errors,
    };
    use herald::DeadLetterStore;
    let first = store
        .record(letter(vec![error(1, "a"), error(2, "b")]))
        .await
        .unwrap();
    let second = store.record(letter(vec![error(3, "c")])).await.unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempts, 3);
    let listed = store.list(&DeadLetterQuery::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event.data().as_bytes(), large.data().as_bytes());
    assert_eq!(listed[0].errors.len(), 3);
    assert_eq!(
        store.remove(first.id).await.unwrap().map(|l| l.id),
        Some(first.id)
    );
    assert!(
        store
            .list(&DeadLetterQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_next_loses_no_message() {
    let ns = namespace("cancel");
    let _cleanup = common::Cleanup(ns.clone());
    let transport = common::connect(&common::url(), &ns).await;
    let spec = ConsumerSpec::new("c", vec![TopicPattern::parse("order.*").unwrap()]).prefetch(4);
    let mut consumer = transport.subscribe(&spec).await.unwrap();
    let events: Vec<RecordedEvent> = (0..40).map(|n| event("order.placed", n)).collect();
    // One call is cancelled for sure: with nothing published yet, its pull
    // is still waiting on the server when the messages start to arrive.
    let mut cancelled = 0;
    if tokio::time::timeout(Duration::from_millis(50), consumer.next())
        .await
        .is_err()
    {
        cancelled += 1;
    }
    let publisher = transport.clone();
    let publishing = {
        let events = events.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(4) {
                publisher.publish(chunk).await.unwrap();
            }
        })
    };
    let mut got = Vec::new();
    // Shorter than the ack wait (4 s): a message lost to a cancelled call
    // would only come back after it, as a second attempt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while got.len() < events.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} events within 3 s ({cancelled} calls cancelled)",
            got.len(),
            events.len()
        );
        match tokio::time::timeout(Duration::from_micros(200), consumer.next()).await {
            Ok(delivery) => {
                let delivery = delivery.unwrap();
                assert_eq!(delivery.attempt(), 1, "a delivery came back: one was lost");
                got.push(delivery.event().id());
                delivery.ack().await.unwrap();
            }
            Err(_) => cancelled += 1,
        }
    }
    publishing.await.unwrap();
    assert!(
        cancelled > 0,
        "no call was cancelled: the test proved nothing"
    );
    assert_eq!(
        got.iter().collect::<HashSet<_>>(),
        events
            .iter()
            .map(|e| e.id())
            .collect::<Vec<_>>()
            .iter()
            .collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_a_valid_envelope_is_dropped_and_the_next_event_delivered() {
    let ns = namespace("malformed");
    let _cleanup = common::Cleanup(ns.clone());
    let transport = common::connect(&common::url(), &ns).await;
    let bus = broker_bus(&transport).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(&bus, Subscriber::new("m", forward(tx)).topic("order.*")).await;

    let subject = format!("{}.ev.order.placed", herald_nats::sanitize_prefix(&ns));
    let js = transport.jetstream();
    // No envelope at all, then an envelope of an unknown format version.
    js.publish(subject.clone(), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(herald_nats::headers::ENVELOPE, "9 t=1");
    js.publish_with_headers(subject, headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let good = event("order.placed", 1);
    transport
        .publish(std::slice::from_ref(&good))
        .await
        .unwrap();

    assert_eq!(receive(&mut rx, 1).await[0].id(), good.id());
    nothing_more(&mut rx, Duration::from_millis(300)).await;
    bus.shutdown().await;
}
