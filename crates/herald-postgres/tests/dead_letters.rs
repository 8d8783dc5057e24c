//! Dead-letter retention and counts on PostgreSQL: old dead letters are
//! removed on connect and on demand, and counted per subscriber.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald::DeadLetterStore;
use herald_testkit::dead_letters::{failed_at, subscribers};

fn ago(seconds: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(seconds)
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_removes_the_dead_letters_whose_last_failure_is_older_and_counts_them() {
    let store = support::store().await;
    store.record(failed_at("old", ago(7200))).await.unwrap();
    store.record(failed_at("older", ago(9000))).await.unwrap();
    store.record(failed_at("recent", ago(10))).await.unwrap();
    // Failing again recently makes an old dead letter recent.
    let renewed = store.record(failed_at("renewed", ago(9000))).await.unwrap();
    let mut again = failed_at("renewed", ago(5));
    again.event = renewed.event.clone();
    store.record(again).await.unwrap();

    assert_eq!(store.purge_dead_letters(HOUR).await.unwrap(), 2);
    assert_eq!(subscribers(&store).await, ["renewed", "recent"]);
    assert_eq!(store.purge_dead_letters(HOUR).await.unwrap(), 0);
    assert_eq!(store.purge_dead_letters(Duration::MAX).await.unwrap(), 0);
    assert_eq!(store.purge_dead_letters(Duration::ZERO).await.unwrap(), 2);
    assert!(subscribers(&store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_dead_letters_when_the_store_connects() {
    let config = support::config();
    {
        let store = support::store_with(config.clone()).await;
        store
            .record(failed_at("stale", ago(3 * 86_400)))
            .await
            .unwrap();
        store.record(failed_at("fresh", ago(60))).await.unwrap();
    }
    // Kept without a retention.
    let store = support::store_with(config.clone()).await;
    assert_eq!(subscribers(&store).await, ["stale", "fresh"]);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.get("stale"), Some(&1));
    assert_eq!(counts.get("fresh"), Some(&1));

    let store = support::store_with(config.dead_letter_retention(DAY)).await;
    assert_eq!(subscribers(&store).await, ["fresh"], "removed on connect");
    assert_eq!(store.counts().await.unwrap().len(), 1);
}
