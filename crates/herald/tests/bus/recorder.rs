//! The test recorder users get in `herald::testing`.

use herald::testing::Recorder;
use herald::{Bus, Event, NewEvent, Subscriber, handler_fn};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "order.created")]
struct OrderCreated {
    order_id: u64,
}

#[tokio::test]
async fn the_recorder_sees_published_and_follow_up_events() {
    let bus = Bus::new();
    let recorder = Recorder::attach(&bus);
    bus.subscribe(
        Subscriber::new(
            "thank",
            handler_fn(|_, ctx| async move {
                ctx.publish("email.sent", json!({"to": "a@example.com"}))
                    .await?;
                Ok(())
            }),
        )
        .topic("order.created"),
    )
    .unwrap();
    let order = bus
        .publish_event(&OrderCreated { order_id: 9 })
        .await
        .unwrap();
    bus.publish_new(NewEvent::new("audit.noted", json!({})).with_header("tenant", "acme"))
        .await
        .unwrap();

    let found = recorder
        .assert_published("order.created")
        .with_data(json!({"order_id": 9}))
        .once();
    assert_eq!(found.id(), order.id());
    recorder
        .assert_published("email.sent")
        .with_causation_id(*order.id().as_uuid())
        .with_correlation_id(*order.id().as_uuid())
        .including(json!({"to": "a@example.com"}))
        .once();
    recorder
        .assert_published("audit.*")
        .with_header("tenant", "acme")
        .once();
    recorder.assert_published("order.cancelled").never();
    assert_eq!(recorder.assert_published("#").times(3).len(), 3);
    assert_eq!(
        recorder.published::<OrderCreated>(),
        [OrderCreated { order_id: 9 }]
    );
    assert_eq!(recorder.events_of("order.*").len(), 1);
    recorder.clear();
    assert!(recorder.events().is_empty());
}

#[tokio::test]
#[should_panic(
    expected = "expected exactly 1 event(s) matching order.created with data {\"order_id\":2}, found 0"
)]
async fn a_failed_expectation_says_what_was_published() {
    let bus = Bus::new();
    let recorder = Recorder::attach(&bus);
    bus.publish("order.created", json!({"order_id": 1}))
        .await
        .unwrap();
    let _ = recorder
        .assert_published("order.created")
        .with_data(json!({"order_id": 2}))
        .once();
}

#[tokio::test]
#[should_panic(expected = "expected no event(s) matching order.*, found 2")]
async fn never_fails_when_events_were_published() {
    let bus = Bus::new();
    let recorder = Recorder::attach(&bus);
    bus.publish("order.created", json!({})).await.unwrap();
    bus.publish("order.paid", json!({})).await.unwrap();
    recorder.assert_published("order.*").never();
}
