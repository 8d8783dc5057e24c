//! Middleware: the documented order, user-written layers, idempotency and
//! tower's layers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald::middleware::{Layer, TowerLayer};
use herald::{
    Bus, Context, DeliveryMode, ErrorKind, EventId, Handler, HandlerError, HandlerResult, Ledger,
    MemoryLedger, NewEvent, RecordedEvent, RetryPolicy, Subscriber, handler_fn,
};
use serde_json::json;

use crate::support::Trail;

/// A user-written middleware that notes each call.
struct Note<H> {
    inner: H,
    label: &'static str,
    trail: Trail,
}

impl<H: Handler> Handler for Note<H> {
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        self.trail.push(format!("{}:{}", self.label, ctx.attempt()));
        self.inner.handle(event, ctx).await
    }
}

#[derive(Clone)]
struct NoteLayer(&'static str, Trail);

impl<H> Layer<H> for NoteLayer {
    type Service = Note<H>;

    fn layer(&self, inner: H) -> Note<H> {
        Note {
            inner,
            label: self.0,
            trail: self.1.clone(),
        }
    }
}

#[tokio::test]
async fn layers_compose_in_the_documented_order() {
    let trail = Trail::default();
    let bus = Bus::builder()
        .layer(NoteLayer("bus-outer", trail.clone()))
        .layer(NoteLayer("bus-inner", trail.clone()))
        .build();
    let t = trail.clone();
    bus.subscribe(
        Subscriber::new(
            "s",
            handler_fn(move |_, ctx| {
                let t = t.clone();
                async move {
                    t.push(format!("handler:{}", ctx.attempt()));
                    if ctx.attempt() == 1 {
                        panic!("first attempt panics");
                    }
                    Ok(())
                }
            }),
        )
        .topic("#")
        .retry(RetryPolicy::immediate(2))
        .layer(NoteLayer("sub-outer", trail.clone()))
        .layer(NoteLayer("sub-inner", trail.clone())),
    )
    .unwrap();
    bus.publish("a.b", json!({})).await.unwrap();
    // Bus layers wrap everything and run once; subscriber layers sit inside
    // the retry layer and run per attempt; the panic is caught below them
    // and retried.
    assert_eq!(
        trail.get(),
        [
            "bus-outer:1",
            "bus-inner:1",
            "sub-outer:1",
            "sub-inner:1",
            "handler:1",
            "sub-outer:2",
            "sub-inner:2",
            "handler:2"
        ]
    );
    assert_eq!(bus.subscriber("s").unwrap().handled, 1);
}

#[tokio::test]
async fn idempotency_skips_event_ids_already_handled() {
    let bus = Bus::new();
    let ledger = Arc::new(MemoryLedger::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    bus.subscribe(
        Subscriber::new(
            "charge",
            handler_fn(move |event, _| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if event.data().to_value()["fail"] == true {
                        return Err(HandlerError::dead_letter("card declined"));
                    }
                    Ok(())
                }
            }),
        )
        .topic("#")
        .idempotent(ledger.clone()),
    )
    .unwrap();
    let id = EventId::new();
    for _ in 0..3 {
        bus.publish_new(NewEvent::new("order.created", json!({})).with_id(id))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(ledger.contains("charge", id).await.unwrap());

    // A failed delivery is not recorded, so a redelivery runs it.
    let failing = EventId::new();
    for _ in 0..2 {
        bus.publish_new(NewEvent::new("order.created", json!({"fail": true})).with_id(failing))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(!ledger.contains("charge", failing).await.unwrap());
    // Other subscribers have their own entries.
    assert!(!ledger.contains("refund", id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_concurrency_limit_bounds_a_concurrent_subscriber() {
    let bus = Bus::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (f, p) = (in_flight.clone(), peak.clone());
    bus.subscribe(
        Subscriber::new(
            "limited",
            handler_fn(move |_, _| {
                let (f, p) = (f.clone(), p.clone());
                async move {
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                    }
                    f.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .topic("#")
        .mode(DeliveryMode::Async)
        .concurrency(8)
        .layer(TowerLayer::new(tower::limit::ConcurrencyLimitLayer::new(2))),
    )
    .unwrap();
    for i in 0..200 {
        bus.publish("a.b", json!({ "i": i })).await.unwrap();
    }
    bus.shutdown().await;
    assert_eq!(bus.subscriber("limited").unwrap().handled, 200);
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 2, "peak {peak}");
}

#[tokio::test(start_paused = true)]
async fn tower_errors_become_retryable_service_errors() {
    let bus = Bus::new();
    bus.subscribe(
        Subscriber::new(
            "slow",
            handler_fn(|_, _| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(())
            }),
        )
        .topic("#")
        .retry(RetryPolicy::immediate(2))
        .layer(TowerLayer::new(tower::timeout::TimeoutLayer::new(
            Duration::from_secs(1),
        ))),
    )
    .unwrap();
    bus.subscribe(
        Subscriber::new(
            "keeps-disposition",
            handler_fn(|_, _| async { Err(HandlerError::dead_letter("bad data")) }),
        )
        .topic("#")
        .retry(RetryPolicy::immediate(3))
        .layer(TowerLayer::new(tower::timeout::TimeoutLayer::new(
            Duration::from_secs(1),
        ))),
    )
    .unwrap();
    bus.publish("a.b", json!({})).await.unwrap();
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    let slow = letters.iter().find(|l| l.subscriber == "slow").unwrap();
    assert_eq!(slow.attempts, 2);
    assert!(slow.errors.iter().all(|e| e.kind == ErrorKind::Service));
    let kept = letters
        .iter()
        .find(|l| l.subscriber == "keeps-disposition")
        .unwrap();
    assert_eq!(
        kept.attempts, 1,
        "a HandlerError passes through tower unchanged"
    );
    assert_eq!(kept.reason, "bad data");
}
