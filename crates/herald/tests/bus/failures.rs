//! Error isolation, logging, dispositions, retries and timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use herald::{
    Bus, Disposition, ErrorKind, HandlerError, PublishError, RetryPolicy, Subscriber,
    SubscriberState, handler_fn,
};
use serde_json::json;
use tokio::time::Instant;

use crate::support::{Seen, Trail, capture_logs};

fn failing(message: &'static str) -> impl herald::Handler {
    handler_fn(move |_, _| async move { Err(HandlerError::retry(message)) })
}

fn panicking() -> impl herald::Handler {
    handler_fn(|event, _| async move {
        if event.event_type() == "boom.now" {
            panic!("kaboom");
        }
        Ok(())
    })
}

#[tokio::test(flavor = "current_thread")]
async fn errors_and_panics_never_fail_publish_nor_stop_other_subscribers() {
    let bus = Bus::new();
    let before = Seen::default();
    let after = Seen::default();
    bus.subscribe(Subscriber::new("before", before.clone()).topic("#"))
        .unwrap();
    bus.subscribe(Subscriber::new("erring", failing("db down")).topic("#"))
        .unwrap();
    bus.subscribe(Subscriber::new("panicking", panicking()).topic("#"))
        .unwrap();
    bus.subscribe(
        Subscriber::new("async-panicking", panicking())
            .topic("#")
            .mode(herald::DeliveryMode::Async),
    )
    .unwrap();
    bus.subscribe(Subscriber::new("after", after.clone()).topic("#"))
        .unwrap();

    for _ in 0..3 {
        bus.publish("boom.now", json!({})).await.unwrap();
    }
    bus.shutdown().await;
    assert_eq!(before.len(), 3);
    assert_eq!(after.len(), 3);
    for name in ["erring", "panicking", "async-panicking"] {
        let info = bus.subscriber(name).unwrap();
        assert_eq!(info.failed, 3, "{name}");
        assert_eq!(info.state, SubscriberState::Enabled, "{name}");
    }
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(letters.len(), 9);
    let panic_letter = letters
        .iter()
        .find(|l| l.subscriber == "panicking")
        .unwrap();
    assert_eq!(panic_letter.errors[0].kind, ErrorKind::Panic);
    assert!(
        panic_letter.reason.contains("kaboom"),
        "{}",
        panic_letter.reason
    );
}

#[tokio::test(flavor = "current_thread")]
async fn every_failure_is_logged_with_event_type_subscriber_attempt_and_error() {
    let (logs, _guard) = capture_logs();
    let bus = Bus::new();
    bus.subscribe(
        Subscriber::new("billing", failing("card declined"))
            .topic("#")
            .retry(RetryPolicy::immediate(3)),
    )
    .unwrap();
    let event = bus.publish("order.created", json!({})).await.unwrap();

    let retries = logs.with_message("will retry");
    assert_eq!(retries.len(), 2);
    let gave_up = logs.with_message("dead-lettered");
    assert_eq!(gave_up.len(), 1);
    for (log, attempt) in retries.iter().chain(&gave_up).zip(["1", "2", "3"]) {
        assert_eq!(log.fields["event_id"], event.id().to_string());
        assert_eq!(log.fields["event_type"], "order.created");
        assert_eq!(log.fields["subscriber"], "billing");
        assert_eq!(log.fields["attempt"], attempt);
        assert_eq!(log.fields["error"], "card declined");
    }
    assert_eq!(gave_up[0].level, tracing::Level::ERROR);
}

#[tokio::test(flavor = "current_thread")]
async fn failures_without_dead_letters_are_still_logged() {
    let (logs, _guard) = capture_logs();
    let bus = Bus::builder().without_dead_letters().build();
    bus.subscribe(Subscriber::new("s", failing("nope")).topic("#"))
        .unwrap();
    let event = bus.publish("a.b", json!({})).await.unwrap();
    let failed = logs.with_message("handler failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].fields["event_id"], event.id().to_string());
    assert_eq!(failed[0].fields["subscriber"], "s");
    assert_eq!(failed[0].fields["attempt"], "1");
    assert_eq!(failed[0].fields["error"], "nope");
}

#[tokio::test]
async fn a_propagating_inline_subscriber_fails_publish_and_holds_back_the_event() {
    let bus = Bus::new();
    let later = Seen::default();
    let queued = Seen::default();
    let tries = Arc::new(AtomicU32::new(0));
    let t = tries.clone();
    bus.subscribe(
        Subscriber::new(
            "in-tx",
            handler_fn(move |_, _| {
                let t = t.clone();
                async move {
                    t.fetch_add(1, Ordering::SeqCst);
                    Err(HandlerError::retry("constraint violated"))
                }
            }),
        )
        .topic("#")
        .retry(RetryPolicy::immediate(2))
        .propagate_errors(),
    )
    .unwrap();
    bus.subscribe(Subscriber::new("later", later.clone()).topic("#"))
        .unwrap();
    bus.subscribe(
        Subscriber::new("queued", queued.clone())
            .topic("#")
            .mode(herald::DeliveryMode::Async),
    )
    .unwrap();

    let err = bus.publish("order.created", json!({})).await.unwrap_err();
    match &err {
        PublishError::Handler {
            subscriber, source, ..
        } => {
            assert_eq!(subscriber, "in-tx");
            assert_eq!(source.to_string(), "constraint violated");
            assert_eq!(source.history().len(), 2);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(tries.load(Ordering::SeqCst), 2, "its retries ran first");
    bus.shutdown().await;
    assert_eq!(later.len(), 0);
    assert_eq!(queued.len(), 0);
    assert!(
        bus.dead_letters(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn skip_is_handled_as_a_logged_no_op() {
    let (logs, _guard) = capture_logs();
    let bus = Bus::new();
    bus.subscribe(
        Subscriber::new(
            "s",
            handler_fn(|_, _| async { Err(HandlerError::skip("not a premium order")) }),
        )
        .topic("#")
        .retry(RetryPolicy::immediate(5)),
    )
    .unwrap();
    bus.publish("order.created", json!({})).await.unwrap();
    let info = bus.subscriber("s").unwrap();
    assert_eq!((info.skipped, info.failed, info.dead_lettered), (1, 0, 0));
    let skipped = logs.with_message("skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].fields["reason"], "not a premium order");
    assert!(logs.with_message("will retry").is_empty());
}

#[tokio::test]
async fn give_up_goes_to_the_dead_letters_without_retrying() {
    let bus = Bus::new();
    let tries = Arc::new(AtomicU32::new(0));
    let t = tries.clone();
    bus.subscribe(
        Subscriber::new(
            "s",
            handler_fn(move |_, _| {
                let t = t.clone();
                async move {
                    t.fetch_add(1, Ordering::SeqCst);
                    Err(HandlerError::dead_letter("customer 7 does not exist"))
                }
            }),
        )
        .topic("#")
        .retry(RetryPolicy::immediate(5)),
    )
    .unwrap();
    bus.publish("order.created", json!({})).await.unwrap();
    assert_eq!(tries.load(Ordering::SeqCst), 1);
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[0].reason, "customer 7 does not exist");
}

#[tokio::test]
async fn stop_dead_letters_the_event_and_stops_the_subscriber_until_enabled() {
    let bus = Bus::new();
    let calls = Seen::default();
    let c = calls.clone();
    bus.subscribe(
        Subscriber::new(
            "s",
            handler_fn(move |event, ctx| {
                let c = c.clone();
                async move {
                    herald::Handler::handle(&c, &event, &ctx).await?;
                    if event.event_type() == "bad.event" {
                        return Err(HandlerError::stop("bug: unknown currency"));
                    }
                    Ok(())
                }
            }),
        )
        .topic("#")
        .retry(RetryPolicy::immediate(3)),
    )
    .unwrap();
    bus.publish("bad.event", json!({})).await.unwrap();
    assert_eq!(calls.len(), 1, "stop is not retried");
    assert!(matches!(
        bus.subscriber("s").unwrap().state,
        SubscriberState::Stopped { ref reason } if reason == "bug: unknown currency"
    ));
    bus.publish("good.event", json!({})).await.unwrap();
    assert_eq!(calls.len(), 1, "a stopped subscriber receives nothing");
    assert_eq!(
        bus.dead_letters(&Default::default()).await.unwrap().len(),
        1
    );

    bus.enable("s").unwrap();
    bus.publish("good.event", json!({})).await.unwrap();
    assert_eq!(calls.types(), ["bad.event", "good.event"]);
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_waits_the_policy_delays_between_attempts() {
    let bus = Bus::new();
    let times = Trail::default();
    let start = Instant::now();
    let t = times.clone();
    bus.subscribe(
        Subscriber::new(
            "s",
            handler_fn(move |_, ctx| {
                let t = t.clone();
                async move {
                    t.push(format!("{}@{}", ctx.attempt(), start.elapsed().as_millis()));
                    Err(HandlerError::retry("flaky"))
                }
            }),
        )
        .topic("#")
        .retry(
            RetryPolicy::exponential(Duration::from_millis(100), Duration::from_millis(300))
                .max_attempts(5)
                .jitter(0.0),
        ),
    )
    .unwrap();
    bus.publish("a.b", json!({})).await.unwrap();
    // Waits of 100, 200, 300 (capped), 300 ms.
    assert_eq!(times.get(), ["1@0", "2@100", "3@300", "4@600", "5@900"]);
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(letters[0].attempts, 5);
    let attempts: Vec<u32> = letters[0].errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_delay_from_the_handler_wins_over_the_backoff() {
    let bus = Bus::new();
    let times = Trail::default();
    let start = Instant::now();
    let t = times.clone();
    bus.subscribe(
        Subscriber::new(
            "s",
            handler_fn(move |_, ctx| {
                let t = t.clone();
                async move {
                    t.push(format!("{}", start.elapsed().as_millis()));
                    if ctx.attempt() == 1 {
                        return Err(HandlerError::retry_after(
                            "rate limited",
                            Duration::from_secs(7),
                        ));
                    }
                    Ok(())
                }
            }),
        )
        .topic("#")
        .retry(RetryPolicy::fixed(Duration::from_millis(10), 3)),
    )
    .unwrap();
    bus.publish("a.b", json!({})).await.unwrap();
    assert_eq!(times.get(), ["0", "7000"]);
    assert_eq!(bus.subscriber("s").unwrap().handled, 1);
}

#[tokio::test(start_paused = true)]
async fn the_retry_predicate_decides_which_errors_are_retried() {
    let bus = Bus::new();
    let tries = Arc::new(AtomicU32::new(0));
    let t = tries.clone();
    bus.subscribe(
        Subscriber::new(
            "s",
            handler_fn(move |event, _| {
                let t = t.clone();
                async move {
                    t.fetch_add(1, Ordering::SeqCst);
                    Err(HandlerError::retry(event.event_type().to_owned()))
                }
            }),
        )
        .topic("#")
        .retry(
            RetryPolicy::fixed(Duration::from_secs(1), 4)
                .retry_if(|e| e.to_string() != "permanent.error"),
        ),
    )
    .unwrap();
    bus.publish("permanent.error", json!({})).await.unwrap();
    assert_eq!(tries.load(Ordering::SeqCst), 1);
    bus.publish("transient.error", json!({})).await.unwrap();
    assert_eq!(tries.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_the_timeout_and_timeouts_are_retried() {
    let bus = Bus::new();
    let start = Instant::now();
    let times = Trail::default();
    let t = times.clone();
    bus.subscribe(
        Subscriber::new(
            "slow",
            handler_fn(move |_, ctx| {
                let t = t.clone();
                async move {
                    t.push(format!("{}@{}", ctx.attempt(), start.elapsed().as_millis()));
                    if ctx.attempt() < 3 {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Ok(())
                }
            }),
        )
        .topic("#")
        .timeout(Duration::from_secs(2))
        .retry(RetryPolicy::fixed(Duration::from_millis(500), 3)),
    )
    .unwrap();
    bus.publish("a.b", json!({})).await.unwrap();
    assert_eq!(times.get(), ["1@0", "2@2500", "3@5000"]);
    assert_eq!(bus.subscriber("slow").unwrap().handled, 1);

    let err = HandlerError::timeout(Duration::from_secs(2));
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.disposition(), Disposition::Retry { after: None });
}

#[tokio::test(flavor = "current_thread")]
async fn every_published_event_is_logged_with_its_id_and_type() {
    let (logs, _guard) = capture_logs();
    let bus = Bus::new();
    bus.subscribe(Subscriber::new("s", Seen::default()).topic("#"))
        .unwrap();
    let event = bus.publish("order.created", json!({})).await.unwrap();
    let published = logs.with_message("event published");
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].fields["event_id"], event.id().to_string());
    assert_eq!(published[0].fields["event_type"], "order.created");
    assert_eq!(published[0].fields["subscribers"], "1");
    assert_eq!(published[0].level, tracing::Level::DEBUG);
}

/// A durable subscriber reports the retries it schedules and the events it
/// holds back; the gauge falls back to 0 when it stops.
#[test]
fn a_durable_subscriber_reports_scheduled_retries_and_held_back_events() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A thread-local recorder and a runtime on this thread, so that other
    // tests running at the same time do not report into it.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let metric =
        |name: &str| crate::support::metric(&snapshotter, name, &[("subscriber", "ledger")]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = std::sync::Arc::new(herald::store::MemoryStore::new());
        let bus = herald::Bus::builder()
            .store(std::sync::Arc::clone(&store))
            .build();
        let handled = std::sync::Arc::new(tokio::sync::Notify::new());
        let done = std::sync::Arc::clone(&handled);
        bus.subscribe(
            herald::Subscriber::new(
                "ledger",
                herald::handler_fn(move |event, _| {
                    let done = std::sync::Arc::clone(&done);
                    async move {
                        if event.stream() == Some("account-1") {
                            return Err(herald::HandlerError::retry("locked"));
                        }
                        done.notify_one();
                        Ok(())
                    }
                }),
            )
            .topic("#")
            .mode(herald::DeliveryMode::Durable)
            .retry(herald::RetryPolicy::fixed(Duration::from_secs(3600), 3)),
        )
        .unwrap();
        for stream in ["account-1", "account-1", "account-2"] {
            bus.publish_new(herald::NewEvent::new("entry.posted", json!({})).in_stream(stream))
                .await
                .unwrap();
        }
        // account-2 comes after both of account-1's events in the log: once
        // it is handled, account-1's are held back.
        tokio::time::timeout(Duration::from_secs(30), handled.notified())
            .await
            .expect("account-2 handled");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while metric("herald_durable_held_back") != Some(DebugValue::Gauge(2.0.into())) {
            assert!(
                std::time::Instant::now() < deadline,
                "held back: {:?}",
                metric("herald_durable_held_back")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            metric("herald_durable_retries_scheduled_total"),
            Some(DebugValue::Counter(1))
        );
        bus.shutdown().await;
    });
    assert_eq!(
        metric("herald_durable_held_back"),
        Some(DebugValue::Gauge(0.0.into()))
    );
}
