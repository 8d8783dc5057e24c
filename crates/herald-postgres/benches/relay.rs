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

mod history;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::TopicPattern;
use herald::relay::Relay;
use herald::transport::{ConsumerSpec, MemoryTransport, Transport};
use herald_postgres::PgStore;

use crate::history::{arg, connect, write_history};

/// Events in the history the relay forwards.
const EVENTS: u64 = 100_000;

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
