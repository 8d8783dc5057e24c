//! Durable delivery from PostgreSQL: a bench program that prints its
//! figures.
//!
//! - **throughput**: `EVENTS` events of about 200 bytes are appended across
//!   `STREAMS` streams into a fresh schema; then, for each batch size and
//!   concurrency, a new durable subscriber (a bus on the `PgStore`, a no-op
//!   sync handler, a checkpoint committed per batch) is started from
//!   checkpoint 0 and timed until its saved checkpoint reaches the head.
//! - **parts**: the store calls one batch of the runner makes, timed on their
//!   own over the same log: the head, the read of a batch (with the topic
//!   filter and without), and the checkpoint save.
//! - **latency**: events are published through the bus one at a time at a
//!   light rate, with a durable subscriber woken by LISTEN/NOTIFY; the time
//!   from the start of the `publish` call to the handler's entry is recorded
//!   for each, and its percentiles printed.
//!
//! Run with `cargo bench -p herald-postgres --bench durable`; arguments
//! (after `--`): `throughput`, `parts` or `latency` run only those parts;
//! `--events N` changes the history's size, `--rate N` the published events
//! per second and `--seconds N` how long they are published.
//!
//! Needs the database of `HERALD_TEST_POSTGRES_URL` (default: the local test
//! database); works in a schema of its own, dropped at the end.

mod history;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use herald::store::{CheckpointStore, EventStore, ReadAll};
use herald::{
    Bus, Context, DeliveryMode, EventId, HandlerResult, NewEvent, RecordedEvent, Subscriber,
    TopicPattern,
};
use herald_postgres::PgStore;
use tokio::sync::Notify;

use crate::history::{arg, connect, payload, write_history};

/// Events in the history the throughput runs deliver.
const EVENTS: u64 = 100_000;
/// Whether the part `name` is to run: all run when none is named.
fn wanted(name: &str) -> bool {
    let parts = ["throughput", "parts", "latency"];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let named: Vec<&String> = args
        .iter()
        .filter(|a| parts.contains(&a.as_str()))
        .collect();
    named.is_empty() || named.iter().any(|a| *a == name)
}

fn noop(_event: &RecordedEvent, _ctx: &Context) -> HandlerResult {
    Ok(())
}

/// One durable subscriber from checkpoint 0 to the head; returns the time
/// and the events it handled.
async fn deliver_all(
    store: &Arc<PgStore>,
    name: &str,
    topic: &str,
    batch: usize,
    concurrency: usize,
    head: u64,
) -> (Duration, u64) {
    let bus = Bus::builder().store(Arc::clone(store)).build();
    let start = Instant::now();
    bus.subscribe(
        Subscriber::new_sync(name, noop)
            .topic(topic)
            .mode(DeliveryMode::Durable)
            .concurrency(concurrency)
            .batch_size(batch),
    )
    .expect("subscribe");
    // The runner saves its checkpoint after each batch: look at it every
    // millisecond (a bench, not a test; the wait adds at most that).
    while bus.subscriber(name).and_then(|s| s.checkpoint) != Some(head) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    let handled = bus.subscriber(name).map_or(0, |s| s.handled);
    bus.shutdown().await;
    (elapsed, handled)
}

async fn throughput(store: &Arc<PgStore>, head: u64, events: u64) {
    println!();
    println!("throughput: durable subscriber, no-op sync handler, checkpoint saved per batch");
    println!(
        "{:<14} {:>6} {:>5} {:>10} {:>14}",
        "topic", "batch", "conc", "seconds", "events/s"
    );
    let mut run = 0;
    for (topic, batch, concurrency) in [
        ("order.*", 500, 1),
        ("order.*", 1000, 1),
        ("order.*", 5000, 1),
        ("order.*", 1000, 4),
        ("order.*", 5000, 4),
        ("order.created", 1000, 1),
        ("#", 1000, 1),
    ] {
        for _ in 0..2 {
            run += 1;
            let name = format!("bench-{run}");
            let (elapsed, handled) =
                deliver_all(store, &name, topic, batch, concurrency, head).await;
            assert_eq!(handled, events, "the subscriber handled every event");
            println!(
                "{topic:<14} {batch:>6} {concurrency:>5} {:>10.3} {:>14.0}",
                elapsed.as_secs_f64(),
                events as f64 / elapsed.as_secs_f64()
            );
        }
    }
}

/// The store calls of the runner's loop, each timed over the whole log.
async fn parts(store: &PgStore, head: u64) {
    println!();
    println!("parts: what one runner batch asks of the store, over the whole log");
    let topic = TopicPattern::parse("order.*").expect("a pattern");
    for batch in [500usize, 1000, 5000] {
        let batches = head.div_ceil(batch as u64);
        let start = Instant::now();
        for _ in 0..batches {
            store.head().await.expect("head");
        }
        let heads = start.elapsed();

        let mut timings = Vec::new();
        for filtered in [true, false] {
            let start = Instant::now();
            let mut after = 0;
            let mut read = 0;
            while after < head {
                let mut query = ReadAll::after(after).limit(batch).batch_size(batch);
                if filtered {
                    query = query.topic(topic.clone());
                }
                let events: Vec<RecordedEvent> =
                    store.read_all(query).try_collect().await.expect("read");
                read += events.len() as u64;
                after = events
                    .last()
                    .and_then(RecordedEvent::position)
                    .unwrap_or(head);
            }
            assert_eq!(read, head);
            timings.push(start.elapsed());
        }

        let start = Instant::now();
        for n in 0..batches {
            CheckpointStore::save(store, "bench-parts", n)
                .await
                .expect("save");
        }
        let saves = start.elapsed();
        let rate = |d: Duration| head as f64 / d.as_secs_f64();
        println!(
            "batch {batch:>5}: {batches:>4} heads {:>7.3} s ({:>6.0} µs each); \
             reads with filter {:>7.3} s ({:>7.0} events/s), without {:>7.3} s ({:>7.0} events/s); \
             {batches:>4} checkpoint saves {:>7.3} s ({:>6.0} µs each)",
            heads.as_secs_f64(),
            heads.as_secs_f64() * 1e6 / batches as f64,
            timings[0].as_secs_f64(),
            rate(timings[0]),
            timings[1].as_secs_f64(),
            rate(timings[1]),
            saves.as_secs_f64(),
            saves.as_secs_f64() * 1e6 / batches as f64,
        );
    }
}

/// The value at quantile `q` of sorted `values`.
fn quantile(values: &[Duration], q: f64) -> Duration {
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[at.min(values.len() - 1)]
}

async fn latency(store: &Arc<PgStore>, rate: u64, seconds: u64) {
    println!();
    println!(
        "latency: publish call start to handler entry, durable subscriber woken by LISTEN/NOTIFY, \
         {rate} events/s for {seconds} s, one publish at a time"
    );
    // Handler entries by event id; the publisher keeps when each publish
    // started and returned.
    let entered: Arc<Mutex<HashMap<EventId, Instant>>> = Arc::default();
    let arrived = Arc::new(Notify::new());
    let bus = Bus::builder().store(Arc::clone(store)).build();
    let (seen, notify) = (Arc::clone(&entered), Arc::clone(&arrived));
    bus.subscribe(
        Subscriber::new_sync(
            "bench-latency",
            move |e: &RecordedEvent, _: &Context| -> HandlerResult {
                let now = Instant::now();
                seen.lock().unwrap().entry(e.id()).or_insert(now);
                notify.notify_one();
                Ok(())
            },
        )
        .topic("latency.*")
        .mode(DeliveryMode::Durable)
        .start_from(herald::StartFrom::Now),
    )
    .expect("subscribe");
    // Let the subscriber load its checkpoint and reach the head first.
    let head = store.head().await.expect("head");
    while bus.subscriber("bench-latency").and_then(|s| s.checkpoint) < Some(head) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let data = payload();
    let mut published = Vec::with_capacity(total as usize);
    for _ in 0..total {
        tick.tick().await;
        let id = EventId::new();
        let start = Instant::now();
        bus.publish_new(NewEvent::new("latency.measured", data.clone()).with_id(id))
            .await
            .expect("publish");
        published.push((id, start, Instant::now()));
    }
    let all = async {
        loop {
            let waiting = arrived.notified();
            if entered.lock().unwrap().len() as u64 >= total {
                return;
            }
            waiting.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("every published event reached the handler");
    bus.shutdown().await;

    let entered = entered.lock().unwrap().clone();
    let (mut values, mut publish_times, mut after_ack): (Vec<_>, Vec<_>, Vec<_>) = published
        .iter()
        .map(|(id, start, returned)| {
            let entry = entered[id];
            (
                entry - *start,
                *returned - *start,
                entry.saturating_duration_since(*returned),
            )
        })
        .collect();
    values.sort();
    publish_times.sort();
    after_ack.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "publish to handler ({} events): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        values.len(),
        ms(quantile(&values, 0.5)),
        ms(quantile(&values, 0.9)),
        ms(quantile(&values, 0.99)),
        ms(*values.last().unwrap()),
    );
    println!(
        "the publish call alone (the append's commit): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(quantile(&publish_times, 0.5)),
        ms(quantile(&publish_times, 0.99)),
        ms(*publish_times.last().unwrap()),
    );
    println!(
        "the publish call's return to handler entry (0 when the handler came first): \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(quantile(&after_ack, 0.5)),
        ms(quantile(&after_ack, 0.99)),
        ms(*after_ack.last().unwrap()),
    );
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
        if wanted("throughput") || wanted("parts") {
            let head = write_history(&store, events).await;
            if wanted("throughput") {
                throughput(&store, head, events).await;
            }
            if wanted("parts") {
                parts(&store, head).await;
            }
        }
        if wanted("latency") {
            latency(
                &store,
                arg("rate").unwrap_or(300),
                arg("seconds").unwrap_or(10),
            )
            .await;
        }
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(store.pool())
            .await
            .expect("drop the bench schema");
    });
}
