//! What the PostgreSQL bench programs share: the connection, a fresh
//! schema, and a history of events written by concurrent appends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use herald::store::{EventStore, ExpectedVersion, StreamName};
use herald::{NewEvent, Payload};
use herald_postgres::{PgConfig, PgStore};

/// Streams the history is spread over.
pub(crate) const STREAMS: u64 = 1_000;
/// Events per append while the history is written.
pub(crate) const APPEND_BATCH: u64 = 100;
/// Appends in flight while the history is written.
pub(crate) const WRITERS: u64 = 4;

pub(crate) fn url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The value after `--name` on the command line, if any.
pub(crate) fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == &format!("--{name}"))?;
    Some(
        args.get(at + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("--{name} takes a number")),
    )
}

/// About 200 bytes of JSON, the same for every event.
pub(crate) fn payload() -> Payload {
    Payload::from_json(
        r#"{"order_id":"ord-00004242","customer":"cust-00042","total":123.45,"items":[{"sku":"SKU-0001","qty":2,"price":19.99},{"sku":"SKU-0002","qty":1,"price":83.47},{"sku":"SKU-0003","qty":1,"price":0.01}]}"#,
    )
    .expect("valid json")
}

pub(crate) async fn connect() -> (PgStore, String) {
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
pub(crate) async fn write_history(store: &PgStore, events: u64) -> u64 {
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
