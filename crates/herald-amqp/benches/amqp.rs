//! Publish with confirms and consume to a no-op handler, 100,000 events of
//! about 200 bytes: raw lapin against Herald's RabbitMQ transport, in the
//! same run, on the broker of `HERALD_AMQP_URL`.
//!
//! `cargo bench -p herald-amqp --bench amqp` (`HERALD_BENCH_EVENTS`,
//! `HERALD_BENCH_ROUNDS` change the size; `HERALD_BENCH_ONLY=raw` or
//! `herald` runs one side, to profile it or measure its CPU time).
//!
//! Both sides do the same broker work: persistent messages to a durable
//! topic exchange bound to one durable queue, published in batches of
//! `BATCH` (every message sent, then every confirm awaited), consumed on
//! another connection with a prefetch of `PREFETCH`, each message acked
//! after its handler ran. The clock runs from the first publish to the
//! last message handled, publishing and consuming at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::transport::Transport;
use herald::{
    Bus, DeliveryMode, EventId, EventType, Metadata, Payload, RecordedEvent, RecordedParts,
    Subscriber, handler_fn,
};
use herald_amqp::{AmqpConfig, AmqpTransport, DEFAULT_URL};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;
use tokio::sync::Notify;

const BATCH: usize = 1_000;
const PREFETCH: u16 = 256;

fn url() -> String {
    std::env::var("HERALD_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events(n: usize) -> Vec<RecordedEvent> {
    (0..n)
        .map(|i| {
            RecordedEvent::from_parts(RecordedParts {
                id: EventId::new(),
                event_type: EventType::new("order.created").unwrap(),
                stream: Some(format!("order-{}", i % 1000).into()),
                version: Some(i as u64 / 1000),
                position: Some(i as u64 + 1),
                recorded_at: chrono::Utc::now(),
                data: Payload::from(json!({
                    "order_id": i,
                    "customer": "customer-4711",
                    "total_cents": 12_345,
                    "note": "x".repeat(120),
                })),
                metadata: Metadata::default(),
                origin: None,
            })
        })
        .collect()
}

async fn connect(name: &str) -> Connection {
    Connection::connect(
        &url(),
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
    .unwrap_or_else(|e| panic!("RabbitMQ is not reachable (set HERALD_AMQP_URL): {e}"))
}

/// Raw lapin: the same topology, publish pipelining and acks, nothing
/// else. Returns (events/s end to end, events/s of publishing alone).
async fn raw(events: &[RecordedEvent], tag: &str) -> (f64, f64) {
    let n = events.len();
    let exchange = format!("bench.{tag}.raw.events");
    let queue = format!("bench.{tag}.raw.q");
    let bodies: Vec<Vec<u8>> = events
        .iter()
        .map(|e| e.data().as_bytes().to_vec())
        .collect();

    let consumer_conn = connect("herald-bench-raw-consumer").await;
    let setup = consumer_conn.create_channel().await.unwrap();
    setup
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    setup
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "order.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let channel = consumer_conn.create_channel().await.unwrap();
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumed = tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            let delivery = consumer.next().await.expect("open").expect("delivery");
            std::hint::black_box(&delivery.data);
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            seen += 1;
        }
    });

    let publisher_conn = connect("herald-bench-raw-publisher").await;
    let publisher = publisher_conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    for (batch, bodies) in events.chunks(BATCH).zip(bodies.chunks(BATCH)) {
        let mut confirms = Vec::with_capacity(batch.len());
        for (event, body) in batch.iter().zip(bodies) {
            let props = BasicProperties::default()
                .with_message_id(event.id().to_string().into())
                .with_type(event.event_type().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            confirms.push(
                publisher
                    .basic_publish(
                        exchange.as_str().into(),
                        event.event_type().into(),
                        BasicPublishOptions::default(),
                        body,
                        props,
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }
    let published = started.elapsed();
    consumed.await.unwrap();
    let total = started.elapsed();

    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    setup
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let _ = publisher_conn.close(200, "done".into()).await;
    let _ = consumer_conn.close(200, "done".into()).await;
    (rate(n, total), rate(n, published))
}

/// Herald: `AmqpTransport::publish` in batches, a broker subscriber on a
/// bus with a no-op handler.
async fn herald(events: &[RecordedEvent], tag: &str) -> (f64, f64) {
    let n = events.len();
    let config = || {
        AmqpConfig::new(url())
            .prefix(format!("bench.{tag}.herald"))
            .queue_expiry(Duration::from_secs(600))
    };
    let consumer = AmqpTransport::connect(config().connection_name("herald-bench-consumer"))
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable (set HERALD_AMQP_URL): {e}"));
    let bus = Bus::builder().transport(Arc::new(consumer.clone())).build();
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let handler = {
        let (seen, done) = (Arc::clone(&seen), Arc::clone(&done));
        handler_fn(move |event: RecordedEvent, _ctx| {
            let (seen, done) = (Arc::clone(&seen), Arc::clone(&done));
            async move {
                std::hint::black_box(event.data());
                if seen.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    done.notify_one();
                }
                Ok(())
            }
        })
    };
    bus.subscribe(
        Subscriber::new("noop", handler)
            .topic("order.*")
            .mode(DeliveryMode::Broker)
            .prefetch(usize::from(PREFETCH)),
    )
    .unwrap();
    bus.ready("noop").await.unwrap();

    let publisher = AmqpTransport::connect(config().connection_name("herald-bench-publisher"))
        .await
        .unwrap();
    let started = Instant::now();
    for batch in events.chunks(BATCH) {
        publisher.publish(batch).await.unwrap();
    }
    let published = started.elapsed();
    done.notified().await;
    let total = started.elapsed();
    assert_eq!(seen.load(Ordering::Relaxed), n);

    bus.shutdown().await;
    let cleanup = connect("herald-bench-cleanup").await;
    let channel = cleanup.create_channel().await.unwrap();
    for queue in [
        consumer.queue("noop").unwrap(),
        consumer.dead_letter_queue().to_owned(),
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(consumer.exchange().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = cleanup.close(200, "done".into()).await;
    let _ = publisher.close().await;
    let _ = consumer.close().await;
    (rate(n, total), rate(n, published))
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let n = env_or("HERALD_BENCH_EVENTS", 100_000);
    let rounds = env_or("HERALD_BENCH_ROUNDS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let events = events(n);
        let size = events.iter().map(|e| e.data().len()).sum::<usize>() / n;
        let run = EventId::new().to_string().replace('-', "");
        let run = &run[run.len() - 8..];
        println!("{n} events of {size} bytes of JSON, batches of {BATCH}, prefetch {PREFETCH}, {rounds} rounds");
        let (mut raw_total, mut raw_pub, mut her_total, mut her_pub) = (vec![], vec![], vec![], vec![]);
        for round in 0..rounds {
            // Alternating, so that both see the same broker and machine load.
            let only = std::env::var("HERALD_BENCH_ONLY").unwrap_or_default();
            let (t, p) = if only == "herald" { (f64::NAN, f64::NAN) } else { raw(&events, &format!("{run}.{round}")).await };
            println!("round {round}: raw lapin  {t:>9.0} events/s end to end, {p:>9.0} events/s published");
            raw_total.push(t);
            raw_pub.push(p);
            let (t, p) = if only == "raw" { (f64::NAN, f64::NAN) } else { herald(&events, &format!("{run}.{round}")).await };
            println!("round {round}: herald     {t:>9.0} events/s end to end, {p:>9.0} events/s published");
            her_total.push(t);
            her_pub.push(p);
        }
        // Each round's pair ran back to back under the same machine load;
        // the median of their ratios is steadier than the ratio of medians
        // when other work shares the two cores.
        let paired = median(
            raw_total
                .iter()
                .zip(&her_total)
                .map(|(r, h)| (r / h - 1.0) * 100.0)
                .collect(),
        );
        let (rt_, rp, ht, hp) = (
            median(raw_total),
            median(raw_pub),
            median(her_total),
            median(her_pub),
        );
        println!();
        println!("median of {rounds} rounds:");
        println!("raw lapin: {rt_:.0} events/s end to end, {rp:.0} events/s published");
        println!("herald:    {ht:.0} events/s end to end, {hp:.0} events/s published");
        println!(
            "herald overhead: {:.1}% end to end, {:.1}% publishing (target: at most 20%)",
            (rt_ / ht - 1.0) * 100.0,
            (rp / hp - 1.0) * 100.0
        );
        println!("herald overhead, median of the rounds' pairs: {paired:.1}% end to end");
    });
}
