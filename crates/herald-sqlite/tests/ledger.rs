//! The idempotency ledger in the SQLite file: inserts are idempotent, and
//! what it holds survives reopening the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use herald::{Bus, EventId, Ledger, NewEvent, Subscriber, handler_fn};
use herald_sqlite::{SqliteConfig, SqliteStore};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_survives_reopening_and_inserting_twice_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("events.db"));
    let (a, b, never) = (EventId::new(), EventId::new(), EventId::new());
    {
        let store = SqliteStore::open(config.clone()).await.unwrap();
        assert!(!store.contains("billing", a).await.unwrap());
        store.insert("billing", a).await.unwrap();
        store.insert("billing", a).await.unwrap();
        store.insert("shipping", b).await.unwrap();
        assert!(store.contains("billing", a).await.unwrap());
    }
    let store = SqliteStore::open(config).await.unwrap();
    assert!(store.contains("billing", a).await.unwrap());
    assert!(store.contains("shipping", b).await.unwrap());
    assert!(
        !store.contains("shipping", a).await.unwrap(),
        "per subscriber"
    );
    assert!(
        !store.contains("billing", b).await.unwrap(),
        "per subscriber"
    );
    assert!(!store.contains("billing", never).await.unwrap());
    store.insert("billing", a).await.unwrap();
    assert!(store.contains("billing", a).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_subscriber_skips_an_event_it_handled_before_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("events.db"));
    let id = EventId::new();
    let charge = |count: Arc<AtomicUsize>, ledger: Arc<SqliteStore>| {
        Subscriber::new(
            "charge",
            handler_fn(move |_, _| {
                let count = Arc::clone(&count);
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .topic("order.created")
        .idempotent(ledger)
    };
    let publish = |bus: Bus| async move {
        bus.publish_new(NewEvent::new("order.created", json!({"order_id": 1})).with_id(id))
            .await
            .unwrap();
        bus.shutdown().await;
    };
    let before = Arc::new(AtomicUsize::new(0));
    {
        let store = Arc::new(SqliteStore::open(config.clone()).await.unwrap());
        let bus = Bus::new();
        bus.subscribe(charge(before.clone(), store)).unwrap();
        publish(bus).await;
    }
    assert_eq!(before.load(Ordering::SeqCst), 1);

    let after = Arc::new(AtomicUsize::new(0));
    let store = Arc::new(SqliteStore::open(config).await.unwrap());
    let bus = Bus::new();
    bus.subscribe(charge(after.clone(), store)).unwrap();
    publish(bus).await;
    assert_eq!(
        after.load(Ordering::SeqCst),
        0,
        "handled before the restart"
    );
}
