//! The workloads of the peer benchmarks, on Herald: a bench program that
//! does one run and prints one JSON line, so that Herald's figures can be put
//! beside peer libraries and raw PostgreSQL measured in the same sitting.
//!
//! One client, sequential awaits, the same ~198-byte JSON order payload as
//! the peers, in a fresh schema (dropped at the end):
//!
//! - `append_1`: N new streams, one `append` of one event each (one
//!   transaction, one commit each);
//! - `append_b`: N/B new streams, one `append` of B events each;
//! - `read_all`: the 2N events of both phases through `read_all`, decoded,
//!   in the store's default batches;
//! - `process_b`: a durable subscriber (a bus on the store, a no-op sync
//!   handler, batches of B, a checkpoint committed per batch) from
//!   checkpoint 0 until its saved checkpoint reaches the head.
//!
//! Run with `cargo bench -p herald-postgres --bench workloads -- --n 20000
//! --batch 100 --run 1` (these are the defaults); `--notify 0` turns the
//! store's after-append notifications off, to measure what they cost. Uses
//! the database of `HERALD_TEST_POSTGRES_URL` (default: the local test
//! database).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use herald::store::{EventStore, ExpectedVersion, ReadAll, StreamName};
use herald::{
    Bus, Context, DeliveryMode, HandlerResult, NewEvent, Payload, RecordedEvent, Subscriber,
};
use herald_postgres::{PgConfig, PgStore};
use serde_json::json;

fn url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The number after `--name` on the command line, or `default`.
fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == &format!("--{name}"))
        .and_then(|at| args.get(at + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{name} takes a number"))
        })
        .unwrap_or(default)
}

/// The peers' payload: about 198 bytes of compact JSON.
fn payload(i: u64) -> Payload {
    Payload::from_json(format!(
        r#"{{"order_id":"ord-{i:08}","customer":"cust-{:05}","total":123.45,"items":[{{"sku":"SKU-0001","qty":2,"price":19.99}},{{"sku":"SKU-0002","qty":1,"price":83.47}},{{"sku":"SKU-0003","qty":1,"price":0.01}}]}}"#,
        i % 1000
    ))
    .expect("valid json")
}

fn noop(_event: &RecordedEvent, _ctx: &Context) -> HandlerResult {
    Ok(())
}

/// Events per second.
fn eps(events: u64, elapsed: Duration) -> f64 {
    (events as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0
}

/// The version of `krate` in the workspace's lock file.
fn locked_version(krate: &str) -> String {
    let lock = include_str!("../../../Cargo.lock");
    let needle = format!("name = \"{krate}\"\nversion = \"");
    lock.find(&needle)
        .map(|at| {
            let rest = &lock[at + needle.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_owned()
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn main() {
    let n = arg("n", 20_000);
    let batch = arg("batch", 100);
    let run = arg("run", 1);
    let notify = arg("notify", 1) != 0;
    assert!(
        batch > 0 && n % batch == 0,
        "--n must be a multiple of --batch"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let schema = format!("herald_bench_{secs}_{:08x}", rand::random::<u32>());
        let store = Arc::new(
            PgStore::connect(PgConfig::new(url()).schema(schema.clone()).notify(notify))
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL is not reachable (set HERALD_TEST_POSTGRES_URL): {e}")
                }),
        );

        let start = Instant::now();
        for i in 0..n {
            let stream = StreamName::new(format!("order-1-{i}")).expect("a stream name");
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("order.placed", payload(i))],
                )
                .await
                .expect("append");
        }
        let append_1 = eps(n, start.elapsed());

        let start = Instant::now();
        for s in 0..n / batch {
            let stream = StreamName::new(format!("order-b-{s}")).expect("a stream name");
            let events = (0..batch)
                .map(|i| NewEvent::new("order.placed", payload(s * batch + i)))
                .collect();
            store
                .append(&stream, ExpectedVersion::NoStream, events)
                .await
                .expect("append");
        }
        let append_b = eps(n, start.elapsed());

        let start = Instant::now();
        let read: Vec<RecordedEvent> = store
            .read_all(ReadAll::after(0))
            .try_collect()
            .await
            .expect("read all");
        let read_all = eps(read.len() as u64, start.elapsed());
        assert_eq!(read.len() as u64, 2 * n, "every event read back");
        drop(read);

        let head = store.head().await.expect("the head");
        let bus = Bus::builder().store(Arc::clone(&store)).build();
        let start = Instant::now();
        bus.subscribe(
            Subscriber::new_sync("workloads", noop)
                .topic("order.*")
                .mode(DeliveryMode::Durable)
                .batch_size(batch as usize),
        )
        .expect("subscribe");
        while bus.subscriber("workloads").and_then(|s| s.checkpoint) != Some(head) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let process_b = eps(2 * n, start.elapsed());
        assert_eq!(
            bus.subscriber("workloads").map(|s| s.handled),
            Some(2 * n),
            "every event handled"
        );
        bus.shutdown().await;

        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(store.pool())
            .await
            .expect("drop the bench schema");

        let line = json!({
            "peer": "herald",
            "backend": "postgres",
            "version": format!("herald-postgres {}", env!("CARGO_PKG_VERSION")),
            "driver": format!("sqlx {}", locked_version("sqlx")),
            "run": run,
            "n": n,
            "batch": batch,
            "read_n": 2 * n,
            "notify": notify,
            "eps": {
                "append_1": append_1,
                "append_b": append_b,
                "read_all": read_all,
                "process_b": process_b,
            },
        });
        println!("{line}");
    });
}
