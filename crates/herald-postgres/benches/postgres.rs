//! Benchmarks of the PostgreSQL store against raw PostgreSQL, in one run.
//!
//! - `append_batch_100`: appending batches of 100 events of about 200 bytes
//!   to a stream, against a raw multi-row `INSERT` of the same rows into an
//!   equivalent table through the same client library (the physical limit).
//! - `concurrent_appends`: 8 writers appending 10 events per transaction,
//!   each transaction as the store does it, and the same with an advisory
//!   lock held from the append to the commit (the other known fix for the
//!   sequence-gap problem) — the measured cost of each technique.
//! - `single_event_appends`: 64 concurrent callers, each appending one
//!   event per call to a stream of its own, with coalesced appends (the
//!   default), with each append its own transaction, and as raw single-row
//!   `INSERT`s over 64 connections, and coalesced with two and with four
//!   groups in flight instead of one; then one caller alone, coalesced and
//!   not. Each call's latency is timed too, and p50/p99 are printed.
//! - `read_all`: reading 10,000 events of the global log, against a raw
//!   `SELECT` of the same rows.
//!
//! Needs the database of `HERALD_TEST_POSTGRES_URL` (default: the local test
//! database); works in a schema of its own, dropped at the end.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use futures_util::TryStreamExt;
use herald::store::{EventStore, ExpectedVersion, ReadAll, StreamName};
use herald::{EventId, NewEvent};
use herald_postgres::{PgConfig, PgStore};
use serde_json::json;
use sqlx::PgPool;
use tokio::runtime::Runtime;

const BATCH: usize = 100;
const WRITERS: usize = 8;
const READ: usize = 10_000;
/// Concurrent callers of `single_event_appends`.
const CALLERS: usize = 64;

fn url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// About 200 bytes of JSON.
fn payload(n: usize) -> serde_json::Value {
    json!({
        "order_id": n,
        "customer": format!("customer-{:06}", n % 1000),
        "lines": [{"sku": "SKU-0001", "qty": 2, "cents": 1999}, {"sku": "SKU-0002", "qty": 1, "cents": 499}],
        "currency": "EUR",
        "note": "leave at the door, ring twice",
    })
}

fn batch(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new("order.created", payload(i)))
        .collect()
}

struct Setup {
    store: PgStore,
    /// The same schema, without notifications.
    quiet: PgStore,
    schema: String,
}

async fn setup() -> Setup {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let schema = format!("herald_bench_{secs}_{:08x}", rand::random::<u32>());
    let store = PgStore::connect(
        PgConfig::new(url())
            .schema(schema.clone())
            .max_connections(WRITERS as u32 + 4),
    )
    .await
    .unwrap_or_else(|e| panic!("PostgreSQL is not reachable (set HERALD_TEST_POSTGRES_URL): {e}"));
    sqlx::raw_sql(&format!(
        "CREATE SEQUENCE \"{schema}\".raw_positions;
         CREATE TABLE \"{schema}\".raw_events (
             position bigint PRIMARY KEY DEFAULT nextval('\"{schema}\".raw_positions'),
             id uuid NOT NULL UNIQUE,
             type text COLLATE \"C\" NOT NULL,
             stream text COLLATE \"C\" NOT NULL,
             version bigint NOT NULL,
             recorded_at timestamptz NOT NULL,
             data json NOT NULL,
             correlation_id uuid NOT NULL,
             causation_id uuid,
             headers jsonb,
             UNIQUE (stream, version)
         );"
    ))
    .execute(store.pool())
    .await
    .expect("create the raw table");
    let quiet = PgStore::connect(
        PgConfig::new(url())
            .schema(schema.clone())
            .max_connections(WRITERS as u32 + 4)
            .notify(false),
    )
    .await
    .expect("a second store");
    Setup {
        store,
        quiet,
        schema,
    }
}

/// The raw multi-row INSERT: 100 rows, 7 parameters each, one statement.
fn raw_insert_sql(schema: &str) -> String {
    let mut sql = format!(
        "INSERT INTO \"{schema}\".raw_events \
         (id, type, stream, version, recorded_at, data, correlation_id) VALUES "
    );
    for i in 0..BATCH {
        let p = i * 7;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${}::json, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7
        ));
    }
    sql
}

async fn raw_insert(pool: &PgPool, sql: &str, stream: &str, first_version: i64) {
    let now = chrono::Utc::now();
    let mut query = sqlx::query(sql);
    for i in 0..BATCH {
        let id = *EventId::new().as_uuid();
        query = query
            .bind(id)
            .bind("order.created")
            .bind(stream)
            .bind(first_version + i as i64)
            .bind(now)
            .bind(payload(i).to_string())
            .bind(id);
    }
    query.execute(pool).await.expect("raw insert");
}

fn append_batch_100(c: &mut Criterion, rt: &Runtime, setup: &Setup) {
    let mut group = c.benchmark_group("append_batch_100");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));
    let stream = StreamName::new("bench-append").unwrap();
    group.bench_function("herald", |b| {
        b.to_async(rt).iter_batched(
            || batch(BATCH),
            |events| async {
                setup
                    .store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let sql = raw_insert_sql(&setup.schema);
    let version = std::sync::atomic::AtomicI64::new(0);
    group.bench_function("raw_insert", |b| {
        b.to_async(rt).iter(|| async {
            let first = version.fetch_add(BATCH as i64, std::sync::atomic::Ordering::Relaxed);
            raw_insert(setup.store.pool(), &sql, "bench-raw", first).await;
        })
    });
    group.finish();
}

/// 8 writers, each appending `rounds` transactions of 10 events to its own
/// stream; with `lock`, each transaction holds an advisory lock from before
/// its append to its commit, as serialized appends would. `store` notifies
/// in the transaction or not.
async fn concurrent(store: &PgStore, rounds: usize, lock: bool) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamName::new(format!("bench-writer-{w}-{lock}")).unwrap();
                for _ in 0..rounds {
                    let mut tx = store.pool().begin().await.unwrap();
                    if lock {
                        sqlx::query("SELECT pg_advisory_xact_lock(4242)")
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    }
                    store
                        .append_in_tx(&mut tx, &stream, ExpectedVersion::Any, batch(10))
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

fn concurrent_appends(c: &mut Criterion, rt: &Runtime, setup: &Setup) {
    let mut group = c.benchmark_group("concurrent_appends");
    group.throughput(Throughput::Elements((WRITERS * 10) as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    for (name, store, lock) in [
        ("watermark", &setup.quiet, false),
        ("advisory_lock", &setup.quiet, true),
        ("watermark_notify_in_tx", &setup.store, false),
    ] {
        group.bench_function(name, |b| {
            b.to_async(rt)
                .iter_custom(|iters| async move { concurrent(store, iters as usize, lock).await })
        });
    }
    group.finish();
}

/// Per-call latencies of one benchmark, in microseconds, across its runs.
#[derive(Default)]
struct Latencies(std::sync::Mutex<Vec<u32>>);

impl Latencies {
    fn add(&self, mut more: Vec<u32>) {
        self.0.lock().unwrap().append(&mut more);
    }

    /// Prints p50, p90, p99 and the maximum, and forgets them.
    fn report(&self, name: &str) {
        let mut all = std::mem::take(&mut *self.0.lock().unwrap());
        if all.is_empty() {
            return;
        }
        all.sort_unstable();
        let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        println!(
            "{name}: {} calls, latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            all.len(),
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        );
    }
}

/// How one caller appends one event.
#[derive(Clone, Copy)]
enum Caller {
    Store,
    Raw,
}

/// `callers` tasks, each making `rounds` calls that write one event to a
/// stream of its own; returns the wall time and records each call's
/// latency.
async fn single_event_callers(
    store: &PgStore,
    how: Caller,
    callers: usize,
    rounds: usize,
    run: usize,
    latencies: &Latencies,
) -> Duration {
    let raw_sql = format!(
        "INSERT INTO \"{}\".raw_events \
         (id, type, stream, version, recorded_at, data, correlation_id) \
         VALUES ($1, $2, $3, $4, $5, $6::json, $1)",
        store.config().schema
    );
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (store, raw_sql) = (store.clone(), raw_sql.clone());
            tokio::spawn(async move {
                let name = format!("bench-single-{run}-{caller}");
                let stream = StreamName::new(name.clone()).unwrap();
                let mut times = Vec::with_capacity(rounds);
                for round in 0..rounds {
                    let event = payload(round);
                    let began = Instant::now();
                    match how {
                        Caller::Store => {
                            store
                                .append(
                                    &stream,
                                    ExpectedVersion::Any,
                                    vec![NewEvent::new("order.created", event)],
                                )
                                .await
                                .unwrap();
                        }
                        Caller::Raw => {
                            sqlx::query(&raw_sql)
                                .bind(*EventId::new().as_uuid())
                                .bind("order.created")
                                .bind(&name)
                                .bind(round as i64)
                                .bind(chrono::Utc::now())
                                .bind(event.to_string())
                                .execute(store.pool())
                                .await
                                .unwrap();
                        }
                    }
                    times.push(began.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    latencies.add(times);
    elapsed
}

fn single_event_appends(c: &mut Criterion, rt: &Runtime, setup: &Setup) {
    let connect = |coalesce: bool, groups: usize, connections: u32| {
        rt.block_on(PgStore::connect(
            PgConfig::new(url())
                .schema(setup.schema.clone())
                .max_connections(connections)
                .coalesce(coalesce)
                .coalesce_groups(groups),
        ))
        .expect("a store for single-event appends")
    };
    // The default config (one group in flight), then two and four.
    let coalesced = connect(true, 1, 6);
    let two_groups = connect(true, 2, 6);
    let four_groups = connect(true, 4, 8);
    let separate = connect(false, 2, CALLERS as u32);
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let latencies = Latencies::default();
    for callers in [CALLERS, 1] {
        let mut group = c.benchmark_group(format!("single_event_appends_{callers}_callers"));
        group.throughput(Throughput::Elements(callers as u64));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(10));
        // The variants on few connections first: the server's connection
        // limit is shared, and the 64-connection pool keeps its connections.
        let mut variants = vec![("herald_coalesced", &coalesced, Caller::Store)];
        if callers > 1 {
            variants.push(("herald_coalesced_2_groups", &two_groups, Caller::Store));
            variants.push(("herald_coalesced_4_groups", &four_groups, Caller::Store));
        }
        variants.push(("herald_separate_commits", &separate, Caller::Store));
        if callers > 1 {
            variants.push(("raw_insert", &separate, Caller::Raw));
        }
        for (name, store, how) in variants {
            let (runs, latencies) = (&runs, &latencies);
            group.bench_function(name, |b| {
                b.to_async(rt).iter_custom(|iters| async move {
                    let run = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    single_event_callers(store, how, callers, iters as usize, run, latencies).await
                })
            });
            latencies.report(&format!("single_event_appends_{callers}_callers/{name}"));
        }
        group.finish();
    }
    rt.block_on(async {
        for store in [&coalesced, &two_groups, &four_groups, &separate] {
            store.pool().close().await;
        }
    });
}

fn read_all(c: &mut Criterion, rt: &Runtime, setup: &Setup) {
    // A log of its own: 10,000 events after whatever the other groups wrote.
    let start = rt.block_on(async {
        let head = setup.store.head().await.unwrap();
        let stream = StreamName::new("bench-read").unwrap();
        for _ in 0..READ / BATCH {
            setup
                .store
                .append(&stream, ExpectedVersion::Any, batch(BATCH))
                .await
                .unwrap();
        }
        head
    });
    let mut group = c.benchmark_group("read_all");
    group.throughput(Throughput::Elements(READ as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    for batch_size in [512, 2048, 8192] {
        group.bench_function(format!("herald_batch_{batch_size}"), |b| {
            b.to_async(rt).iter(|| async {
                let n = setup
                    .store
                    .read_all(ReadAll::after(start).limit(READ).batch_size(batch_size))
                    .try_fold(0usize, |n, _| async move { Ok(n + 1) })
                    .await
                    .unwrap();
                assert_eq!(n, READ);
            })
        });
    }
    let sql = format!(
        "SELECT position, id, type, stream, version, recorded_at, data::text, correlation_id, \
         causation_id, headers::text FROM \"{}\".events WHERE position > $1 \
         ORDER BY position LIMIT $2",
        setup.schema
    );
    group.bench_function("raw_select", |b| {
        b.to_async(rt).iter(|| async {
            let rows = sqlx::query(&sql)
                .bind(start as i64)
                .bind(READ as i64)
                .fetch_all(setup.store.pool())
                .await
                .unwrap();
            assert_eq!(rows.len(), READ);
        })
    });
    group.finish();
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to, written out
    // so that no undocumented public function is generated.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let c = &mut c;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let setup = rt.block_on(setup());
    append_batch_100(c, &rt, &setup);
    concurrent_appends(c, &rt, &setup);
    single_event_appends(c, &rt, &setup);
    read_all(c, &rt, &setup);
    rt.block_on(async {
        sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", setup.schema))
            .execute(setup.store.pool())
            .await
            .expect("drop the bench schema");
    });
    c.final_summary();
}
