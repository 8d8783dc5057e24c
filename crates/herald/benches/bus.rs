//! Publish throughput of the in-process bus, beside raw tokio primitives.
//!
//! Every figure is in events per second (`Throughput::Elements`).
//! Publishes are batched: one timed run awaits `iters × BATCH` publishes
//! inside a single `block_on`, so the runtime's entry cost is not measured
//! per event. See `BENCHMARKS.md` at the workspace root for results.
//!
//! Run with `cargo bench -p herald --bench bus`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use herald::{
    Bus, Context, DeliveryMode, Event, Handler, HandlerResult, Payload, RecordedEvent, Subscriber,
    handler_fn,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::{Notify, broadcast, mpsc};

/// Events per criterion iteration.
const BATCH: u64 = 1000;

/// The event type every benchmark publishes.
const EVENT_TYPE: &str = "order.created";

/// A handler that does nothing.
struct Noop;

impl Handler for Noop {
    async fn handle(&self, _e: &RecordedEvent, _c: &Context) -> HandlerResult {
        Ok(())
    }
}

/// A handler that counts events and wakes the publisher once `target` is
/// reached.
struct Counting {
    seen: Arc<AtomicU64>,
    target: Arc<AtomicU64>,
    done: Arc<Notify>,
}

impl Handler for Counting {
    async fn handle(&self, _e: &RecordedEvent, _c: &Context) -> HandlerResult {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.target.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "order.created")]
struct OrderCreated {
    order_id: u64,
    customer_id: u64,
    customer_email: String,
    currency: String,
    total_cents: u64,
    items: Vec<Item>,
}

#[derive(Serialize, Deserialize)]
struct Item {
    sku: String,
    quantity: u32,
    unit_cents: u64,
}

fn order() -> OrderCreated {
    OrderCreated {
        order_id: 4_200_042,
        customer_id: 77_001,
        customer_email: "ada@example.com".to_owned(),
        currency: "EUR".to_owned(),
        total_cents: 12_999,
        items: vec![
            Item {
                sku: "BOOK-1".to_owned(),
                quantity: 1,
                unit_cents: 9_999,
            },
            Item {
                sku: "PEN-2".to_owned(),
                quantity: 3,
                unit_cents: 1_000,
            },
        ],
    }
}

/// The prebuilt payload (about 200 bytes of JSON), serialized once.
fn payload() -> Payload {
    let payload = Payload::from_serialize(&order()).expect("the order serializes");
    assert!(
        (190..=230).contains(&payload.len()),
        "payload is {} bytes",
        payload.len()
    );
    payload
}

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a multi-thread runtime")
}

/// Times `iters × BATCH` inline publishes of the prebuilt payload.
fn time_publishes(rt: &Runtime, bus: &Bus, payload: &Payload, iters: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters * BATCH {
            let event = bus.publish(EVENT_TYPE, payload.clone()).await;
            black_box(event.expect("publish succeeds"));
        }
        start.elapsed()
    })
}

fn publish_inline(c: &mut Criterion) {
    let rt = current_thread();
    let payload = payload();
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(BATCH));

    let one = Bus::new();
    one.subscribe(Subscriber::new("noop", Noop).topic(EVENT_TYPE))
        .expect("subscribes");
    group.bench_function("inline_1_noop", |b| {
        b.iter_custom(|iters| time_publishes(&rt, &one, &payload, iters));
    });

    let closure = Bus::new();
    closure
        .subscribe(
            Subscriber::new("noop", handler_fn(|_event, _ctx| async { Ok(()) })).topic(EVENT_TYPE),
        )
        .expect("subscribes");
    group.bench_function("inline_1_closure", |b| {
        b.iter_custom(|iters| time_publishes(&rt, &closure, &payload, iters));
    });

    let many = ten_of_hundred(&rt, false);
    group.bench_function("inline_10_of_100", |b| {
        b.iter_custom(|iters| time_publishes(&rt, &many, &payload, iters));
    });

    // The same with sync handlers, which the bus calls directly.
    let sync_one = Bus::new();
    sync_one
        .subscribe(Subscriber::new_sync("noop", noop_sync).topic(EVENT_TYPE))
        .expect("subscribes");
    group.bench_function("inline_1_sync_noop", |b| {
        b.iter_custom(|iters| time_publishes(&rt, &sync_one, &payload, iters));
    });
    let sync_many = ten_of_hundred(&rt, true);
    group.bench_function("inline_10_of_100_sync", |b| {
        b.iter_custom(|iters| time_publishes(&rt, &sync_many, &payload, iters));
    });

    let event = order();
    group.bench_function("typed_inline_1_noop", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters * BATCH {
                    let recorded = one.publish_event(black_box(&event)).await;
                    black_box(recorded.expect("publish succeeds"));
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// A sync handler that does nothing.
fn noop_sync(_event: &RecordedEvent, _ctx: &Context) -> HandlerResult {
    Ok(())
}

/// A subscriber doing nothing, async or sync.
fn noop_subscriber(name: String, sync: bool) -> Subscriber {
    if sync {
        Subscriber::new_sync(name, noop_sync)
    } else {
        Subscriber::new(name, Noop)
    }
}

/// A bus with 100 inline no-op subscribers, 10 of which match
/// `order.created`.
fn ten_of_hundred(rt: &Runtime, sync: bool) -> Bus {
    const MATCHING: [&str; 10] = [
        "order.created",
        "order.*",
        "order.#",
        "#",
        "*.created",
        "*.*",
        "#.created",
        "order.created.#",
        "*.#",
        "#.order.created",
    ];
    let bus = Bus::new();
    let mut subscribed = 0;
    for (i, pattern) in MATCHING.iter().enumerate() {
        // Every tenth subscriber matches, so matches are spread over the list.
        for j in 0..9 {
            let svc = i * 9 + j;
            let pattern_of_svc = match svc % 3 {
                0 => format!("svc{svc}.thing"),
                1 => format!("svc{svc}.*"),
                _ => format!("svc{svc}.#"),
            };
            bus.subscribe(noop_subscriber(format!("other-{svc}"), sync).topic(pattern_of_svc))
                .expect("subscribes");
            subscribed += 1;
        }
        bus.subscribe(noop_subscriber(format!("match-{i}"), sync).topic(*pattern))
            .expect("subscribes");
        subscribed += 1;
    }
    assert_eq!(subscribed, 100);
    // One publish checks the split, and warms the bus's route cache: from
    // then on, the 90 others cost nothing per publish.
    rt.block_on(bus.publish(EVENT_TYPE, payload()))
        .expect("publish succeeds");
    for info in bus.subscribers() {
        let expected = u64::from(info.name.starts_with("match-"));
        assert_eq!(info.handled, expected, "{}", info.name);
    }
    bus
}

/// A bus with one async counting subscriber, and what the benchmark needs
/// to wait for it.
struct AsyncBus {
    bus: Bus,
    seen: Arc<AtomicU64>,
    target: Arc<AtomicU64>,
    done: Arc<Notify>,
}

impl AsyncBus {
    fn new(rt: &Runtime, capacity: usize) -> Self {
        let seen = Arc::new(AtomicU64::new(0));
        let target = Arc::new(AtomicU64::new(u64::MAX));
        let done = Arc::new(Notify::new());
        let bus = Bus::new();
        let handler = Counting {
            seen: Arc::clone(&seen),
            target: Arc::clone(&target),
            done: Arc::clone(&done),
        };
        let sub = Subscriber::new("count", handler)
            .topic(EVENT_TYPE)
            .mode(DeliveryMode::Async)
            .queue_capacity(capacity);
        let _guard = rt.enter();
        bus.subscribe(sub).expect("subscribes");
        Self {
            bus,
            seen,
            target,
            done,
        }
    }

    /// Publishes `n` events from a task on the runtime, then waits until
    /// the subscriber handled them all. Returns the elapsed time and the
    /// most events accepted but not yet handled that a publish saw on
    /// return, when `track` is set.
    fn run(&self, rt: &Runtime, payload: &Payload, n: u64, track: bool) -> (Duration, u64) {
        let bus = self.bus.clone();
        let payload = payload.clone();
        let seen = Arc::clone(&self.seen);
        let target = Arc::clone(&self.target);
        let done = Arc::clone(&self.done);
        let task = async move {
            let base = seen.load(Ordering::Relaxed);
            target.store(base + n, Ordering::Relaxed);
            let mut in_flight_max = 0;
            let start = Instant::now();
            for i in 1..=n {
                let event = bus.publish(EVENT_TYPE, payload.clone()).await;
                black_box(event.expect("publish succeeds"));
                if track {
                    let handled = seen.load(Ordering::Relaxed) - base;
                    in_flight_max = in_flight_max.max(i - handled);
                }
            }
            while seen.load(Ordering::Relaxed) < base + n {
                done.notified().await;
            }
            (start.elapsed(), in_flight_max)
        };
        rt.block_on(rt.spawn(task))
            .expect("the publisher task ends")
    }

    /// Shows that memory stays bounded by the queue: prints the most events
    /// a publish had handed over that the subscriber had not yet handled,
    /// over an untimed run.
    fn report_in_flight(&self, rt: &Runtime, payload: &Payload, capacity: usize) {
        const N: u64 = 200_000;
        let (_, in_flight) = self.run(rt, payload, N, true);
        println!(
            "async subscriber, queue capacity {capacity}: at most {in_flight} events \
             published but not yet handled, over {N} publishes"
        );
    }
}

fn publish_async(c: &mut Criterion) {
    let rt = multi_thread();
    let payload = payload();

    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(BATCH));
    // The capacity is set explicitly, so that the figures keep their meaning
    // when the bus's default changes.
    for (name, capacity) in [
        ("async_1_e2e", 1024),
        ("async_1_e2e_q256", 256),
        ("async_1_e2e_q64", 64),
    ] {
        let bench = AsyncBus::new(&rt, capacity);
        let mut bound_checked = false;
        group.bench_function(name, |b| {
            if !bound_checked {
                bench.report_in_flight(&rt, &payload, capacity);
                bound_checked = true;
            }
            b.iter_custom(|iters| bench.run(&rt, &payload, iters * BATCH, false).0);
        });
        rt.block_on(bench.bus.shutdown());
    }
    group.finish();
}

fn baselines(c: &mut Criterion) {
    let payload = payload();
    let mut group = c.benchmark_group("baseline");
    group.throughput(Throughput::Elements(BATCH));

    // One bounded mpsc hop, as the async subscriber's queue, end to end.
    let rt = multi_thread();
    group.bench_function("tokio_mpsc", |b| {
        b.iter_custom(|iters| {
            let n = iters * BATCH;
            let payload = payload.clone();
            let task = async move {
                let (tx, mut rx) = mpsc::channel::<Payload>(1024);
                let consumer = tokio::spawn(async move {
                    for _ in 0..n {
                        black_box(rx.recv().await.expect("a payload"));
                    }
                });
                let start = Instant::now();
                for _ in 0..n {
                    tx.send(payload.clone()).await.expect("the consumer runs");
                }
                consumer.await.expect("the consumer ends");
                start.elapsed()
            };
            rt.block_on(rt.spawn(task)).expect("the producer task ends")
        });
    });

    // A broadcast send received at once by its one receiver, as an inline
    // delivery to one subscriber.
    let rt = current_thread();
    let (tx, mut rx) = broadcast::channel::<Payload>(1024);
    group.bench_function("broadcast", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters * BATCH {
                    tx.send(payload.clone()).expect("a receiver exists");
                    black_box(rx.recv().await.expect("a payload"));
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to, written out
    // so that no undocumented public function is generated.
    let mut c = config().configure_from_args();
    publish_inline(&mut c);
    publish_async(&mut c);
    baselines(&mut c);
    c.final_summary();
}
