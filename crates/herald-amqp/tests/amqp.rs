//! What the conformance suites do not see: how the transport maps onto
//! RabbitMQ, checked on a real broker (`HERALD_AMQP_URL`).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use herald::transport::{ConsumerSpec, Transport, TransportError};
use herald::{
    AttemptError, Bus, DeadLetterQuery, DeadLetterStore, DeliveryMode, ErrorKind, EventId,
    EventType, HandlerError, Metadata, NewDeadLetter, Payload, RecordedEvent, RecordedParts,
    RetryPolicy, Subscriber, TopicPattern, handler_fn,
};
use herald_testkit::transports::{forward, receive};
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(30);

fn event(event_type: &str, n: u64) -> RecordedEvent {
    RecordedEvent::from_parts(RecordedParts {
        id: EventId::new(),
        event_type: EventType::new(event_type).unwrap(),
        stream: Some(format!("order-{n}").into()),
        version: Some(n),
        position: Some(100 + n),
        recorded_at: chrono::Utc::now(),
        data: Payload::from(json!({ "n": n })),
        metadata: Metadata {
            correlation_id: Some(uuid::Uuid::from_u128(7)),
            causation_id: None,
            headers: BTreeMap::from([("tenant".to_owned(), "acme".to_owned())]),
        },
        origin: None,
    })
}

async fn raw_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(&support::url(), lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is not reachable (set {} to point to it): {e}",
                support::URL_VAR
            )
        });
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// Messages ready in `queue` (a passive declare: fails if it does not exist).
async fn ready_in(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue} does not exist: {e}"))
        .message_count()
}

async fn wait(rx: &mut mpsc::UnboundedReceiver<(u32, RecordedEvent)>) -> (u32, RecordedEvent) {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a delivery in time")
        .expect("handler alive")
}

async fn subscribe(bus: &Bus, subscriber: Subscriber) {
    let name = subscriber.name().to_owned();
    bus.subscribe(subscriber.mode(DeliveryMode::Broker))
        .expect("subscribe");
    tokio::time::timeout(PATIENCE, bus.ready(&name))
        .await
        .expect("the consumer opens in time")
        .expect("known subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_topology_idempotently_for_a_second_process() {
    let ns = support::namespace("topology");
    let first = Bus::builder()
        .transport(Arc::new(support::connect(&ns).await))
        .build();
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &first,
        Subscriber::new("audit", forward(tx.clone())).topic("order.*"),
    )
    .await;
    // A second process of the same application: same prefix, same group,
    // one more pattern. Declaring again must neither fail nor reset.
    let second_transport = support::connect(&ns).await;
    let second = Bus::builder()
        .transport(Arc::new(second_transport.clone()))
        .build();
    subscribe(
        &second,
        Subscriber::new("audit", forward(tx))
            .topic("order.*")
            .topic("invoice.#"),
    )
    .await;
    second_transport
        .publish(&[
            event("order.created", 1),
            event("invoice.sent.late", 2),
            event("refund.issued", 3),
        ])
        .await
        .expect("publish");
    let got = receive(&mut rx, 2).await;
    let mut types: Vec<_> = got.iter().map(|e| e.event_type().to_owned()).collect();
    types.sort();
    assert_eq!(types, ["invoice.sent.late", "order.created"]);

    let (_conn, channel) = raw_channel().await;
    let queue = second_transport.queue("audit").unwrap();
    assert_eq!(queue, format!("{}.q.audit", support::prefix(&ns)));
    assert_eq!(ready_in(&channel, &queue).await, 0);
    assert_eq!(
        ready_in(&channel, second_transport.dead_letter_queue()).await,
        0
    );
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_in_a_delay_queue_and_comes_back_to_its_subscriber_only() {
    let ns = support::namespace("retry");
    let transport = support::connect(&ns).await;
    let bus = Bus::builder()
        .transport(Arc::new(transport.clone()))
        .build();
    let (flaky_tx, mut flaky_rx) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicU32::new(0));
    let flaky = {
        let calls = Arc::clone(&calls);
        handler_fn(move |event: RecordedEvent, ctx| {
            let tx = flaky_tx.clone();
            let calls = Arc::clone(&calls);
            async move {
                let _ = tx.send((ctx.attempt(), event));
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(HandlerError::retry("first attempt fails"))
                } else {
                    Ok(())
                }
            }
        })
    };
    subscribe(
        &bus,
        Subscriber::new("flaky", flaky)
            .topic("order.created")
            .retry(RetryPolicy::fixed(Duration::from_millis(300), 3)),
    )
    .await;
    let (steady_tx, mut steady_rx) = mpsc::unbounded_channel();
    subscribe(
        &bus,
        Subscriber::new("steady", forward(steady_tx)).topic("order.created"),
    )
    .await;

    let sent = event("order.created", 1);
    transport
        .publish(std::slice::from_ref(&sent))
        .await
        .unwrap();
    let (attempt, first) = wait(&mut flaky_rx).await;
    assert_eq!((attempt, first.id()), (1, sent.id()));
    let started = tokio::time::Instant::now();
    let (attempt, again) = wait(&mut flaky_rx).await;
    assert_eq!(again, sent, "the retry carries the whole event");
    assert_eq!(attempt, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the retry came back after {:?}, before its delay",
        started.elapsed()
    );
    assert_eq!(receive(&mut steady_rx, 1).await[0].id(), sent.id());

    // The retry queue exists, is empty again, and routes to "flaky" only:
    // "steady" got one copy and its queue holds nothing more.
    let (_conn, channel) = raw_channel().await;
    let delay_queue = transport.retry_queue("flaky", Duration::from_millis(300));
    assert_eq!(
        delay_queue,
        format!("{}.retry.flaky.500ms", support::prefix(&ns))
    );
    assert_eq!(ready_in(&channel, &delay_queue).await, 0);
    assert_eq!(
        ready_in(&channel, &transport.queue("steady").unwrap()).await,
        0
    );
    assert!(steady_rx.try_recv().is_err(), "steady got a second copy");
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_broker_does_not_take_is_a_typed_error() {
    let ns = support::namespace("confirm");
    let transport = support::connect(&ns).await;
    transport
        .publish(&[event("order.created", 0)])
        .await
        .unwrap();
    let (_conn, channel) = raw_channel().await;
    channel
        .exchange_delete(
            transport.exchange().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .expect("delete the exchange");
    let err = transport
        .publish(&[event("order.created", 1)])
        .await
        .expect_err("a publish to a missing exchange is not confirmed");
    assert!(
        matches!(err, TransportError::NotConfirmed { .. }),
        "unexpected error: {err}"
    );
    // The publisher heals: a new channel declares the exchange again.
    transport
        .publish(&[event("order.created", 2)])
        .await
        .expect("publish after the exchange is declared again");

    // A redelivery must land in a queue: to a subscriber without one it
    // is returned by the broker, and so an error.
    let err = transport
        .redeliver("nobody", &event("order.created", 3))
        .await
        .expect_err("no queue takes it");
    assert!(
        matches!(&err, TransportError::NotConfirmed { reason, .. } if reason.contains("NO_ROUTE")),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_the_event_in_properties_and_headers() {
    let ns = support::namespace("headers");
    let transport = support::connect(&ns).await;
    let (_conn, channel) = raw_channel().await;
    let queue = format!("{}.raw", support::prefix(&ns));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            transport.exchange().into(),
            "order.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let sent = event("order.created", 5);
    transport
        .publish(std::slice::from_ref(&sent))
        .await
        .unwrap();
    let got = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message is in the queue");
    let delivery = got.delivery;
    assert_eq!(delivery.routing_key.as_str(), "order.created");
    assert_eq!(delivery.data, sent.data().as_bytes());
    let p = &delivery.properties;
    assert_eq!(
        p.message_id().as_ref().unwrap().as_str(),
        sent.id().to_string()
    );
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "order.created");
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(*p.timestamp(), Some(sent.recorded_at().timestamp() as u64));
    let headers = p.headers().as_ref().unwrap().inner();
    let text = |k: &str| match headers.get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
        other => panic!("header {k}: {other:?}"),
    };
    assert_eq!(text("herald-stream"), "order-5");
    assert_eq!(
        headers.get("herald-version"),
        Some(&AMQPValue::LongLongInt(5))
    );
    assert_eq!(
        headers.get("herald-position"),
        Some(&AMQPValue::LongLongInt(105))
    );
    let at = chrono::DateTime::parse_from_rfc3339(&text("herald-recorded-at")).unwrap();
    assert_eq!(at, sent.recorded_at());
    assert_eq!(
        text("herald-correlation-id"),
        uuid::Uuid::from_u128(7).to_string()
    );
    assert!(!headers.contains_key("herald-causation-id"));
    match headers.get("herald-headers") {
        Some(AMQPValue::FieldTable(t)) => assert!(t.inner().contains_key("tenant")),
        other => panic!("metadata headers: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_reconnects_after_the_broker_drops_its_connection() {
    let ns = support::namespace("reconnect");
    let consumer_bus = Bus::builder()
        .transport(Arc::new(support::connect(&ns).await))
        .build();
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &consumer_bus,
        Subscriber::new("reader", forward(tx)).topic("#"),
    )
    .await;
    // The publisher's connection has a name of its own, so only it drops.
    let pub_ns = format!("{ns}-pub");
    let publisher = support::connect_with(
        support::config(&ns).connection_name(support::connection_name(&pub_ns)),
    )
    .await;
    publisher.publish(&[event("a.b", 1)]).await.unwrap();
    assert_eq!(receive(&mut rx, 1).await.len(), 1);

    support::disrupt(&pub_ns).await;
    let batch: Vec<_> = (2..12).map(|n| event("a.b", n)).collect();
    publisher
        .publish(&batch)
        .await
        .expect("the publisher reconnects by itself");
    let got = receive(&mut rx, batch.len()).await;
    let ids: std::collections::HashSet<_> = got.iter().map(|e| e.id()).collect();
    assert!(batch.iter().all(|e| ids.contains(&e.id())));
    assert_eq!(
        support::connections(&support::connection_name(&pub_ns)).len(),
        1,
        "one new publisher connection"
    );

    // Consumers reconnect too: drop every connection of the namespace.
    support::disrupt(&ns).await;
    let later = event("a.b", 99);
    publisher
        .publish(std::slice::from_ref(&later))
        .await
        .unwrap();
    assert_eq!(receive(&mut rx, 1).await[0].id(), later.id());
    consumer_bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_broker_cannot_take_are_typed_errors() {
    let err =
        herald_amqp::AmqpTransport::connect(herald_amqp::AmqpConfig::default().prefix("amq.x"))
            .await
            .expect_err("a reserved prefix");
    assert!(matches!(err, TransportError::InvalidName { .. }), "{err}");

    let transport = support::connect(&support::namespace("names")).await;
    for bad in ["", "has space", &"x".repeat(250)] {
        let spec = ConsumerSpec::new(bad, vec![TopicPattern::parse("#").unwrap()]);
        let err = transport.subscribe(&spec).await.err().expect("refused");
        assert!(
            matches!(&err, TransportError::InvalidName { name, .. } if name == bad),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failures_of_one_event_from_two_processes_make_one_dead_letter() {
    let ns = support::namespace("dl-race");
    let a = support::connect(&ns).await.broker_dead_letters();
    let b = support::connect(&ns).await.broker_dead_letters();
    let failed = event("order.created", 1);
    let letter = |n: u32| NewDeadLetter {
        subscriber: "billing".into(),
        event: failed.clone(),
        reason: format!("failure {n}"),
        errors: vec![AttemptError {
            attempt: n,
            message: format!("failure {n}"),
            kind: ErrorKind::Handler,
            at: chrono::Utc::now(),
        }],
    };
    let mut tasks = Vec::new();
    for n in 0..8u32 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let letter = letter(n);
        tasks.push(tokio::spawn(async move { store.record(letter).await }));
    }
    for task in tasks {
        task.await.unwrap().expect("record");
    }
    let all = a.list(&DeadLetterQuery::default()).await.unwrap();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].attempts, 8);
    assert_eq!(all[0].errors.len(), 8);
    assert_eq!(b.list(&DeadLetterQuery::default()).await.unwrap(), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscriber_parks_the_event_with_its_errors_on_the_broker() {
    let ns = support::namespace("parks");
    let transport = support::connect(&ns).await;
    let bus = Bus::builder()
        .transport(Arc::new(transport.clone()))
        .build();
    subscribe(
        &bus,
        Subscriber::new(
            "broken",
            handler_fn(|_e, _ctx| async { Err(HandlerError::retry("still broken")) }),
        )
        .topic("order.created")
        .retry(RetryPolicy::fixed(Duration::from_millis(60), 2)),
    )
    .await;
    let sent = event("order.created", 1);
    transport
        .publish(std::slice::from_ref(&sent))
        .await
        .unwrap();
    let store = transport.broker_dead_letters();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let letter = loop {
        let list = store.list(&DeadLetterQuery::default()).await.unwrap();
        if let Some(letter) = list.into_iter().next() {
            break letter;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letter.event, sent);
    assert_eq!(letter.subscriber, "broken");
    assert_eq!(letter.attempts, 2);
    assert_eq!(letter.reason, "still broken");
    assert_eq!(
        letter.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    // The message in the queue carries the same in its headers.
    let (_conn, channel) = raw_channel().await;
    let got = channel
        .basic_get(
            transport.dead_letter_queue().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("the dead letter's message");
    let headers = got.delivery.properties.headers().as_ref().unwrap().inner();
    assert_eq!(
        headers.get("herald-attempts"),
        Some(&AMQPValue::LongLongInt(2))
    );
    assert!(headers.contains_key("herald-errors"));
    assert!(headers.contains_key("herald-reason"));
    drop(channel);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_deliveries_come_back_and_a_cancelled_next_loses_nothing() {
    let ns = support::namespace("unsettled");
    let transport = support::connect(&ns).await;
    let spec =
        ConsumerSpec::new("worker", vec![TopicPattern::parse("job.*").unwrap()]).prefetch(10);
    let mut first = transport.subscribe(&spec).await.expect("subscribe");
    // Nothing published yet: a `next` cut short by a timeout is dropped
    // half-way, as the bus does when a subscriber is disabled.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), first.next())
            .await
            .is_err()
    );
    let sent: Vec<_> = (0..5).map(|n| event("job.run", n)).collect();
    transport.publish(&sent).await.unwrap();
    let mut taken = Vec::new();
    for _ in 0..sent.len() {
        let delivery = tokio::time::timeout(PATIENCE, first.next())
            .await
            .expect("in time")
            .expect("a delivery");
        taken.push(delivery);
    }
    assert_eq!(
        taken.iter().map(|d| d.event().id()).collect::<Vec<_>>(),
        sent.iter().map(|e| e.id()).collect::<Vec<_>>()
    );
    // A crash of the handling process: deliveries and consumer dropped
    // without an ack.
    drop(taken);
    drop(first);
    let mut second = transport.subscribe(&spec).await.expect("subscribe again");
    let mut again = Vec::new();
    for _ in 0..sent.len() {
        let delivery = tokio::time::timeout(PATIENCE, second.next())
            .await
            .expect("redelivered in time")
            .expect("a delivery");
        assert_eq!(delivery.attempt(), 1);
        again.push(delivery.event().id());
        delivery.ack().await.expect("ack");
    }
    again.sort();
    let mut ids: Vec<_> = sent.iter().map(|e| e.id()).collect();
    ids.sort();
    assert_eq!(again, ids);
    let (_conn, channel) = raw_channel().await;
    // Every copy was taken: none waits in the queue.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while ready_in(&channel, &transport.queue("worker").unwrap()).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages left in the queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_when_the_connection_drops_are_never_falsely_confirmed() {
    let ns = support::namespace("inflight");
    let consumer_bus = Bus::builder()
        .transport(Arc::new(support::connect(&ns).await))
        .build();
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &consumer_bus,
        Subscriber::new("sink", forward(tx)).topic("bulk.*"),
    )
    .await;
    let pub_ns = format!("{ns}-pub");
    let publisher = support::connect_with(
        support::config(&ns).connection_name(support::connection_name(&pub_ns)),
    )
    .await;
    // Batches keep going out while the broker drops the publisher's
    // connection under them, until the test has seen batches confirmed
    // after the drop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let confirmed_batches = Arc::new(AtomicU32::new(0));
    let publishing = tokio::spawn({
        let (stop, confirmed_batches) = (Arc::clone(&stop), Arc::clone(&confirmed_batches));
        async move {
            let mut confirmed = std::collections::HashSet::new();
            let mut failed = 0;
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<_> = (0..250)
                    .map(|n| event("bulk.item", round * 1000 + n))
                    .collect();
                round += 1;
                match publisher.publish(&batch).await {
                    Ok(()) => {
                        confirmed.extend(batch.iter().map(|e| e.id()));
                        confirmed_batches.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => failed += 1,
                }
            }
            (confirmed, failed)
        }
    });
    // Wait until the stream is under way, then cut it.
    let first = receive(&mut rx, 1).await.remove(0);
    support::disrupt(&pub_ns).await;
    let after_drop = confirmed_batches.load(Ordering::SeqCst) + 5;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while confirmed_batches.load(Ordering::SeqCst) < after_drop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing did not recover after the drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (confirmed, failed) = publishing.await.expect("publisher task");
    assert!(failed < 5, "{failed} batches failed");
    let mut got = std::collections::HashSet::from([first.id()]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !confirmed.is_subset(&got) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(e)) => {
                got.insert(e.id());
            }
            _ => panic!(
                "{} confirmed events never arrived",
                confirmed.difference(&got).count()
            ),
        }
    }
    consumer_bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_operation_cut_short_leaves_no_lock_behind() {
    let ns = support::namespace("dl-cancel");
    let a = support::connect(&ns).await.broker_dead_letters();
    let b = support::connect(&ns).await.broker_dead_letters();
    let mut ids = Vec::new();
    for n in 0..30 {
        let recorded = a
            .record(NewDeadLetter {
                subscriber: "mailer".into(),
                event: event("mail.queued", n),
                reason: "down".into(),
                errors: vec![AttemptError {
                    attempt: 1,
                    message: "down".into(),
                    kind: ErrorKind::Handler,
                    at: chrono::Utc::now(),
                }],
            })
            .await
            .expect("record");
        ids.push(recorded.id);
    }
    // Cut `list` short at different points: before, while and after it
    // takes the broker-side lock and the messages.
    for micros in [0u64, 200, 500, 1_000, 2_000, 4_000, 8_000, 16_000] {
        let _ = tokio::time::timeout(
            Duration::from_micros(micros),
            a.list(&DeadLetterQuery::default()),
        )
        .await;
        // Another process gets the lock and sees every dead letter, well
        // before it would give up waiting (20 s in these tests).
        let listed =
            tokio::time::timeout(Duration::from_secs(10), b.list(&DeadLetterQuery::default()))
                .await
                .unwrap_or_else(|_| panic!("the lock was left held after a cut at {micros} µs"))
                .expect("list");
        assert_eq!(listed.len(), ids.len(), "after a cut at {micros} µs");
        // And so does this process.
        let listed =
            tokio::time::timeout(Duration::from_secs(10), a.list(&DeadLetterQuery::default()))
                .await
                .expect("this process is not blocked either")
                .expect("list");
        assert_eq!(listed.len(), ids.len());
    }
}
