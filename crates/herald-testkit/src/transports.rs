//! The [`Transport`] conformance suite.
//!
//! Run it with [`transport_conformance!`](crate::transport_conformance) and a
//! [`TransportHarness`]. Each scenario works in a namespace of its own
//! (`TransportHarness::connect` puts every exchange, queue, stream and
//! consumer under it), so the scenarios run in parallel against one broker.
//!
//! The scenarios drive transports through the [`Bus`], as applications do:
//! [`DeliveryMode::Broker`] subscribers, `publish`, the dead-letter API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use herald::transport::Transport;
use herald::{Bus, DeliveryMode, RecordedEvent, Subscriber, async_trait, handler_fn};
use serde_json::json;
use tokio::sync::mpsc;

/// How long a scenario waits for what it expects before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Connects the suite to one broker.
#[async_trait]
pub trait TransportHarness: Send + Sync + 'static {
    /// A new connection to the broker with every name under `namespace`.
    /// Two calls with the same namespace are two processes of one
    /// application: they share consumer groups and dead letters.
    async fn connect(&self, namespace: &str) -> Arc<dyn Transport>;

    /// Drops the connections of `namespace` from the broker's side (or
    /// restarts the broker), and returns once the broker takes connections
    /// again.
    async fn disrupt(&self, namespace: &str);

    /// Whether one consumer receives each stream's events in publish order
    /// (when nothing is retried). A transport that does not promise it says
    /// so in its docs; the ordering scenario then checks only delivery.
    fn keeps_stream_order(&self) -> bool {
        true
    }
}

/// Turns the scenarios into one test each, for the harness made by
/// `$harness` (an `async fn() -> impl TransportHarness`).
#[macro_export]
macro_rules! transport_conformance {
    ($harness:path) => {
        $crate::__transport_scenarios!(
            $harness;
            publishes_and_consumes_events_with_every_field,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __transport_scenarios {
    ($harness:path; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::transports::$name($harness().await).await;
            }
        )*
    };
}

/// A namespace of the scenario's own.
pub fn namespace(scenario: &str) -> String {
    let id = herald::EventId::new().to_string().replace('-', "");
    format!("{scenario}-{}", &id[id.len() - 12..])
}

/// A bus on a new connection of `namespace`.
pub async fn bus<H: TransportHarness>(harness: &H, namespace: &str) -> Bus {
    Bus::builder()
        .transport(harness.connect(namespace).await)
        .build()
}

/// A handler that sends each event it gets to a channel.
pub fn forward(tx: mpsc::UnboundedSender<RecordedEvent>) -> impl herald::Handler + Clone + 'static {
    handler_fn(move |event: RecordedEvent, _ctx| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(event);
            Ok(())
        }
    })
}

/// Receives `n` events, or fails naming how many came.
pub async fn receive(
    rx: &mut mpsc::UnboundedReceiver<RecordedEvent>,
    n: usize,
) -> Vec<RecordedEvent> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => got.push(event),
            Ok(None) => panic!("the handler is gone after {} of {n} events", got.len()),
            Err(_) => panic!("received {} of {n} events within {PATIENCE:?}", got.len()),
        }
    }
    got
}

/// Subscribes `subscriber` in broker mode and waits until its group is
/// declared.
pub async fn subscribe(bus: &Bus, subscriber: Subscriber) {
    let name = subscriber.name().to_owned();
    bus.subscribe(subscriber.mode(DeliveryMode::Broker))
        .expect("subscribe");
    bus.ready(&name).await.expect("the consumer opens");
}

/// Events published through the broker arrive with their id, type, stream,
/// version, position, time, metadata and payload unchanged.
pub async fn publishes_and_consumes_events_with_every_field<H: TransportHarness>(harness: H) {
    let ns = namespace("fields");
    let consumer = bus(&harness, &ns).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribe(
        &consumer,
        Subscriber::new("fields", forward(tx)).topic("order.created"),
    )
    .await;

    let publisher = harness.connect(&ns).await;
    let mut sent = Vec::new();
    for n in 0..20u64 {
        let event = herald::RecordedEvent::from_parts(herald::RecordedParts {
            id: herald::EventId::new(),
            event_type: herald::EventType::new("order.created").unwrap(),
            stream: Some(format!("order-{n}").into()),
            version: Some(n),
            position: Some(1000 + n),
            recorded_at: chrono::Utc::now(),
            data: herald::Payload::from(json!({"order_id": n, "note": "naïve café ✓"})),
            metadata: herald::Metadata {
                correlation_id: Some(uuid_of(n)),
                causation_id: Some(uuid_of(n + 100)),
                headers: BTreeMap::from([("tenant".to_owned(), format!("t{n}"))]),
            },
            origin: None,
        });
        sent.push(event);
    }
    publisher.publish(&sent).await.expect("publish");
    let got = receive(&mut rx, sent.len()).await;
    let by_id: HashMap<_, _> = got.iter().map(|e| (e.id(), e)).collect();
    for event in &sent {
        let received = by_id
            .get(&event.id())
            .unwrap_or_else(|| panic!("event {} never arrived", event.id()));
        assert_eq!(received.event_type(), event.event_type());
        assert_eq!(received.stream(), event.stream());
        assert_eq!(received.version(), event.version());
        assert_eq!(received.position(), event.position());
        assert_eq!(
            received.recorded_at().timestamp_micros(),
            event.recorded_at().timestamp_micros()
        );
        assert_eq!(received.data().to_value(), event.data().to_value());
        assert_eq!(received.metadata(), event.metadata());
    }
    consumer.shutdown().await;
}

fn uuid_of(n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u128(u128::from(n) + 1)
}
