//! Publish with acks and consume to a no-op handler, 100,000 events of
//! about 200 bytes: raw async-nats JetStream against Herald's transport and
//! a broker subscriber on a bus, in the same run.
//!
//! `cargo bench -p herald-nats --bench nats` (`HERALD_NATS_URL` for another
//! server; `HERALD_BENCH_EVENTS`, `HERALD_BENCH_ROUNDS` change the size;
//! `HERALD_BENCH_ONLY` takes a comma-separated list of cases among `raw`,
//! `raw-headers`, `raw-body` and `herald`, to profile one, or to measure
//! `raw-body`, which the default run leaves out).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use herald::transport::Transport;
use herald::{
    Bus, DeliveryMode, EventId, EventType, Metadata, Payload, RecordedEvent, RecordedParts,
    Subscriber, handler_fn,
};
use herald_nats::{NatsConfig, NatsTransport};
use serde_json::json;
use tokio::sync::Notify;

const BATCH: usize = 1_000;
const PREFETCH: usize = 1_000;

fn url() -> String {
    std::env::var("HERALD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn events_count() -> usize {
    std::env::var("HERALD_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// A payload of about 200 bytes.
fn payload(n: usize) -> serde_json::Value {
    json!({
        "order_id": n,
        "customer": "c-0000042",
        "lines": [{"sku": "sku-123456", "qty": 2, "price_cents": 1999}],
        "note": "x".repeat(100),
    })
}

fn event(n: usize) -> RecordedEvent {
    let id = EventId::new();
    RecordedEvent::from_parts(RecordedParts {
        id,
        event_type: EventType::new("order.created").unwrap(),
        stream: Some(format!("order-{}", n % 64).into()),
        version: Some(n as u64),
        position: Some(n as u64 + 1),
        recorded_at: chrono::Utc::now(),
        data: Payload::from(payload(n)),
        // The correlation id the bus and the stores give an event that
        // has none: its own id.
        metadata: Metadata {
            correlation_id: Some(*id.as_uuid()),
            ..Metadata::default()
        },
        origin: None,
    })
}

/// What a raw message carries besides its `Nats-Msg-Id`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The JSON payload alone.
    Bare,
    /// The headers Herald sends (`Nats-Msg-Id` and the `Herald` envelope).
    HeraldHeaders,
    /// Herald's envelope line as the payload's first line, before the JSON:
    /// the alternative to a header, measured on request (`raw-body`).
    EnvelopeInBody,
}

/// Raw async-nats: the same stream layout, `Nats-Msg-Id` per message, the
/// same pipelining (a batch sent, then its acks awaited), a durable pull
/// consumer acking each message. With [`Layout::HeraldHeaders`], each
/// message carries the headers Herald sends instead (built before the clock
/// starts), to tell the cost of the headers from the cost of Herald's code.
async fn raw(n: usize, layout: Layout) -> f64 {
    let client = async_nats::connect(url()).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let name = format!("BENCHRAW{}", std::process::id());
    let subject_root = name.to_ascii_lowercase();
    let _ = js.delete_stream(&name).await;
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject_root}.ev.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            "bench",
            consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: PREFETCH as i64,
                ack_wait: Duration::from_secs(30),
                filter_subject: format!("{subject_root}.ev.order.created"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let events: Vec<RecordedEvent> = (0..n).map(event).collect();
    let payloads: Vec<bytes::Bytes> = events
        .iter()
        .map(|e| match layout {
            Layout::EnvelopeInBody => {
                let envelope = herald_nats::event_headers(e);
                let line = envelope.get(herald_nats::headers::ENVELOPE).unwrap();
                let mut body = line.as_str().as_bytes().to_vec();
                body.push(b'\n');
                body.extend_from_slice(e.data().as_bytes());
                body.into()
            }
            _ => e.data().to_bytes(),
        })
        .collect();
    let ids: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
    let headers: Vec<Option<async_nats::HeaderMap>> = events
        .iter()
        .map(|e| (layout == Layout::HeraldHeaders).then(|| herald_nats::event_headers(e)))
        .collect();
    let in_body = layout == Layout::EnvelopeInBody;

    let start = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(PREFETCH)
            .messages()
            .await
            .unwrap();
        let mut got = 0;
        while got < n {
            let message = messages.next().await.unwrap().unwrap();
            if in_body {
                // What a decoder would do first: split off the line.
                let at = message.payload.iter().position(|b| *b == b'\n').unwrap();
                std::hint::black_box((&message.payload[..at], message.payload.slice(at + 1..)));
            }
            message.ack().await.unwrap();
            got += 1;
        }
    });
    let subject = format!("{subject_root}.ev.order.created");
    for ((data, ids), headers) in payloads
        .chunks(BATCH)
        .zip(ids.chunks(BATCH))
        .zip(headers.chunks(BATCH))
    {
        let mut acks = Vec::with_capacity(BATCH);
        for ((data, id), headers) in data.iter().zip(ids).zip(headers) {
            let publish = jetstream::message::PublishMessage::build().payload(data.clone());
            let publish = match headers {
                Some(headers) => publish.headers(headers.clone()),
                None => publish.message_id(id),
            };
            acks.push(js.send_publish(subject.clone(), publish).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    consuming.await.unwrap();
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream(&name).await;
    rate
}

/// Herald: `NatsTransport::publish` in batches, a broker subscriber on a
/// bus with a no-op handler.
async fn herald(n: usize) -> f64 {
    let config = NatsConfig::new(url()).prefix(format!("benchherald{}", std::process::id()));
    let transport = NatsTransport::connect(config)
        .await
        .expect("connect to NATS");
    transport.delete_streams().await.unwrap();
    let transport = NatsTransport::connect(transport.config().clone())
        .await
        .unwrap();
    let events: Vec<RecordedEvent> = (0..n).map(event).collect();
    let bus = Bus::builder()
        .transport(Arc::new(transport.clone()))
        .build();
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let handler = {
        let (handled, done) = (Arc::clone(&handled), Arc::clone(&done));
        handler_fn(move |_event, _ctx| {
            let (handled, done) = (Arc::clone(&handled), Arc::clone(&done));
            async move {
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    done.notify_one();
                }
                Ok(())
            }
        })
    };
    bus.subscribe(
        Subscriber::new("bench", handler)
            .topic("order.created")
            .mode(DeliveryMode::Broker)
            .prefetch(PREFETCH),
    )
    .unwrap();
    bus.ready("bench").await.unwrap();

    let start = Instant::now();
    for batch in events.chunks(BATCH) {
        transport.publish(batch).await.unwrap();
    }
    done.notified().await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    bus.shutdown().await;
    transport.delete_streams().await.unwrap();
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` asks what is here; this bench has no tests.
        return;
    }
    let n = events_count();
    println!(
        "NATS JetStream: publish with acks and consume to a no-op handler, {n} events of ~200 bytes, batches of {BATCH}, prefetch {PREFETCH}"
    );
    let rounds: usize = std::env::var("HERALD_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    // Rounds alternate the three, so that load from elsewhere on the
    // machine falls on each alike; each round's ratio is taken, then the
    // median of those.
    let (mut raws, mut raws_h, mut heralds, mut ratios, mut ratios_h) =
        (vec![], vec![], vec![], vec![], vec![]);
    let only = std::env::var("HERALD_BENCH_ONLY").unwrap_or_default();
    let runs = |case: &str| {
        if only.is_empty() {
            case != "raw-body"
        } else {
            only.split(',').any(|c| c == case)
        }
    };
    let mut bodies = vec![];
    for round in 1..=rounds {
        let r = if runs("raw") {
            raw(n, Layout::Bare).await
        } else {
            f64::NAN
        };
        let rh = if runs("raw-headers") {
            raw(n, Layout::HeraldHeaders).await
        } else {
            f64::NAN
        };
        if runs("raw-body") {
            let rb = raw(n, Layout::EnvelopeInBody).await;
            println!("round {round}: raw with herald's envelope in the body {rb:>8.0} events/s");
            bodies.push(rb);
        }
        let h = if runs("herald") {
            herald(n).await
        } else {
            f64::NAN
        };
        println!(
            "round {round}: raw async-nats {r:>8.0} events/s | raw with herald's headers {rh:>8.0} events/s | herald {h:>8.0} events/s | overhead {:>5.1}% (vs same headers {:>5.1}%)",
            (r / h - 1.0) * 100.0,
            (rh / h - 1.0) * 100.0
        );
        raws.push(r);
        raws_h.push(rh);
        heralds.push(h);
        ratios.push(r / h);
        ratios_h.push(rh / h);
    }
    println!(
        "median: raw async-nats {:.0} events/s, raw with herald's headers {:.0} events/s, herald {:.0} events/s; herald overhead {:.1}% (median of rounds), {:.1}% against raw with the same headers",
        median(&mut raws),
        median(&mut raws_h),
        median(&mut heralds),
        (median(&mut ratios) - 1.0) * 100.0,
        (median(&mut ratios_h) - 1.0) * 100.0
    );
    if !bodies.is_empty() {
        println!(
            "median: raw with herald's envelope in the body {:.0} events/s",
            median(&mut bodies)
        );
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
