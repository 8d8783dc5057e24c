//! The outbox relay from an SQLite store: every event reaches the broker in
//! stream order, and the checkpoint survives reopening the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald::relay::{Relay, checkpoint_name};
use herald::store::{CheckpointStore, EventStore, ExpectedVersion, StreamName};
use herald::transport::{ConsumerSpec, MemoryTransport, Transport};
use herald::{EventId, NewEvent, TopicPattern};
use herald_sqlite::{SqliteConfig, SqliteStore};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

async fn append(store: &SqliteStore, streams: usize, per_stream: usize) -> Vec<EventId> {
    let mut ids = Vec::new();
    for n in 0..per_stream {
        for s in 0..streams {
            let stream = StreamName::new(format!("order-{s}")).unwrap();
            let done = store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::new("order.created", json!({ "n": n }))],
                )
                .await
                .unwrap();
            ids.push(done.events[0].id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_every_event_in_stream_order_and_resumes_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let broker = Arc::new(MemoryTransport::new());
    let mut consumer = broker
        .subscribe(&ConsumerSpec::new(
            "all",
            vec![TopicPattern::parse("#").unwrap()],
        ))
        .await
        .unwrap();

    let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).await.unwrap());
    let mut ids = append(&store, 4, 30).await;
    let relay = Relay::builder("outbox", Arc::clone(&store), broker.clone())
        .batch_size(25)
        .spawn()
        .unwrap();
    tokio::time::timeout(PATIENCE, relay.wait_forwarded(120))
        .await
        .expect("the relay forwarded the history");
    relay.stop().await;
    drop(store);

    let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).await.unwrap());
    assert_eq!(
        CheckpointStore::load(&*store, &checkpoint_name("outbox"))
            .await
            .unwrap(),
        Some(120),
        "the checkpoint outlives the store"
    );
    ids.extend(append(&store, 4, 5).await);
    let relay = Relay::builder("outbox", Arc::clone(&store), broker.clone())
        .batch_size(25)
        .spawn()
        .unwrap();
    tokio::time::timeout(PATIENCE, relay.wait_forwarded(140))
        .await
        .expect("the reopened relay forwarded the new events");
    relay.stop().await;

    let mut seen = Vec::new();
    let mut next: HashMap<String, u64> = HashMap::new();
    for _ in 0..broker.queued("all") {
        let delivery = consumer.next().await.unwrap();
        let e = delivery.event();
        let expected = next.entry(e.stream().unwrap().to_owned()).or_insert(0);
        assert_eq!(e.version(), Some(*expected), "stream order");
        *expected += 1;
        seen.push(e.id());
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        seen.len(),
        ids.len(),
        "every event once: nothing repeated after a stop"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    ids.sort();
    assert_eq!(sorted, ids);
}
