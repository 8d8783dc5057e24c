//! Sync handlers: the direct path keeps isolation, logging and dead letters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use herald::{
    Bus, Context, DeliveryMode, ErrorKind, HandlerError, RecordedEvent, RetryPolicy, Subscriber,
    SubscriberState,
};
use serde_json::json;

use crate::support::{Seen, capture_logs};

fn counting(
    calls: &Arc<AtomicU32>,
) -> impl Fn(&RecordedEvent, &Context) -> herald::HandlerResult + use<> {
    let calls = Arc::clone(calls);
    move |event: &RecordedEvent, _ctx: &Context| {
        calls.fetch_add(1, Ordering::SeqCst);
        match event.event_type() {
            "fail.now" => Err(HandlerError::retry("projection out of sync")),
            "panic.now" => panic!("index out of bounds"),
            "skip.now" => Err(HandlerError::skip("not mine")),
            "stop.now" => Err(HandlerError::stop("schema changed")),
            _ => Ok(()),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_sync_subscriber_is_isolated_logged_and_dead_lettered_like_any_other() {
    let (logs, _guard) = capture_logs();
    let bus = Bus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let after = Seen::default();
    bus.subscribe(Subscriber::new_sync("projector", counting(&calls)).topic("#"))
        .unwrap();
    bus.subscribe(Subscriber::new("after", after.clone()).topic("#"))
        .unwrap();

    for ty in ["ok.now", "fail.now", "panic.now", "skip.now"] {
        bus.publish(ty, json!({})).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(after.len(), 4, "the others still receive every event");
    let info = bus.subscriber("projector").unwrap();
    assert_eq!(
        (info.handled, info.skipped, info.failed, info.dead_lettered),
        (1, 1, 2, 2)
    );
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].reason, "projection out of sync");
    assert_eq!(letters[1].errors[0].kind, ErrorKind::Panic);
    assert!(letters[1].reason.contains("index out of bounds"));
    let logged = logs.with_message("dead-lettered");
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[0].fields["subscriber"], "projector");
    assert_eq!(logged[0].fields["attempt"], "1");

    bus.publish("stop.now", json!({})).await.unwrap();
    assert!(matches!(
        bus.subscriber("projector").unwrap().state,
        SubscriberState::Stopped { .. }
    ));
    bus.publish("ok.now", json!({})).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "a stopped subscriber receives nothing"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_sync_subscriber_with_a_retry_policy_runs_in_the_stack_and_is_retried() {
    let bus = Bus::new();
    let calls = Arc::new(AtomicU32::new(0));
    bus.subscribe(
        Subscriber::new_sync("projector", counting(&calls))
            .topic("#")
            .retry(RetryPolicy::immediate(3)),
    )
    .unwrap();
    bus.publish("fail.now", json!({})).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(letters[0].attempts, 3);
}

#[tokio::test]
async fn a_sync_subscriber_can_be_async_and_its_dead_letters_retried() {
    let bus = Bus::new();
    let calls = Arc::new(AtomicU32::new(0));
    bus.subscribe(
        Subscriber::new_sync("projector", counting(&calls))
            .topic("#")
            .mode(DeliveryMode::Async),
    )
    .unwrap();
    for ty in ["ok.now", "fail.now", "ok.now"] {
        bus.publish(ty, json!({})).await.unwrap();
    }
    bus.shutdown().await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    // Retrying runs the handler through the stack: it fails again, and the
    // same dead letter is updated.
    let outcome = bus.retry_dead_letter(letters[0].id).await.unwrap();
    assert!(matches!(outcome, herald::RetryOutcome::Failed { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(bus.dead_letter(letters[0].id).await.unwrap().attempts, 2);
}
