//! Dead letters: list, inspect, retry to one subscriber, discard.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use herald::{
    Bus, DeadLetterError, DeadLetterQuery, HandlerError, RetryOutcome, RetryPolicy, Subscriber,
    TopicPattern, handler_fn,
};
use serde_json::json;

use crate::support::Seen;

/// A handler that fails until `fixed` is set.
fn broken_until(fixed: Arc<AtomicBool>, seen: Seen) -> impl herald::Handler {
    handler_fn(move |event, ctx| {
        let (fixed, seen) = (fixed.clone(), seen.clone());
        async move {
            herald::Handler::handle(&seen, &event, &ctx).await?;
            if fixed.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(HandlerError::retry(format!(
                    "attempt {} failed",
                    ctx.attempt()
                )))
            }
        }
    })
}

#[tokio::test]
async fn a_dead_letter_keeps_event_subscriber_attempts_errors_and_times() {
    let bus = Bus::new();
    let fixed = Arc::new(AtomicBool::new(false));
    bus.subscribe(
        Subscriber::new("mailer", broken_until(fixed, Seen::default()))
            .topic("order.*")
            .retry(RetryPolicy::immediate(3)),
    )
    .unwrap();
    let before = chrono::Utc::now();
    let event = bus
        .publish("order.created", json!({"order_id": 5}))
        .await
        .unwrap();
    let letters = bus.dead_letters(&DeadLetterQuery::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = bus.dead_letter(letters[0].id).await.unwrap();
    assert_eq!(letter.subscriber, "mailer");
    assert_eq!(letter.event, event);
    assert_eq!(letter.attempts, 3);
    let messages: Vec<&str> = letter.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        ["attempt 1 failed", "attempt 2 failed", "attempt 3 failed"]
    );
    assert_eq!(letter.reason, "attempt 3 failed");
    assert!(letter.first_failed_at >= before);
    assert!(letter.last_failed_at >= letter.first_failed_at);
    assert_eq!(letter.first_failed_at, letter.errors[0].at);
    // It serializes for an API.
    let json = serde_json::to_value(&letter).unwrap();
    assert_eq!(json["event"]["type"], "order.created");
    assert_eq!(json["event"]["data"]["order_id"], 5);
}

#[tokio::test]
async fn retrying_a_dead_letter_redelivers_to_its_subscriber_only() {
    let bus = Bus::new();
    let fixed = Arc::new(AtomicBool::new(false));
    let broken_seen = Seen::default();
    let other = Seen::default();
    bus.subscribe(Subscriber::new("other", other.clone()).topic("#"))
        .unwrap();
    bus.subscribe(
        Subscriber::new("broken", broken_until(fixed.clone(), broken_seen.clone()))
            .topic("#")
            .retry(RetryPolicy::immediate(2)),
    )
    .unwrap();
    bus.publish("order.created", json!({})).await.unwrap();
    let id = bus.dead_letters(&Default::default()).await.unwrap()[0].id;

    // Still broken: the same dead letter is updated, not copied.
    let outcome = bus.retry_dead_letter(id).await.unwrap();
    let RetryOutcome::Failed { error, dead_letter } = outcome else {
        panic!("expected a failure")
    };
    assert_eq!(error, "attempt 4 failed");
    let letter = dead_letter.unwrap();
    assert_eq!(letter.id, id);
    assert_eq!(letter.attempts, 4);
    let attempts: Vec<u32> = letter.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert_eq!(
        bus.dead_letters(&Default::default()).await.unwrap().len(),
        1
    );

    fixed.store(true, Ordering::SeqCst);
    assert_eq!(
        bus.retry_dead_letter(id).await.unwrap(),
        RetryOutcome::Handled
    );
    assert!(
        bus.dead_letters(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(broken_seen.len(), 5);
    assert_eq!(other.len(), 1, "other subscribers are not re-run");
    assert!(matches!(
        bus.retry_dead_letter(id).await,
        Err(DeadLetterError::NotFound(x)) if x == id
    ));
}

#[tokio::test]
async fn dead_letters_filter_by_subscriber_and_type_and_can_be_discarded() {
    let bus = Bus::new();
    for name in ["a", "b"] {
        bus.subscribe(
            Subscriber::new(
                name,
                handler_fn(|_, _| async { Err(HandlerError::dead_letter("no")) }),
            )
            .topic("#"),
        )
        .unwrap();
    }
    bus.publish("order.created", json!({})).await.unwrap();
    bus.publish("invoice.sent", json!({})).await.unwrap();
    let all = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(all.len(), 4);
    let for_a = bus
        .dead_letters(&DeadLetterQuery::default().subscriber("a"))
        .await
        .unwrap();
    assert_eq!(for_a.len(), 2);
    assert!(for_a.iter().all(|l| l.subscriber == "a"));
    let orders = bus
        .dead_letters(
            &DeadLetterQuery::default().event_type(TopicPattern::parse("order.*").unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(orders.len(), 2);
    assert_eq!(
        bus.dead_letters(&DeadLetterQuery::default().limit(3))
            .await
            .unwrap()
            .len(),
        3
    );
    // Oldest first.
    assert_eq!(all[0].event.event_type(), "order.created");
    assert_eq!(all[3].event.event_type(), "invoice.sent");

    let discarded = bus.discard_dead_letter(all[0].id).await.unwrap();
    assert_eq!(discarded.id, all[0].id);
    assert_eq!(
        bus.dead_letters(&Default::default()).await.unwrap().len(),
        3
    );
    assert!(matches!(
        bus.discard_dead_letter(all[0].id).await,
        Err(DeadLetterError::NotFound(_))
    ));
}

#[tokio::test]
async fn retrying_a_dead_letter_of_a_removed_subscriber_is_an_error() {
    let bus = Bus::new();
    bus.subscribe(
        Subscriber::new(
            "gone",
            handler_fn(|_, _| async { Err(HandlerError::dead_letter("x")) }),
        )
        .topic("#"),
    )
    .unwrap();
    bus.publish("a.b", json!({})).await.unwrap();
    let id = bus.dead_letters(&Default::default()).await.unwrap()[0].id;
    bus.unsubscribe("gone").await.unwrap();
    let err = bus.retry_dead_letter(id).await.unwrap_err();
    assert!(
        matches!(err, DeadLetterError::SubscriberGone { ref subscriber, .. } if subscriber == "gone")
    );
    assert!(err.to_string().contains("gone"));
    // The dead letter stays.
    assert!(bus.dead_letter(id).await.is_ok());
}

#[tokio::test]
async fn dead_letters_can_be_retried_in_bulk_by_query() {
    let bus = Bus::new();
    let fixed = Arc::new(AtomicBool::new(false));
    let seen = Seen::default();
    bus.subscribe(Subscriber::new("a", broken_until(fixed.clone(), seen.clone())).topic("#"))
        .unwrap();
    bus.subscribe(
        Subscriber::new(
            "b",
            handler_fn(|_, _| async { Err(HandlerError::dead_letter("always")) }),
        )
        .topic("#"),
    )
    .unwrap();
    for _ in 0..3 {
        bus.publish("order.created", json!({})).await.unwrap();
    }
    assert_eq!(
        bus.dead_letters(&Default::default()).await.unwrap().len(),
        6
    );
    fixed.store(true, Ordering::SeqCst);
    let outcomes = bus
        .retry_dead_letters(&DeadLetterQuery::default().subscriber("a"))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes
            .iter()
            .all(|(_, o)| matches!(o, Ok(RetryOutcome::Handled)))
    );
    let left = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|l| l.subscriber == "b"));
    let by_error = bus
        .dead_letters(&DeadLetterQuery::default().error("always"))
        .await
        .unwrap();
    assert_eq!(by_error.len(), 3);
}

#[test]
fn dead_letters_are_counted_per_subscriber_and_reported_as_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A thread-local recorder, and a runtime on this thread, so that other
    // tests running at the same time do not report into it.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bus = Bus::new();
        bus.subscribe(
            Subscriber::new(
                "mailer",
                handler_fn(|_, _| async { Err(HandlerError::dead_letter("smtp down")) }),
            )
            .topic("order.*"),
        )
        .unwrap();
        bus.subscribe(Subscriber::new("audit", Seen::default()).topic("#"))
            .unwrap();
        for n in 0..3 {
            bus.publish("order.created", json!({ "n": n }))
                .await
                .unwrap();
        }
        let counts = bus.dead_letter_counts().await.unwrap();
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [("mailer".to_owned(), 3)]
        );
        let first = bus.dead_letters(&Default::default()).await.unwrap()[0].id;
        bus.discard_dead_letter(first).await.unwrap();
        assert_eq!(
            bus.dead_letter_counts().await.unwrap().get("mailer"),
            Some(&2)
        );
    });

    let metric =
        |name: &str, labels: &[(&str, &str)]| crate::support::metric(&snapshotter, name, labels);
    assert_eq!(
        metric(
            "herald_dead_letters_recorded_total",
            &[("subscriber", "mailer")]
        ),
        Some(DebugValue::Counter(3))
    );
    assert_eq!(
        metric(
            "herald_dead_letters_resolved_total",
            &[("subscriber", "mailer"), ("outcome", "discarded")]
        ),
        Some(DebugValue::Counter(1))
    );
    assert_eq!(
        metric("herald_dead_letters", &[("subscriber", "mailer")]),
        Some(DebugValue::Gauge(2.0.into()))
    );
    assert_eq!(
        metric("herald_dead_letters", &[("subscriber", "audit")]),
        Some(DebugValue::Gauge(0.0.into()))
    );
}
