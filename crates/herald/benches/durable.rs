//! Durable delivery from the memory store to a no-op handler.
//!
//! The history is appended first (batches of 100), then a durable
//! subscriber is started and timed until its checkpoint reaches the head:
//! reading the log in batches, routing, delivering and saving checkpoints.
//!
//! Run with `cargo bench -p herald --bench durable`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use herald::store::{EventStore, ExpectedVersion, MemoryStore, StreamName};
use herald::{
    Bus, Context, DeliveryMode, HandlerResult, NewEvent, Payload, RecordedEvent, Subscriber,
};
use tokio::runtime::Builder;

/// Events in the history each run delivers.
const EVENTS: u64 = 20_000;

fn noop(_event: &RecordedEvent, _ctx: &Context) -> HandlerResult {
    Ok(())
}

fn payload() -> Payload {
    Payload::from_json(
        r#"{"order_id":4200042,"customer_id":77001,"customer_email":"ada@example.com","currency":"EUR","total_cents":12999,"items":[{"sku":"BOOK-1","quantity":1,"unit_cents":9999},{"sku":"PEN-2","quantity":3,"unit_cents":1000}]}"#,
    )
    .expect("valid json")
}

fn durable_delivery(c: &mut Criterion) {
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let store = Arc::new(MemoryStore::new());
    let data = payload();
    rt.block_on(async {
        for batch in 0..EVENTS / 100 {
            let stream = StreamName::new(format!("order-{}", batch % 50)).expect("a valid name");
            let events = (0..100)
                .map(|_| NewEvent::new("order.created", data.clone()))
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("append");
        }
    });
    let head = rt.block_on(store.head()).expect("head");

    let mut group = c.benchmark_group("durable");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for (name, concurrency) in [("memory_noop_c1", 1), ("memory_noop_c4", 4)] {
        let mut run = 0u64;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    run += 1;
                    let bus = Bus::builder().store(Arc::clone(&store)).build();
                    let subscriber = format!("{name}-{run}");
                    let _guard = rt.enter();
                    let start = Instant::now();
                    bus.subscribe(
                        Subscriber::new_sync(subscriber.clone(), noop)
                            .topic("order.*")
                            .mode(DeliveryMode::Durable)
                            .concurrency(concurrency)
                            .batch_size(500),
                    )
                    .expect("subscribe");
                    rt.block_on(async {
                        while bus.subscriber(&subscriber).and_then(|s| s.checkpoint) != Some(head) {
                            tokio::task::yield_now().await;
                        }
                    });
                    total += start.elapsed();
                    rt.block_on(bus.shutdown());
                }
                total
            });
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    durable_delivery(&mut c);
    c.final_summary();
}
