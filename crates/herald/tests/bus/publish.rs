//! Publishing, routing, subscriber management, typed events, follow-ups.

use std::sync::Arc;

use herald::{
    Bus, Disposition, ErrorKind, Event, EventId, NewEvent, PatternError, Payload, PublishError,
    SubscribeError, Subscriber, SubscriberState, Typed, handler_fn, typed,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{Seen, Trail};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "order.created")]
struct OrderCreated {
    order_id: u64,
    total_cents: u64,
}

#[tokio::test]
async fn every_published_event_gets_a_v7_id_a_time_and_a_correlation_id() {
    let bus = Bus::new();
    let before = chrono::Utc::now();
    let a = bus.publish("order.created", json!({"n": 1})).await.unwrap();
    let b = bus.publish("order.created", json!({"n": 2})).await.unwrap();
    let after = chrono::Utc::now();
    assert_eq!(a.id().as_uuid().get_version_num(), 7);
    assert!(b.id() > a.id());
    assert!(a.recorded_at() >= before - chrono::Duration::milliseconds(1));
    assert!(a.recorded_at() <= after);
    assert_eq!(a.metadata().correlation_id, Some(*a.id().as_uuid()));
    assert_eq!(a.causation_id(), None);
    assert_eq!(a.stream(), None);
}

#[tokio::test]
async fn metadata_and_ids_given_by_the_publisher_are_kept() {
    let bus = Bus::new();
    let seen = Seen::default();
    bus.subscribe(Subscriber::new("s", seen.clone()).topic("#"))
        .unwrap();
    let id = EventId::new();
    let correlation = *EventId::new().as_uuid();
    bus.publish_new(
        NewEvent::new("order.created", json!({}))
            .with_id(id)
            .with_correlation_id(correlation)
            .with_header("tenant", "acme"),
    )
    .await
    .unwrap();
    let got = &seen.events()[0];
    assert_eq!(got.id(), id);
    assert_eq!(got.correlation_id(), correlation);
    assert_eq!(got.metadata().headers["tenant"], "acme");
}

#[tokio::test]
async fn patterns_route_events_by_segments() {
    let bus = Bus::new();
    let cases = [
        ("exact", "order.created"),
        ("star", "order.*"),
        ("hash", "order.#"),
        ("all", "#"),
        ("created", "*.created"),
    ];
    let seen: Vec<(String, Seen)> = cases
        .iter()
        .map(|(name, pattern)| {
            let s = Seen::default();
            bus.subscribe(Subscriber::new(*name, s.clone()).topic(*pattern))
                .unwrap();
            (name.to_string(), s)
        })
        .collect();
    for ty in [
        "order.created",
        "order.line.added",
        "order",
        "invoice.created",
    ] {
        bus.publish(ty, json!({})).await.unwrap();
    }
    let got: Vec<(String, Vec<String>)> =
        seen.iter().map(|(n, s)| (n.clone(), s.types())).collect();
    assert_eq!(
        got,
        vec![
            ("exact".into(), vec!["order.created".to_string()]),
            ("star".into(), vec!["order.created".to_string()]),
            (
                "hash".into(),
                vec![
                    "order.created".into(),
                    "order.line.added".into(),
                    "order".into()
                ]
            ),
            (
                "all".into(),
                vec![
                    "order.created".into(),
                    "order.line.added".into(),
                    "order".into(),
                    "invoice.created".into()
                ]
            ),
            (
                "created".into(),
                vec!["order.created".into(), "invoice.created".into()]
            ),
        ]
    );
}

#[tokio::test]
async fn a_subscriber_with_several_patterns_gets_each_event_once() {
    let bus = Bus::new();
    let seen = Seen::default();
    bus.subscribe(Subscriber::new("s", seen.clone()).topics(["order.*", "order.#", "#"]))
        .unwrap();
    bus.publish("order.created", json!({})).await.unwrap();
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn invalid_patterns_and_names_are_typed_errors_at_subscribe_time() {
    let bus = Bus::new();
    let noop = || handler_fn(|_, _| async { Ok(()) });
    let err = bus
        .subscribe(Subscriber::new("a", noop()).topic("order.cre*"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            SubscribeError::InvalidPattern(PatternError::PartialWildcard { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("order.cre*"), "{err}");
    assert!(matches!(
        bus.subscribe(Subscriber::new("a", noop()).topic("order..x")),
        Err(SubscribeError::InvalidPattern(_))
    ));
    assert!(matches!(
        bus.subscribe(Subscriber::new("a", noop())),
        Err(SubscribeError::NoTopics(_))
    ));
    assert!(matches!(
        bus.subscribe(Subscriber::new("", noop()).topic("#")),
        Err(SubscribeError::InvalidName(_))
    ));
    bus.subscribe(Subscriber::new("a", noop()).topic("#"))
        .unwrap();
    let dup = bus
        .subscribe(Subscriber::new("a", noop()).topic("x"))
        .unwrap_err();
    assert!(matches!(dup, SubscribeError::DuplicateName(ref n) if n == "a"));
    assert_eq!(bus.subscribers().len(), 1, "failed subscribes add nothing");
}

#[tokio::test]
async fn invalid_event_types_are_rejected_and_delivered_nowhere() {
    let bus = Bus::new();
    let seen = Seen::default();
    bus.subscribe(Subscriber::new("s", seen.clone()).topic("#"))
        .unwrap();
    for bad in ["", "order..created", "order.*", "order created", "ordér"] {
        let err = bus.publish(bad, json!({})).await.unwrap_err();
        assert!(
            matches!(err, PublishError::InvalidEventType(_)),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(seen.len(), 0);
}

#[tokio::test]
async fn a_subscriber_added_disabled_receives_nothing_until_enabled() {
    let bus = Bus::new();
    let seen = Seen::default();
    bus.subscribe(
        Subscriber::new("late", seen.clone())
            .topic("x.*")
            .disabled(),
    )
    .unwrap();
    assert_eq!(
        bus.subscriber("late").unwrap().state,
        SubscriberState::Disabled
    );
    bus.publish("x.one", json!({})).await.unwrap();
    bus.set_enabled("late", true).await.unwrap();
    bus.publish("x.two", json!({})).await.unwrap();
    assert_eq!(seen.types(), ["x.two"]);
    assert!(matches!(
        bus.set_enabled("nobody", false).await,
        Err(herald::DurableError::UnknownSubscriber(name)) if name == "nobody"
    ));
}

#[tokio::test]
async fn subscribers_can_be_listed_disabled_enabled_and_removed() {
    let bus = Bus::new();
    let a = Seen::default();
    let b = Seen::default();
    bus.subscribe(Subscriber::new("a", a.clone()).topic("x.*"))
        .unwrap();
    bus.subscribe(Subscriber::new("b", b.clone()).topic("x.#"))
        .unwrap();
    let names: Vec<_> = bus.subscribers().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(bus.subscriber("a").unwrap().topics, ["x.*"]);

    bus.disable("a").unwrap();
    assert_eq!(
        bus.subscriber("a").unwrap().state,
        SubscriberState::Disabled
    );
    bus.publish("x.one", json!({})).await.unwrap();
    bus.enable("a").unwrap();
    bus.publish("x.two", json!({})).await.unwrap();
    assert_eq!(a.types(), ["x.two"]);
    assert_eq!(b.types(), ["x.one", "x.two"]);

    bus.unsubscribe("b").await.unwrap();
    bus.publish("x.three", json!({})).await.unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(a.len(), 2);
    assert!(bus.unsubscribe("b").await.is_err());
    assert!(bus.disable("nobody").is_err());
    // The name is free again.
    bus.subscribe(Subscriber::new("b", b.clone()).topic("#"))
        .unwrap();
    bus.publish("x.four", json!({})).await.unwrap();
    assert_eq!(b.len(), 3);
}

#[tokio::test]
async fn inline_subscribers_run_in_subscription_order_before_publish_returns() {
    let bus = Bus::new();
    let trail = Trail::default();
    for name in ["first", "second", "third"] {
        let t = trail.clone();
        bus.subscribe(
            Subscriber::new(
                name,
                handler_fn(move |_, ctx| {
                    let t = t.clone();
                    async move {
                        t.push(ctx.subscriber());
                        Ok(())
                    }
                }),
            )
            .topic("#"),
        )
        .unwrap();
    }
    bus.publish("a.b", json!({})).await.unwrap();
    assert_eq!(trail.get(), ["first", "second", "third"]);
}

#[tokio::test]
async fn typed_events_publish_and_decode() {
    let bus = Bus::new();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    bus.subscribe(
        Subscriber::new(
            "typed",
            typed(move |order: Typed<OrderCreated>, _ctx| {
                let g = g.clone();
                async move {
                    assert_eq!(order.record().event_type(), "order.created");
                    g.lock().unwrap().push(order.into_inner());
                    Ok(())
                }
            }),
        )
        .topic(OrderCreated::NAME),
    )
    .unwrap();
    let order = OrderCreated {
        order_id: 7,
        total_cents: 1999,
    };
    let recorded = bus.publish_event(&order).await.unwrap();
    assert_eq!(recorded.event_type(), "order.created");
    assert_eq!(
        recorded.data().to_value(),
        json!({"order_id": 7, "total_cents": 1999})
    );
    assert_eq!(*got.lock().unwrap(), vec![order]);
}

#[tokio::test]
async fn a_payload_that_does_not_decode_is_a_dead_lettered_error_naming_type_and_field() {
    let bus = Bus::new();
    bus.subscribe(
        Subscriber::new("typed", typed(|_: Typed<OrderCreated>, _| async { Ok(()) }))
            .topic("order.created")
            .retry(herald::RetryPolicy::immediate(5)),
    )
    .unwrap();
    bus.publish(
        "order.created",
        json!({"order_id": 1, "total_cents": "lots"}),
    )
    .await
    .unwrap();
    let letters = bus.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.attempts, 1, "a decode error is not retried");
    assert_eq!(letter.errors[0].kind, ErrorKind::Decode);
    assert!(letter.reason.contains("OrderCreated"), "{}", letter.reason);
    assert!(letter.reason.contains("total_cents"), "{}", letter.reason);

    let err = Payload::from(json!({"order_id": 1}))
        .decode::<OrderCreated>()
        .map_err(herald::HandlerError::from)
        .unwrap_err();
    assert_eq!(err.disposition(), Disposition::DeadLetter);
    assert!(
        err.to_string().contains("missing field `total_cents`"),
        "{err}"
    );
}

#[tokio::test]
async fn follow_up_events_carry_correlation_and_causation() {
    let bus = Bus::new();
    bus.subscribe(
        Subscriber::new(
            "pay",
            handler_fn(|event, ctx| async move {
                ctx.publish("order.paid", event.data().clone()).await?;
                Ok(())
            }),
        )
        .topic("order.created"),
    )
    .unwrap();
    bus.subscribe(
        Subscriber::new(
            "ship",
            handler_fn(|_, ctx| async move {
                ctx.publish("order.shipped", json!({})).await?;
                Ok(())
            }),
        )
        .topic("order.paid"),
    )
    .unwrap();
    let seen = Seen::default();
    bus.subscribe(Subscriber::new("all", seen.clone()).topic("order.#"))
        .unwrap();

    let root = bus
        .publish("order.created", json!({"order_id": 1}))
        .await
        .unwrap();
    let events = seen.events();
    let find = |t: &str| events.iter().find(|e| e.event_type() == t).unwrap().clone();
    let paid = find("order.paid");
    let shipped = find("order.shipped");
    assert_eq!(paid.correlation_id(), *root.id().as_uuid());
    assert_eq!(paid.causation_id(), Some(*root.id().as_uuid()));
    assert_eq!(shipped.correlation_id(), *root.id().as_uuid());
    assert_eq!(shipped.causation_id(), Some(*paid.id().as_uuid()));
    assert_eq!(paid.data(), root.data());
}

#[tokio::test]
async fn publishing_after_shutdown_is_an_error() {
    let bus = Bus::new();
    bus.shutdown().await;
    assert!(matches!(
        bus.publish("a.b", json!({})).await,
        Err(PublishError::ShutDown)
    ));
    assert!(matches!(
        bus.subscribe(Subscriber::new("s", Seen::default()).topic("#")),
        Err(SubscribeError::ShutDown)
    ));
}

#[test]
fn async_subscribers_need_a_runtime() {
    let bus = Bus::new();
    let err = bus
        .subscribe(
            Subscriber::new("s", Seen::default())
                .topic("#")
                .mode(herald::DeliveryMode::Async),
        )
        .unwrap_err();
    assert!(matches!(err, SubscribeError::NoRuntime(_)));
}

#[tokio::test]
async fn invalid_subscriber_settings_are_config_errors() {
    let bus = Bus::new();
    let sub = || Subscriber::new("s", Seen::default()).topic("#");
    for s in [
        sub().concurrency(0),
        sub().queue_capacity(0),
        sub().timeout(std::time::Duration::ZERO),
        sub().retry(herald::RetryPolicy::immediate(0)),
    ] {
        assert!(matches!(bus.subscribe(s), Err(SubscribeError::Config(_))));
    }
}
