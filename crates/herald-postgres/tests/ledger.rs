//! The idempotency ledger in the store's schema: inserts are idempotent,
//! and every store on the schema sees what another recorded.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::{Bus, DeliveryMode, EventId, Handler, Ledger, NewEvent, Subscriber, handler_fn};
use herald_postgres::PgStore;
use serde_json::json;
use tokio::sync::Notify;

/// How long a test waits for a delivery before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserting_twice_changes_nothing_and_another_store_on_the_schema_sees_it() {
    let config = support::config();
    let first = support::store_with(config.clone()).await;
    let second = support::store_with(config).await;
    let (a, b, never) = (EventId::new(), EventId::new(), EventId::new());
    assert!(!first.contains("billing", a).await.unwrap());
    first.insert("billing", a).await.unwrap();
    first.insert("billing", a).await.unwrap();
    second.insert("billing", a).await.unwrap();
    first.insert("shipping", b).await.unwrap();
    assert!(second.contains("billing", a).await.unwrap());
    assert!(second.contains("shipping", b).await.unwrap());
    assert!(
        !second.contains("shipping", a).await.unwrap(),
        "per subscriber"
    );
    assert!(
        !second.contains("billing", b).await.unwrap(),
        "per subscriber"
    );
    assert!(!second.contains("billing", never).await.unwrap());
    let rows: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".ledger",
        first.config().schema
    ))
    .fetch_one(first.pool())
    .await
    .unwrap();
    assert_eq!(rows, 2, "one row per subscriber and event");
}

/// Counts the events a handler ran for, and wakes waiters.
#[derive(Clone, Default)]
struct Handled {
    ids: Arc<Mutex<Vec<EventId>>>,
    changed: Arc<Notify>,
}

impl Handled {
    fn handler(&self) -> impl Handler {
        let handled = self.clone();
        handler_fn(move |event, _| {
            let handled = handled.clone();
            async move {
                handled.ids.lock().unwrap().push(event.id());
                handled.changed.notify_waiters();
                Ok(())
            }
        })
    }

    fn ids(&self) -> Vec<EventId> {
        self.ids.lock().unwrap().clone()
    }

    async fn until_handled(&self, id: EventId) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if self.ids().contains(&id) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {id}; handled {:?}", self.ids()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_subscriber_skips_an_event_another_store_on_the_schema_recorded() {
    let config = support::config();
    let first = Arc::new(support::store_with(config.clone()).await);
    let second: Arc<PgStore> = Arc::new(support::store_with(config).await);

    // A bus over the first store handles an event, inline, and records it.
    let before = Handled::default();
    let bus = Bus::builder().store(first.clone()).build();
    bus.subscribe(
        Subscriber::new("charge", before.handler())
            .topic("order.created")
            .idempotent(first.clone()),
    )
    .unwrap();
    let handled = bus
        .publish("order.created", json!({"order_id": 1}))
        .await
        .unwrap();
    bus.shutdown().await;
    assert_eq!(before.ids(), [handled.id()]);
    assert!(second.contains("charge", handled.id()).await.unwrap());

    // A bus over the second store delivers the history again to a durable
    // subscriber of the same name: the ledger makes it skip the handled
    // event and run only the new one. Delivery is in log order, so once the
    // new event ran, the old one was passed.
    let after = Handled::default();
    let bus = Bus::builder().store(second.clone()).build();
    bus.subscribe(
        Subscriber::new("charge", after.handler())
            .topic("order.created")
            .mode(DeliveryMode::Durable)
            .poll_interval(Duration::from_millis(50))
            .idempotent(second.clone()),
    )
    .unwrap();
    let new = bus
        .publish_new(NewEvent::new("order.created", json!({"order_id": 2})))
        .await
        .unwrap();
    after.until_handled(new.id()).await;
    bus.shutdown().await;
    assert_eq!(after.ids(), [new.id()], "the handled event was skipped");
    assert!(first.contains("charge", new.id()).await.unwrap());
}
