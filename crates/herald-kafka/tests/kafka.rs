//! Kafka-specific behaviour, against the real broker: what goes on the
//! wire, offsets and settlement, regex subscriptions, the category mapping.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use herald::transport::{Consumer, ConsumerSpec, Delivery, Transport};
use herald::{EventId, EventType, Metadata, Payload, RecordedEvent, RecordedParts, TopicPattern};
use herald_kafka::{KafkaTransport, TopicMapping};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(30);

fn event(event_type: &str, stream: &str, version: u64) -> RecordedEvent {
    RecordedEvent::from_parts(RecordedParts {
        id: EventId::new(),
        event_type: EventType::new(event_type).unwrap(),
        stream: Some(stream.into()),
        version: Some(version),
        position: Some(version + 1),
        recorded_at: chrono::Utc::now(),
        data: Payload::from(json!({ "v": version })),
        metadata: Metadata {
            correlation_id: Some(uuid::Uuid::from_u128(5)),
            causation_id: None,
            headers: [("tenant".to_owned(), "acme".to_owned())].into(),
        },
        origin: None,
    })
}

fn spec(name: &str, patterns: &[&str]) -> ConsumerSpec {
    ConsumerSpec::new(
        name,
        patterns
            .iter()
            .map(|p| TopicPattern::parse(p).unwrap())
            .collect(),
    )
}

async fn next(consumer: &mut Box<dyn Consumer>) -> Delivery {
    tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("a delivery within the patience")
        .expect("a delivery")
}

/// The committed offset of `group` on partition 0 of `topic` (-1: none).
async fn committed(transport: &KafkaTransport, group: &str, topic: &str) -> i64 {
    let brokers = transport.config().brokers.clone();
    let group = group.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let member: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        let committed = member
            .committed_offsets(tpl, Duration::from_secs(5))
            .unwrap();
        committed
            .elements()
            .first()
            .and_then(|e| e.offset().to_raw())
            .unwrap_or(-1)
    })
    .await
    .unwrap()
}

async fn wait_committed(transport: &KafkaTransport, group: &str, topic: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let at = committed(transport, group, topic).await;
        if at == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic}: committed {at}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On the wire: the topic of the type, the stream as key, the JSON data as
/// payload and every other field in headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_stream_as_key_the_data_as_payload_and_the_rest_in_headers() {
    let prefix = support::prefix("wire");
    let transport = support::transport(&prefix).await;
    let sent = event("order.created", "order-9", 3);
    transport
        .publish(std::slice::from_ref(&sent))
        .await
        .unwrap();

    let topic = transport.topic_of("order.created");
    assert_eq!(topic, format!("{prefix}.order.created"));
    let brokers = transport.config().brokers.clone();
    let (key, payload, headers) = tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{topic}-reader"))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for partition in 0..3 {
            tpl.add_partition_offset(&topic, partition, Offset::Beginning)
                .unwrap();
        }
        reader.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no message on {topic}"
            );
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
                let headers: HashMap<String, String> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return (
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    m.payload().map(<[u8]>::to_vec),
                    headers,
                );
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(key.as_deref(), Some("order-9"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&payload.unwrap()).unwrap(),
        json!({"v": 3})
    );
    assert_eq!(headers["herald-id"], sent.id().to_string());
    assert_eq!(headers["herald-type"], "order.created");
    assert_eq!(headers["herald-stream"], "order-9");
    assert_eq!(headers["herald-version"], "3");
    assert_eq!(headers["herald-position"], "4");
    assert_eq!(
        headers["herald-recorded-at"],
        sent.recorded_at().timestamp_micros().to_string()
    );
    assert_eq!(
        headers["herald-correlation-id"],
        uuid::Uuid::from_u128(5).to_string()
    );
    assert_eq!(headers["herald-meta-tenant"], "acme");
    assert!(!headers.contains_key("herald-causation-id"));
    transport.close().await.unwrap();
}

/// Settled out of order, a partition's offset is committed only up to its
/// first unsettled event; once that one is settled, past all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_commits_past_an_unsettled_event() {
    let prefix = support::prefix("offsets");
    let transport =
        KafkaTransport::connect(support::config(&support::brokers(), &prefix).partitions(1))
            .await
            .unwrap();
    let mut consumer = transport
        .subscribe(&spec("ledger", &["probe.*"]))
        .await
        .unwrap();
    transport
        .publish(&[
            event("probe.a", "s", 0),
            event("probe.a", "s", 1),
            event("probe.a", "s", 2),
        ])
        .await
        .unwrap();
    transport
        .publish(&[event("probe.b", "t", 0)])
        .await
        .unwrap();

    let mut held: HashMap<(String, u64), Delivery> = HashMap::new();
    while held.len() < 4 {
        let d = next(&mut consumer).await;
        held.insert(
            (
                d.event().event_type().to_owned(),
                d.event().version().unwrap(),
            ),
            d,
        );
    }
    let group = transport.group_of("ledger");
    let a = transport.topic_of("probe.a");
    let b = transport.topic_of("probe.b");
    let mut take = |t: &str, v: u64| held.remove(&(t.to_owned(), v)).unwrap();
    let first = take("probe.a", 0);
    take("probe.a", 2).ack().await.unwrap();
    take("probe.a", 1).ack().await.unwrap();
    take("probe.b", 0).ack().await.unwrap();
    // librdkafka commits every stored offset together: once probe.b's is
    // committed, whatever probe.a had stored before it is too.
    wait_committed(&transport, &group, &b, 1).await;
    let at = committed(&transport, &group, &a).await;
    assert!(at <= 0, "committed {at} past the unsettled offset 0");

    first.ack().await.unwrap();
    wait_committed(&transport, &group, &a, 3).await;
    drop(consumer);
    transport.close().await.unwrap();
}

/// A pattern subscription is a regex subscription: a matching topic made
/// after the group subscribed is read from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_up_a_matching_topic_created_after_subscribing() {
    let prefix = support::prefix("late");
    let transport = support::transport(&prefix).await;
    let mut consumer = transport
        .subscribe(&spec("watcher", &["late.*"]))
        .await
        .unwrap();
    // The topic does not exist until this publish creates it.
    let sent = event("late.arrival", "x", 0);
    transport
        .publish(std::slice::from_ref(&sent))
        .await
        .unwrap();
    let got = next(&mut consumer).await;
    assert_eq!(got.event().id(), sent.id());
    got.ack().await.unwrap();
    // A type the pattern does not match never arrives: the marker after it
    // comes first.
    transport
        .publish(&[event("late.x.y", "x", 1), event("late.marker", "x", 2)])
        .await
        .unwrap();
    let got = next(&mut consumer).await;
    assert_eq!(got.event().event_type(), "late.marker");
    got.ack().await.unwrap();
    drop(consumer);
    transport.close().await.unwrap();
}

/// A released delivery is handed out again; the prefetch bounds what is
/// handed out unsettled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_a_released_event_out_again_and_holds_back_past_the_prefetch() {
    let prefix = support::prefix("release");
    let transport = support::transport(&prefix).await;
    let mut consumer = transport
        .subscribe(&spec("worker", &["job.run"]).prefetch(2))
        .await
        .unwrap();
    let events: Vec<_> = (0..3).map(|v| event("job.run", "j", v)).collect();
    transport.publish(&events).await.unwrap();

    let first = next(&mut consumer).await;
    assert_eq!(first.event().id(), events[0].id());
    first.release().await.unwrap();
    let again = next(&mut consumer).await;
    assert_eq!(
        again.event().id(),
        events[0].id(),
        "the released event first"
    );
    let second = next(&mut consumer).await;
    assert_eq!(second.event().id(), events[1].id());
    // Two are out unsettled: the third waits for a settlement.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "a third delivery past a prefetch of 2"
    );
    again.ack().await.unwrap();
    let third = next(&mut consumer).await;
    assert_eq!(third.event().id(), events[2].id());
    second.ack().await.unwrap();
    third.ack().await.unwrap();
    drop(consumer);
    transport.close().await.unwrap();
}

/// With a topic per category, a group reads its category's topic and gets
/// only the types its patterns match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_a_category_topic_by_type() {
    let prefix = support::prefix("category");
    let config = support::config(&support::brokers(), &prefix)
        .mapping(TopicMapping::PerCategory)
        .partitions(1);
    let transport = KafkaTransport::connect(config).await.unwrap();
    assert_eq!(
        transport.topic_of("order.line.added"),
        format!("{prefix}.order")
    );
    let mut consumer = transport
        .subscribe(&spec("shipping", &["order.paid"]))
        .await
        .unwrap();
    let stream = "order-1";
    transport
        .publish(&[
            event("order.created", stream, 0),
            event("order.paid", stream, 1),
            event("order.line.added", stream, 2),
            event("order.paid", stream, 3),
        ])
        .await
        .unwrap();
    for version in [1, 3] {
        let got = next(&mut consumer).await;
        assert_eq!(got.event().event_type(), "order.paid");
        assert_eq!(got.event().version(), Some(version));
        got.ack().await.unwrap();
    }
    // Skipped types count as settled: the whole topic gets committed.
    wait_committed(
        &transport,
        &transport.group_of("shipping"),
        &transport.topic_of("order.paid"),
        4,
    )
    .await;
    drop(consumer);
    transport.close().await.unwrap();
}

/// Names Kafka cannot take are refused with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_names_and_settings() {
    let err = KafkaTransport::connect(support::config(&support::brokers(), "bad.prefix"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, herald::transport::TransportError::InvalidName { .. }),
        "{err}"
    );
    let transport = support::transport(&support::prefix("names")).await;
    let err = transport
        .subscribe(&spec("billing team", &["order.*"]))
        .await
        .err()
        .expect("a subscriber name with a space is refused");
    assert!(
        matches!(err, herald::transport::TransportError::InvalidName { .. }),
        "{err}"
    );
    transport.close().await.unwrap();
}
