//! Raw rdkafka against Herald's Kafka transport, in the same run, on the
//! same broker: producing with acknowledgement, and consuming to a no-op
//! handler.
//!
//! ```text
//! .ci/kafka && cargo bench -p herald-kafka --bench kafka
//! ```
//!
//! `HERALD_KAFKA_BROKERS` (default 127.0.0.1:19092) names the broker,
//! `HERALD_KAFKA_BENCH_EVENTS` (default 100000) the number of events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::transport::Transport;
use herald::{Bus, DeliveryMode, EventId, Subscriber, handler_fn};
use herald_kafka::{KafkaConfig, KafkaTransport};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

/// Events per publish call (and per raw batch awaited together).
const CHUNK: usize = 1000;

fn brokers() -> String {
    let brokers =
        std::env::var("HERALD_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned());
    let addr = brokers.split(',').next().unwrap_or_default();
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "Kafka is not reachable at {brokers}: start tansu with .ci/kafka or set HERALD_KAFKA_BROKERS"
    );
    brokers
}

/// A payload of about 200 bytes as JSON.
fn payload(n: usize) -> serde_json::Value {
    json!({
        "order_id": n,
        "customer": "customer-0000042",
        "lines": [{"sku": "SKU-123456", "qty": 2, "price": "19.99"},
                  {"sku": "SKU-654321", "qty": 1, "price": "5.00"}],
        "note": "leave at the door, ring twice please",
    })
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn overhead(raw: f64, herald: f64) -> f64 {
    (raw / herald - 1.0) * 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let brokers = brokers();
    let n: usize = std::env::var("HERALD_KAFKA_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let run = EventId::new().to_string().replace('-', "");
    let prefix = format!("bench-{}", &run[run.len() - 8..]);
    let config = KafkaConfig::new(&brokers).prefix(&prefix).partitions(3);
    let transport = KafkaTransport::connect(config.clone())
        .await
        .expect("connect");
    let body = serde_json::to_vec(&payload(0)).unwrap();
    println!(
        "kafka bench: {n} events of {} bytes of JSON, broker {brokers}",
        body.len()
    );

    // Raw produce: the same producer settings as the transport's.
    let raw_topic = format!("{prefix}.raw.produced");
    let probe = herald::RecordedEvent::from_parts(herald::RecordedParts {
        id: EventId::new(),
        event_type: herald::EventType::new("raw.produced").unwrap(),
        stream: None,
        version: None,
        position: None,
        recorded_at: chrono::Utc::now(),
        data: herald::Payload::from(payload(0)),
        metadata: herald::Metadata::default(),
        origin: None,
    });
    // Creates the raw topic the way the transport creates its own.
    transport.publish(&[probe]).await.expect("create raw topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| serde_json::to_vec(&payload(i)).unwrap())
        .collect();
    let keys: Vec<String> = (0..n).map(|i| format!("order-{}", i % 1000)).collect();
    // Warm-up: the connection and the topic's metadata, as the transport's
    // producer has them from the publish above.
    producer
        .send(
            FutureRecord::to(&raw_topic)
                .key("warm-up")
                .payload(&body[..]),
            Duration::from_secs(30),
        )
        .await
        .expect("warm-up");
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(CHUNK) {
        let mut futures = Vec::with_capacity(CHUNK);
        for &i in chunk {
            let mut record = FutureRecord::to(&raw_topic)
                .key(keys[i].as_bytes())
                .payload(&bodies[i][..]);
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        futures.push(f);
                        break;
                    }
                    Err((_, back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        for f in futures {
            f.await.unwrap().expect("acknowledged");
        }
    }
    let raw_produce = rate(n, started.elapsed());
    eprintln!("  raw produce: {raw_produce:.0} events/s");

    // Herald produce: events with a stream each, through the transport.
    let events: Vec<herald::RecordedEvent> = (0..n)
        .map(|i| {
            herald::RecordedEvent::from_parts(herald::RecordedParts {
                id: EventId::new(),
                event_type: herald::EventType::new("order.placed").unwrap(),
                stream: Some(keys[i].as_str().into()),
                version: Some(i as u64 / 1000),
                position: Some(i as u64 + 1),
                recorded_at: chrono::Utc::now(),
                data: herald::Payload::from_json(bodies[i].clone()).unwrap(),
                metadata: herald::Metadata::default(),
                origin: None,
            })
        })
        .collect();
    let started = Instant::now();
    for chunk in events.chunks(CHUNK) {
        transport.publish(chunk).await.expect("publish");
    }
    let herald_produce = rate(n, started.elapsed());
    eprintln!("  herald produce: {herald_produce:.0} events/s");

    // Raw consume of the events Herald produced: a group member that only
    // counts messages.
    let topic = transport.topic_of("order.placed");
    let raw_consume = {
        let brokers = brokers.clone();
        let topic = topic.clone();
        let group = format!("{prefix}.raw");
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", &group)
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.offset.store", "false")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("fetch.wait.max.ms", "100")
                .create()
                .unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            let mut got = 0;
            let mut started = None;
            while got < n {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    started.get_or_insert_with(Instant::now);
                    consumer.store_offset_from_message(&m).unwrap();
                    got += 1;
                }
            }
            rate(n, started.unwrap().elapsed())
        })
        .await
        .unwrap()
    };

    eprintln!("  raw consume: {raw_consume:.0} events/s");

    // Herald consume: a broker subscriber with a no-op handler.
    let bus = Bus::builder()
        .transport(Arc::new(transport.clone()) as Arc<dyn Transport>)
        .build();
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    let handler = {
        let first = Arc::clone(&first);
        handler_fn(move |_event, _ctx| {
            first.get_or_init(Instant::now);
            async { Ok(()) }
        })
    };
    bus.subscribe(
        Subscriber::new("noop", handler)
            .topic("order.placed")
            .mode(DeliveryMode::Broker),
    )
    .unwrap();
    bus.ready("noop").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = (0, Instant::now());
    loop {
        let handled = bus.subscriber("noop").map_or(0, |s| s.handled);
        if handled >= n as u64 {
            break;
        }
        if last.1.elapsed() >= Duration::from_secs(5) {
            eprintln!("  herald consumer: {handled} of {n} handled");
            last = (handled, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "herald consumed {handled} of {n} in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let herald_consume = rate(n, first.get().unwrap().elapsed());
    bus.shutdown().await;
    transport.close().await.unwrap();

    println!(
        "produce, acknowledged: raw rdkafka {raw_produce:>9.0} events/s, herald {herald_produce:>9.0} events/s, overhead {:+.1}%",
        overhead(raw_produce, herald_produce)
    );
    println!(
        "consume, no-op handler: raw rdkafka {raw_consume:>9.0} events/s, herald {herald_consume:>9.0} events/s, overhead {:+.1}%",
        overhead(raw_consume, herald_consume)
    );
}
