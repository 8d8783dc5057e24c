//! HTTP load benchmark of the herald server, on loopback, with a Rust load
//! generator in the same process.
//!
//! ```sh
//! cargo bench -p herald-server --bench http_load
//! ```
//!
//! For each store (a temporary SQLite file, and a fresh PostgreSQL schema
//! at `HERALD_BENCH_POSTGRES_URL`, default the test database; set
//! `HERALD_BENCH_STORES=sqlite` to skip PostgreSQL) it measures:
//!
//! - **single**: 64 clients, each appending one event per request to a
//!   stream of its own, as fast as answers come back: requests/s, p50, p99;
//! - **batch**: 16 clients appending 100 events per request: events/s, p50,
//!   p99;
//! - **fan-out**: 100 SSE subscribers connected while a publisher appends
//!   10,000 events/s (100 events every 10 ms, without waiting for the
//!   previous append) for the run's duration: each
//!   subscriber must receive every event; reports the rate each received and
//!   how long after the last append the slowest got the last event.
//!
//! `HERALD_BENCH_SECONDS` sets each phase's duration (default 5).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use herald_server::{Backend, ServeConfig, Server};
use serde_json::json;

const SINGLE_CLIENTS: usize = 64;
const BATCH_CLIENTS: usize = 16;
const BATCH_SIZE: usize = 100;
const SUBSCRIBERS: usize = 100;
const FAN_OUT_RATE: u64 = 10_000;

fn seconds() -> Duration {
    let secs = std::env::var("HERALD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5u64);
    Duration::from_secs(secs)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let stores = std::env::var("HERALD_BENCH_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
    for store in stores.split(',').map(str::trim) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let backend = match store {
            "sqlite" => {
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                Backend::open(&url, "").await.expect("SQLite opens")
            }
            "postgres" => {
                let url = std::env::var("HERALD_BENCH_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let schema = format!("herald_bench_{secs}_{:08x}", rand::random::<u32>());
                Backend::open(&url, &schema)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"))
            }
            other => panic!("unknown store {other:?}: use sqlite or postgres"),
        };
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            ..ServeConfig::default()
        };
        let server = Server::start_on(backend, config)
            .await
            .expect("the server starts");
        let base = format!("http://{}", server.addr());
        println!("== {store}");
        load(&base, "single", SINGLE_CLIENTS, 1).await;
        load(&base, "batch", BATCH_CLIENTS, BATCH_SIZE).await;
        fan_out(&base).await;
        server.shutdown().await;
    }
}

/// `clients` tasks appending `per_request` events per request for the
/// phase's duration.
async fn load(base: &str, phase: &str, clients: usize, per_request: usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("a client");
    let deadline = Instant::now() + seconds();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            let url = format!("{base}/api/streams/bench-{phase}-{c}/events");
            let body = serde_json::to_vec(&json!({
                "events": (0..per_request)
                    .map(|i| json!({"type": "bench.event", "data": {"client": c, "i": i, "note": "a payload of some size"}}))
                    .collect::<Vec<_>>()
            }))
            .expect("a body");
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("the server answers");
                    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap_or_default());
                    let _ = response.bytes().await;
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let requests = latencies.len() as f64;
    println!(
        "{phase:>7}: {clients} clients x {per_request} event(s)/request: {:.0} requests/s, {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms",
        requests / elapsed,
        requests * per_request as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    );
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// 100 SSE subscribers; a publisher at 10,000 events/s.
async fn fan_out(base: &str) {
    let client = reqwest::Client::new();
    let ticks = seconds().as_millis() as u64 / 10;
    let total = ticks * FAN_OUT_RATE / 100;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let client = client.clone();
            let url = format!("{base}/api/subscribe?topics=fanout.*&after=now");
            let ready = ready_tx.clone();
            tokio::spawn(async move {
                let response = client.get(&url).send().await.expect("subscribed");
                assert_eq!(response.status(), 200);
                ready.send(()).await.expect("the bench waits");
                let mut body = response.bytes_stream();
                let mut buffer = Vec::new();
                let mut received = 0u64;
                while received < total {
                    let chunk = body.next().await.expect("open").expect("a chunk");
                    buffer.extend_from_slice(&chunk);
                    // Count complete messages ("\n\n"-terminated blocks
                    // that start with an id), then drop them at once.
                    let mut start = 0;
                    while let Some(end) = buffer[start..].windows(2).position(|w| w == b"\n\n") {
                        if buffer[start..].starts_with(b"id:") {
                            received += 1;
                        }
                        start += end + 2;
                    }
                    buffer.drain(..start);
                }
                (received, Instant::now())
            })
        })
        .collect();
    drop(ready_tx);
    for _ in 0..SUBSCRIBERS {
        ready_rx.recv().await.expect("every subscriber connects");
    }
    // Every subscription answered, so each read the head for `after=now`
    // before the first append.
    let url = format!("{base}/api/streams/fanout/events");
    let body = serde_json::to_vec(&json!({
        "events": (0..100).map(|i| json!({"type": "fanout.tick", "data": {"i": i}})).collect::<Vec<_>>()
    }))
    .expect("a body");
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Appends are not awaited in turn: a slow one does not lower the rate
    // offered.
    let mut appends = Vec::with_capacity(ticks as usize);
    for _ in 0..ticks {
        interval.tick().await;
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        appends.push(tokio::spawn(async move {
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("append");
            assert_eq!(response.status(), 201);
            let _ = response.bytes().await;
        }));
    }
    for append in appends {
        append.await.expect("an append");
    }
    let published = Instant::now();
    let publish_secs = started.elapsed().as_secs_f64();
    let mut slowest = published;
    let mut all = 0u64;
    for s in subscribers {
        let (received, done) = s.await.expect("a subscriber");
        all += received;
        slowest = slowest.max(done);
    }
    let delivery_secs = (slowest - started).as_secs_f64();
    println!(
        "fan-out: {SUBSCRIBERS} subscribers x {total} events published at {:.0} events/s: each received all {total}; {:.0} events/s per subscriber, {:.0} messages/s in all; the last event reached the slowest {:.0} ms after the last append",
        total as f64 / publish_secs,
        total as f64 / delivery_secs,
        all as f64 / delivery_secs,
        (slowest - published).as_secs_f64() * 1000.0,
    );
}
