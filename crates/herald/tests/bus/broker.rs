//! Broker subscribers: what the bus does around a transport, on the
//! in-memory broker. (Every transport runs the shared conformance suite in
//! herald-testkit; these are the bus's own rules.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use herald::store::{EventStore, MemoryStore};
use herald::transport::{MemoryTransport, Transport};
use herald::{
    Bus, DeliveryMode, HandlerError, MemoryLedger, NewEvent, PublishError, RecordedEvent,
    SubscribeError, Subscriber, SubscriberState, handler_fn,
};
use serde_json::json;
use tokio::sync::mpsc;

fn forward(tx: mpsc::UnboundedSender<RecordedEvent>) -> impl herald::Handler {
    handler_fn(move |event: RecordedEvent, _ctx| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(event);
            Ok(())
        }
    })
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<RecordedEvent>) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("the sender is alive")
}

#[tokio::test]
async fn a_broker_subscriber_needs_a_transport_and_a_positive_prefetch() {
    let bus = Bus::new();
    let err = bus
        .subscribe(
            Subscriber::new("remote", handler_fn(|_, _| async { Ok(()) }))
                .topic("a.b")
                .mode(DeliveryMode::Broker),
        )
        .unwrap_err();
    assert!(
        matches!(err, SubscribeError::NoTransport(ref name) if name == "remote"),
        "{err}"
    );

    let bus = Bus::builder()
        .transport(Arc::new(MemoryTransport::new()))
        .build();
    let err = bus
        .subscribe(
            Subscriber::new("remote", handler_fn(|_, _| async { Ok(()) }))
                .topic("a.b")
                .mode(DeliveryMode::Broker)
                .prefetch(0),
        )
        .unwrap_err();
    assert!(err.to_string().contains("prefetch"), "{err}");
}

#[tokio::test]
async fn publish_fails_without_the_brokers_confirmation_and_no_local_subscriber_sees_it() {
    let broker = MemoryTransport::new();
    let bus = Bus::builder().transport(Arc::new(broker.clone())).build();
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe(Subscriber::new("local", forward(tx)).topic("order.*"))
        .unwrap();
    broker.close().await.unwrap();
    let err = bus.publish("order.created", json!({})).await.unwrap_err();
    assert!(matches!(err, PublishError::Transport(_)), "{err}");
    assert!(
        rx.try_recv().is_err(),
        "the local subscriber saw an unconfirmed event"
    );
}

#[tokio::test]
async fn a_bus_on_a_store_leaves_forwarding_to_the_relay() {
    // With a store, an event reaches the broker only through the relay, so
    // that it is there if and only if it was committed.
    let broker = MemoryTransport::new();
    let store = Arc::new(MemoryStore::new());
    let bus = Bus::builder()
        .store(Arc::clone(&store))
        .transport(Arc::new(broker.clone()))
        .build();
    bus.subscribe(
        Subscriber::new("remote", handler_fn(|_, _| async { Ok(()) }))
            .topic("order.*")
            .mode(DeliveryMode::Broker),
    )
    .unwrap();
    bus.ready("remote").await.unwrap();
    bus.publish("order.created", json!({})).await.unwrap();
    assert_eq!(broker.queued("remote"), 0);
    assert_eq!(store.head().await.unwrap(), 1);
    bus.shutdown().await;
}

#[tokio::test]
async fn a_skip_is_acknowledged_and_a_stop_gives_the_event_back_and_stops_the_subscriber() {
    let broker = MemoryTransport::new();
    let bus = Bus::builder().transport(Arc::new(broker.clone())).build();
    bus.subscribe(
        Subscriber::new(
            "picky",
            handler_fn(|event: RecordedEvent, _ctx| async move {
                match event.event_type() {
                    "order.ignored" => Err(HandlerError::skip("not ours")),
                    _ => Err(HandlerError::stop("schema bug")),
                }
            }),
        )
        .topic("order.*")
        .mode(DeliveryMode::Broker),
    )
    .unwrap();
    bus.ready("picky").await.unwrap();
    bus.publish("order.ignored", json!({})).await.unwrap();
    bus.publish("order.broken", json!({})).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !matches!(
        bus.subscriber("picky").unwrap().state,
        SubscriberState::Stopped { .. }
    ) {
        assert!(tokio::time::Instant::now() < deadline, "never stopped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let info = bus.subscriber("picky").unwrap();
    assert_eq!(info.skipped, 1);
    // The stopping event went back to the group, for a fixed subscriber.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.queued("picky") != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event was not given back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert!(letters.is_empty(), "{letters:?}");
    bus.shutdown().await;
}

#[tokio::test]
async fn the_inbox_ledger_drops_a_broker_redelivery_of_the_same_event() {
    let broker = MemoryTransport::new();
    let bus = Bus::builder().transport(Arc::new(broker.clone())).build();
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = {
        let calls = Arc::clone(&calls);
        handler_fn(move |event: RecordedEvent, _ctx| {
            let calls = Arc::clone(&calls);
            let tx = tx.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(event);
                Ok(())
            }
        })
    };
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    bus.subscribe(
        Subscriber::new("charge", handler)
            .topic("order.*")
            .mode(DeliveryMode::Broker)
            .idempotent(Arc::new(MemoryLedger::new())),
    )
    .unwrap();
    bus.subscribe(Subscriber::new("marker", forward(seen_tx)).topic("order.*"))
        .unwrap();
    bus.ready("charge").await.unwrap();
    let first = bus.publish("order.created", json!({})).await.unwrap();
    recv(&mut rx).await;
    // The broker delivers the same event again (a relay re-sent it).
    bus.publish_new(NewEvent::new("order.created", json!({})).with_id(first.id()))
        .await
        .unwrap();
    bus.publish("order.next", json!({})).await.unwrap();
    assert_eq!(recv(&mut rx).await.event_type(), "order.next");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the duplicate reached the handler"
    );
    assert_eq!(recv(&mut seen).await.id(), first.id());
    bus.shutdown().await;
}
