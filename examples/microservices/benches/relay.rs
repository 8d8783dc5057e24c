//! The outbox relay from PostgreSQL to a real broker: a bench program that
//! prints events/s.
//!
//! `--events N` events of about 200 bytes (100,000 by default) are appended
//! across 1,000 streams into a fresh schema; then for each broker and batch
//! size, a new relay forwards them from the start, and is timed until the
//! broker confirmed everything up to the head. One consumer group matching
//! every event is declared first (on RabbitMQ an event no queue is bound
//! for is dropped by the broker), under a fresh prefix per run.
//!
//! `cargo bench -p herald-microservices-example --bench relay`
//! (`-- --brokers amqp,nats,kafka --events 100000`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::relay::Relay;
use herald::store::{EventStore, ExpectedVersion, StreamName};
use herald::transport::{ConsumerSpec, Transport};
use herald::{NewEvent, Payload, TopicPattern};
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_microservices_example::{Broker, Common};
use herald_nats::{NatsConfig, NatsTransport};

const STREAMS: u64 = 1_000;
const APPEND_BATCH: u64 = 100;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == &format!("--{name}"))?;
    args.get(at + 1).cloned()
}

fn payload() -> Payload {
    Payload::from_json(
        r#"{"order_id":"ord-00004242","customer":"cust-00042","total":123.45,"items":[{"sku":"SKU-0001","qty":2,"price":19.99},{"sku":"SKU-0002","qty":1,"price":83.47},{"sku":"SKU-0003","qty":1,"price":0.01}]}"#,
    )
    .expect("valid json")
}

fn common(broker: Broker, prefix: &str, schema: &str) -> Common {
    Common {
        broker,
        prefix: prefix.to_owned(),
        postgres: std::env::var("HERALD_EXAMPLE_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        schema: schema.to_owned(),
    }
}

async fn run(
    broker: Broker,
    store: &Arc<herald_postgres::PgStore>,
    head: u64,
    batch: usize,
    run: u32,
) -> Duration {
    let prefix = format!("relaybench{run}x{:08x}", std::process::id());
    // A fresh prefix per run; what it leaves on the broker is removed
    // afterwards (NATS streams) or expires (RabbitMQ queues).
    let (transport, nats): (Arc<dyn Transport>, Option<Arc<NatsTransport>>) = match broker {
        Broker::Amqp => {
            let url = std::env::var("HERALD_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
            let config = AmqpConfig::new(url)
                .prefix(&prefix)
                .queue_expiry(Duration::from_secs(60));
            let amqp = AmqpTransport::connect(config)
                .await
                .expect("RabbitMQ is reachable (HERALD_AMQP_URL)");
            (Arc::new(amqp), None)
        }
        Broker::Nats => {
            let url = std::env::var("HERALD_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
            let nats = Arc::new(
                NatsTransport::connect(NatsConfig::new(url).prefix(&prefix))
                    .await
                    .expect("NATS is reachable (HERALD_NATS_URL)"),
            );
            (nats.clone(), Some(nats))
        }
        Broker::Kafka => {
            let transport = common(broker, &prefix, "unused")
                .transport()
                .await
                .expect("Kafka is reachable (HERALD_KAFKA_BROKERS)");
            (transport, None)
        }
    };
    // Declared, and left unconsumed: the broker keeps what the relay sends.
    let _group = transport
        .subscribe(&ConsumerSpec::new(
            "everything",
            vec![TopicPattern::parse("#").expect("a pattern")],
        ))
        .await
        .expect("a consumer group");
    let start = Instant::now();
    let relay = Relay::builder(
        format!("bench-{run}"),
        Arc::clone(store),
        Arc::clone(&transport),
    )
    .batch_size(batch)
    .spawn()
    .expect("spawn the relay");
    relay.wait_forwarded(head).await;
    let elapsed = start.elapsed();
    relay.stop().await;
    if let Some(nats) = nats {
        nats.delete_streams()
            .await
            .expect("delete the bench's streams");
    }
    let _ = transport.close().await;
    elapsed
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let events: u64 = arg("events").map_or(100_000, |v| v.parse().expect("--events N"));
        let brokers: Vec<Broker> = arg("brokers")
            .unwrap_or_else(|| "amqp,nats".to_owned())
            .split(',')
            .map(|b| match b {
                "amqp" => Broker::Amqp,
                "nats" => Broker::Nats,
                "kafka" => Broker::Kafka,
                other => panic!("unknown broker {other:?}: amqp, nats or kafka"),
            })
            .collect();
        let schema = format!("herald_bench_relay_{:08x}", std::process::id());
        let store = common(Broker::Amqp, "unused", &schema)
            .store()
            .await
            .expect("PostgreSQL is reachable (HERALD_EXAMPLE_POSTGRES_URL)");
        let data = payload();
        let appends = events.div_ceil(APPEND_BATCH);
        for n in 0..appends {
            let stream = StreamName::new(format!("order-{}", n % STREAMS)).expect("a name");
            let count = APPEND_BATCH.min(events - n * APPEND_BATCH);
            let batch = (0..count)
                .map(|_| NewEvent::new("order.created", data.clone()))
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, batch)
                .await
                .expect("append");
        }
        let head = store.head().await.expect("the head");
        println!(
            "relay from PostgreSQL: {events} events of {} bytes in {STREAMS} streams",
            data.as_bytes().len()
        );
        println!(
            "{:>6} {:>6} {:>10} {:>12}",
            "broker", "batch", "seconds", "events/s"
        );
        let mut n = 0;
        for broker in brokers {
            for batch in [100, 1000] {
                n += 1;
                let elapsed = run(broker, &store, head, batch, n).await;
                println!(
                    "{:>6} {batch:>6} {:>10.3} {:>12.0}",
                    format!("{broker:?}").to_lowercase(),
                    elapsed.as_secs_f64(),
                    events as f64 / elapsed.as_secs_f64()
                );
            }
        }
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(store.pool())
            .await
            .expect("drop the bench schema");
    });
}
