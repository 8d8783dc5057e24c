//! The outbox relay from PostgreSQL: a bench program that prints its
//! figures.
//!
//! `EVENTS` events of about 200 bytes are appended across `STREAMS` streams
//! into a fresh schema; then, for each batch size, a new relay (its own
//! checkpoint, from the start) forwards them to a `MemoryTransport` on which
//! one consumer group matches every event, and is timed until it has
//! forwarded (and the broker confirmed) everything up to the head. The
//! broker's queue is emptied between runs, outside the timing.
//!
//! Run with `cargo bench -p herald-postgres --bench relay`; `--events N`
//! (after `--`) changes the history's size, `--runs N` the runs per batch
//! size.
//!
//! Needs the database of `HERALD_TEST_POSTGRES_URL` (default: the local test
//! database); works in a schema of its own, dropped at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::relay::Relay;
use herald::store::{EventStore, ExpectedVersion, StreamName};
use herald::transport::{ConsumerSpec, MemoryTransport, Transport};
use herald::{NewEvent, Payload, TopicPattern};
use herald_postgres::{PgConfig, PgStore};

/// Events in the history the relay forwards.
const EVENTS: u64 = 100_000;
/// Streams the history is spread over.
const STREAMS: u64 = 1_000;
/// Events per append while the history is written.
const APPEND_BATCH: u64 = 100;
/// Appends in flight while the history is written.
const WRITERS: u64 = 4;

fn url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The value after `--name` on the command line, if any.
fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == &format!("--{name}"))?;
    Some(
        args.get(at + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("--{name} takes a number")),
    )
}

/// About 200 bytes of JSON, the same for every event.
fn payload() -> Payload {
    Payload::from_json(
        r#"{"order_id":"ord-00004242","customer":"cust-00042","total":123.45,"items":[{"sku":"SKU-0001","qty":2,"price":19.99},{"sku":"SKU-0002","qty":1,"price":83.47},{"sku":"SKU-0003","qty":1,"price":0.01}]}"#,
    )
    .expect("valid json")
}

async fn connect() -> (PgStore, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let schema = format!("herald_bench_{secs}_{:08x}", rand::random::<u32>());
    let store = PgStore::connect(
        PgConfig::new(url())
            .schema(schema.clone())
            .max_connections(16),
    )
    .await
    .unwrap_or_else(|e| panic!("PostgreSQL is not reachable (set HERALD_TEST_POSTGRES_URL): {e}"));
    (store, schema)
}

/// Appends `events` events across `STREAMS` streams, `WRITERS` appends at a
/// time; returns the head.
async fn write_history(store: &PgStore, events: u64) -> u64 {
    let start = Instant::now();
    let appends = events.div_ceil(APPEND_BATCH);
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, next, data) = (store.clone(), Arc::clone(&next), payload());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= appends {
                        return;
                    }
                    let stream = StreamName::new(format!("order-{}", n % STREAMS)).unwrap();
                    let count = APPEND_BATCH.min(events - n * APPEND_BATCH);
                    let batch = (0..count)
                        .map(|_| NewEvent::new("order.created", data.clone()))
                        .collect();
                    store
                        .append(&stream, ExpectedVersion::Any, batch)
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer");
    }
    let head = store.head().await.expect("the head");
    println!(
        "history: {events} events of {} bytes in {STREAMS} streams, written in {:.1} s; head {head}",
        payload().as_bytes().len(),
        start.elapsed().as_secs_f64()
    );
    head
}

/// One relay from the start to the head; returns the time.
async fn relay_all(
    store: &Arc<PgStore>,
    broker: &Arc<MemoryTransport>,
    name: &str,
    batch: usize,
    head: u64,
) -> Duration {
    let start = Instant::now();
    let relay = Relay::builder(name, Arc::clone(store), broker.clone())
        .batch_size(batch)
        .spawn()
        .expect("spawn the relay");
    relay.wait_forwarded(head).await;
    let elapsed = start.elapsed();
    relay.stop().await;
    elapsed
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (store, schema) = connect().await;
        let store = Arc::new(store);
        let events = arg("events").unwrap_or(EVENTS);
        let runs = arg("runs").unwrap_or(3);
        let head = write_history(&store, events).await;
        let broker = Arc::new(MemoryTransport::new());
        let mut consumer = broker
            .subscribe(&ConsumerSpec::new(
                "everything",
                vec![TopicPattern::parse("#").expect("a pattern")],
            ))
            .await
            .expect("a consumer group");

        println!();
        println!(
            "relay: PostgreSQL to MemoryTransport, one consumer group, checkpoint saved per batch"
        );
        println!("{:>6} {:>10} {:>14}", "batch", "seconds", "events/s");
        let mut run = 0;
        for batch in [100, 1000] {
            for _ in 0..runs {
                run += 1;
                let elapsed =
                    relay_all(&store, &broker, &format!("bench-{run}"), batch, head).await;
                let queued = broker.queued("everything") as u64;
                assert_eq!(queued, events, "the broker got every event once");
                println!(
                    "{batch:>6} {:>10.3} {:>14.0}",
                    elapsed.as_secs_f64(),
                    events as f64 / elapsed.as_secs_f64()
                );
                // Empty the queue, outside the timing.
                for _ in 0..queued {
                    let delivery = consumer.next().await.expect("a delivery");
                    delivery.ack().await.expect("an ack");
                }
            }
        }
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(store.pool())
            .await
            .expect("drop the bench schema");
    });
}
