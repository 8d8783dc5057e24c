//! Async delivery: queues, backpressure, concurrency, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald::{Bus, DeliveryMode, HandlerError, Subscriber, SubscriberState, handler_fn};
use serde_json::json;
use tokio::sync::{Barrier, Semaphore};

use crate::support::Seen;

#[tokio::test]
async fn async_subscribers_keep_publish_order_with_concurrency_one() {
    let bus = Bus::new();
    let seen = Seen::default();
    bus.subscribe(
        Subscriber::new("s", seen.clone())
            .topic("#")
            .mode(DeliveryMode::Async),
    )
    .unwrap();
    for i in 0..500 {
        bus.publish("n.x", json!({ "i": i })).await.unwrap();
    }
    bus.shutdown().await;
    let got: Vec<i64> = seen
        .events()
        .iter()
        .map(|e| e.data().to_value()["i"].as_i64().unwrap())
        .collect();
    assert_eq!(got, (0..500).collect::<Vec<_>>());
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_makes_publish_wait_and_drops_nothing() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let (g, h) = (gate.clone(), handled.clone());
    bus.subscribe(
        Subscriber::new(
            "slow",
            handler_fn(move |_, _| {
                let (g, h) = (g.clone(), h.clone());
                async move {
                    g.acquire().await.unwrap().forget();
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .topic("#")
        .mode(DeliveryMode::Async)
        .queue_capacity(4),
    )
    .unwrap();

    let accepted = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (bus, accepted) = (bus.clone(), accepted.clone());
        tokio::spawn(async move {
            for i in 0..100 {
                bus.publish("n.x", json!({ "i": i })).await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // On a current-thread runtime, yielding lets the publisher and the
    // worker run until both are blocked: the worker on the gate, the
    // publisher on the full queue.
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    let stuck_at = accepted.load(Ordering::SeqCst);
    // capacity 4 in the queue + at most 4 taken by the worker + 1 in hand.
    assert!(
        stuck_at <= 9,
        "publish ran ahead of a full queue: {stuck_at}"
    );
    assert!(!publisher.is_finished());
    assert_eq!(bus.subscriber("slow").unwrap().queued, 4);

    gate.add_permits(100);
    publisher.await.unwrap();
    bus.shutdown().await;
    assert_eq!(handled.load(Ordering::SeqCst), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_runs_that_many_handlers_at_once_and_no_more() {
    let bus = Bus::new();
    let barrier = Arc::new(Barrier::new(4));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (b, f, p) = (barrier.clone(), in_flight.clone(), peak.clone());
    bus.subscribe(
        Subscriber::new(
            "wide",
            handler_fn(move |_, _| {
                let (b, f, p) = (b.clone(), f.clone(), p.clone());
                async move {
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    // Passes only when 4 handlers run at the same time.
                    b.wait().await;
                    f.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .topic("#")
        .mode(DeliveryMode::Async)
        .concurrency(4),
    )
    .unwrap();
    for i in 0..40 {
        bus.publish("n.x", json!({ "i": i })).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), bus.shutdown())
        .await
        .expect("4 handlers never ran at once");
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    assert_eq!(bus.subscriber("wide").unwrap().handled, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_after_every_accepted_event_was_handled_or_dead_lettered() {
    let bus = Bus::new();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    bus.subscribe(
        Subscriber::new(
            "mixed",
            handler_fn(move |event, _| {
                let c = c.clone();
                async move {
                    tokio::task::yield_now().await;
                    c.fetch_add(1, Ordering::SeqCst);
                    if event.data().to_value()["i"].as_u64().unwrap() % 10 == 0 {
                        return Err(HandlerError::dead_letter("multiple of ten"));
                    }
                    Ok(())
                }
            }),
        )
        .topic("#")
        .mode(DeliveryMode::Async)
        .queue_capacity(16)
        .concurrency(3),
    )
    .unwrap();
    for i in 0..1000u64 {
        bus.publish("n.x", json!({ "i": i })).await.unwrap();
    }
    bus.shutdown().await;
    assert_eq!(count.load(Ordering::SeqCst), 1000);
    let info = bus.subscriber("mixed").unwrap();
    assert_eq!(info.handled, 900);
    assert_eq!(info.dead_lettered, 100);
    assert_eq!(
        bus.dead_letters(&Default::default()).await.unwrap().len(),
        100
    );
    // A second shutdown returns at once.
    bus.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn unsubscribing_an_async_subscriber_handles_its_queue_first() {
    let bus = Bus::new();
    let seen = Seen::default();
    bus.subscribe(
        Subscriber::new("s", seen.clone())
            .topic("#")
            .mode(DeliveryMode::Async),
    )
    .unwrap();
    for i in 0..50 {
        bus.publish("n.x", json!({ "i": i })).await.unwrap();
    }
    bus.unsubscribe("s").await.unwrap();
    assert_eq!(seen.len(), 50);
    bus.publish("n.x", json!({})).await.unwrap();
    assert_eq!(seen.len(), 50);
}

#[tokio::test(flavor = "current_thread")]
async fn a_stopped_async_subscriber_parks_its_queued_events_in_the_dead_letters() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    bus.subscribe(
        Subscriber::new(
            "buggy",
            handler_fn(move |event, _| {
                let g = g.clone();
                async move {
                    g.acquire().await.unwrap().forget();
                    if event.data().to_value()["i"] == 0 {
                        return Err(HandlerError::stop("schema mismatch, fix me"));
                    }
                    Ok(())
                }
            }),
        )
        .topic("#")
        .mode(DeliveryMode::Async),
    )
    .unwrap();
    for i in 0..5 {
        bus.publish("n.x", json!({ "i": i })).await.unwrap();
    }
    gate.add_permits(100);
    // Published while stopped or still queued: nothing may be lost.
    bus.shutdown().await;
    let info = bus.subscriber("buggy").unwrap();
    assert_eq!(
        info.state,
        SubscriberState::Stopped {
            reason: "schema mismatch, fix me".into()
        }
    );
    assert_eq!(info.handled, 0);
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(letters.len(), 5);
    assert_eq!(letters[0].reason, "schema mismatch, fix me");
    assert!(letters[1].reason.contains("subscriber stopped"));
}
