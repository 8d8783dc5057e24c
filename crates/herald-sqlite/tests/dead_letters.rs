//! Dead letters in the SQLite file: they survive reopening, a bus on the
//! reopened store retries them, and retention removes the old ones.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::TempStore;
use herald::{
    Bus, DeadLetterQuery, DeadLetterStore, HandlerError, RetryOutcome, Subscriber, handler_fn,
};
use herald_sqlite::{SqliteConfig, SqliteStore};
use herald_testkit::dead_letters::{failed_at, subscribers};
use serde_json::json;

/// A subscriber that counts its deliveries and fails each one while
/// `failing`.
fn counting(name: &str, count: Arc<AtomicUsize>, failing: bool) -> Subscriber {
    Subscriber::new(
        name,
        handler_fn(move |_, _| {
            let count = Arc::clone(&count);
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                if failing {
                    Err(HandlerError::dead_letter("smtp is down"))
                } else {
                    Ok(())
                }
            }
        }),
    )
    .topic("order.*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_survives_reopening_and_a_new_bus_retries_it_to_its_subscriber_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("events.db"));
    let (event, id) = {
        let store = Arc::new(SqliteStore::open(config.clone()).await.unwrap());
        let bus = Bus::builder()
            .store(store.clone())
            .dead_letter_store(store.clone())
            .build();
        let (mailer, audit) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        bus.subscribe(counting("mailer", mailer.clone(), true))
            .unwrap();
        bus.subscribe(counting("audit", audit.clone(), false))
            .unwrap();
        let event = bus
            .publish("order.created", json!({"order_id": 7}))
            .await
            .unwrap();
        assert_eq!(
            (mailer.load(Ordering::SeqCst), audit.load(Ordering::SeqCst)),
            (1, 1)
        );
        let letters = bus.dead_letters(&DeadLetterQuery::default()).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].subscriber, "mailer");
        bus.shutdown().await;
        (event, letters[0].id)
    };

    let store = Arc::new(SqliteStore::open(config).await.unwrap());
    let letter = store.get(id).await.unwrap().expect("kept across reopening");
    assert_eq!(letter.event, event);
    assert_eq!(letter.reason, "smtp is down");
    assert_eq!(letter.attempts, 1);

    let bus = Bus::builder()
        .store(store.clone())
        .dead_letter_store(store.clone())
        .build();
    let (mailer, audit) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    bus.subscribe(counting("mailer", mailer.clone(), false))
        .unwrap();
    bus.subscribe(counting("audit", audit.clone(), false))
        .unwrap();
    assert_eq!(
        bus.retry_dead_letter(id).await.unwrap(),
        RetryOutcome::Handled
    );
    assert_eq!(mailer.load(Ordering::SeqCst), 1, "re-delivered to mailer");
    assert_eq!(audit.load(Ordering::SeqCst), 0, "and to no one else");
    assert_eq!(store.get(id).await.unwrap(), None, "removed once handled");
    bus.shutdown().await;
}

fn ago(seconds: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(seconds)
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_removes_the_dead_letters_whose_last_failure_is_older_and_counts_them() {
    let store = TempStore::with(|config| config).await;
    store.record(failed_at("old", ago(7200))).await.unwrap();
    store.record(failed_at("older", ago(9000))).await.unwrap();
    store.record(failed_at("recent", ago(10))).await.unwrap();
    // Failing again recently makes an old dead letter recent.
    let renewed = store.record(failed_at("renewed", ago(9000))).await.unwrap();
    let mut again = failed_at("renewed", ago(5));
    again.event = renewed.event.clone();
    store.record(again).await.unwrap();

    assert_eq!(store.purge_dead_letters(HOUR).await.unwrap(), 2);
    assert_eq!(subscribers(&*store).await, ["renewed", "recent"]);
    assert_eq!(store.purge_dead_letters(HOUR).await.unwrap(), 0);
    assert_eq!(store.purge_dead_letters(Duration::MAX).await.unwrap(), 0);
    assert_eq!(store.purge_dead_letters(Duration::ZERO).await.unwrap(), 2);
    assert!(subscribers(&*store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_dead_letters_on_open_and_when_one_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("events.db"));
    {
        let store = SqliteStore::open(config.clone()).await.unwrap();
        store
            .record(failed_at("stale", ago(3 * 86_400)))
            .await
            .unwrap();
        store.record(failed_at("fresh", ago(60))).await.unwrap();
    }
    // Kept forever without a retention.
    let store = SqliteStore::open(config.clone()).await.unwrap();
    assert_eq!(subscribers(&store).await, ["stale", "fresh"]);
    drop(store);

    let store = SqliteStore::open(config.dead_letter_retention(Some(DAY)))
        .await
        .unwrap();
    assert_eq!(subscribers(&store).await, ["fresh"], "removed on open");

    // A dead letter recorded already past the retention stays until the
    // next one is recorded.
    store
        .record(failed_at("late", ago(2 * 86_400)))
        .await
        .unwrap();
    assert_eq!(subscribers(&store).await, ["late", "fresh"]);
    store.record(failed_at("next", ago(1))).await.unwrap();
    assert_eq!(subscribers(&store).await, ["fresh", "next"]);
}
