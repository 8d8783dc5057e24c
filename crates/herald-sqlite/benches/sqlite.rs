//! Throughput of the SQLite store, for both `synchronous` settings.
//!
//! - `append_batch_100`: one append of 100 events of about 200 bytes;
//! - `append_1`: one append of one event, one caller at a time;
//! - `append_1_x32`: 32 callers appending one event each at once (group
//!   commit);
//! - `read_all`: the whole global log of 100 000 events.
//!
//! Throughput is in events, so criterion reports events per second.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use futures_util::TryStreamExt;
use futures_util::future::join_all;
use herald::NewEvent;
use herald::store::{EventStore, ExpectedVersion, ReadAll, StreamName};
use herald_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use serde_json::json;

const SETTINGS: [Synchronous; 2] = [Synchronous::Normal, Synchronous::Full];
const LOG_SIZE: u64 = 100_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// An event whose payload is about 200 bytes of JSON.
fn event(n: u64) -> NewEvent {
    NewEvent::new(
        "order.line.added",
        json!({
            "order_id": n,
            "sku": "SKU-000123-BLUE-XL",
            "quantity": 3,
            "unit_price": "19.99",
            "currency": "EUR",
            "customer": "customer-4711",
            "note": "leave at the door, ring twice, thanks a lot",
            "warehouse": "berlin-2",
        }),
    )
}

fn open(rt: &tokio::runtime::Runtime, sync: Synchronous) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = SqliteConfig::new(dir.path().join("bench.db")).synchronous(sync);
    let store = rt.block_on(SqliteStore::open(config)).expect("open");
    (dir, store)
}

fn stream(n: u64) -> StreamName {
    StreamName::new(format!("order-{}", n % 64)).expect("a stream name")
}

fn appends(c: &mut Criterion) {
    assert!(event(0).data().len() >= 190, "{}", event(0).data().len());
    let rt = runtime();
    let mut group = c.benchmark_group("append");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for sync in SETTINGS {
        let (_dir, store) = open(&rt, sync);
        let batch: Vec<NewEvent> = (0..100).map(event).collect();
        let mut n = 0u64;
        group.throughput(Throughput::Elements(100));
        group.bench_function(BenchmarkId::new("batch_100", sync), |b| {
            b.to_async(&rt).iter(|| {
                n += 1;
                let (store, s, batch) = (&store, stream(n), batch.clone());
                async move {
                    store
                        .append(&s, ExpectedVersion::Any, batch)
                        .await
                        .expect("append")
                }
            })
        });
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("1", sync), |b| {
            b.to_async(&rt).iter(|| {
                n += 1;
                let (store, s, e) = (&store, stream(n), event(n));
                async move {
                    store
                        .append(&s, ExpectedVersion::Any, vec![e])
                        .await
                        .expect("append")
                }
            })
        });
        group.throughput(Throughput::Elements(32));
        group.bench_function(BenchmarkId::new("1_x32", sync), |b| {
            b.to_async(&rt).iter(|| {
                n += 32;
                let store = &store;
                let calls = (0..32).map(move |i| {
                    let (s, e) = (stream(n + i), event(n + i));
                    async move {
                        store
                            .append(&s, ExpectedVersion::Any, vec![e])
                            .await
                            .expect("append")
                    }
                });
                join_all(calls)
            })
        });
    }
    group.finish();
}

fn read_all(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("read_all");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(LOG_SIZE));
    for sync in SETTINGS {
        let (_dir, store) = open(&rt, sync);
        rt.block_on(async {
            for chunk in 0..LOG_SIZE / 1000 {
                let batch = (0..1000).map(|i| event(chunk * 1000 + i)).collect();
                store
                    .append(&stream(chunk), ExpectedVersion::Any, batch)
                    .await
                    .expect("fill the log");
            }
        });
        group.bench_function(BenchmarkId::new("100k", sync), |b| {
            b.to_async(&rt).iter(|| async {
                let n = store
                    .read_all(ReadAll::after(0))
                    .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                    .await
                    .expect("read the log");
                assert_eq!(n, LOG_SIZE);
            })
        });
    }
    group.finish();
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to, written out
    // so that no undocumented public function is generated.
    let mut c = Criterion::default().configure_from_args();
    appends(&mut c);
    read_all(&mut c);
    c.final_summary();
}
