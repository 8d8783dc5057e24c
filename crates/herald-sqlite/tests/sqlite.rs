//! What the SQLite store promises beyond the conformance suite: durability
//! across reopening, several stores on one file, group commit, exact
//! payloads, the schema, and errors instead of panics.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::TempStore;
use futures_util::TryStreamExt;
use herald::store::{
    CheckpointStore, EventStore, ExpectedVersion, MemoryStore, ReadAll, ReadStream, StoreError,
    StoreErrorKind, StreamName,
};
use herald::{NewEvent, Payload, RecordedEvent, TopicPattern};
use herald_sqlite::{ConfigError, OpenError, SqliteConfig, SqliteStore, Synchronous};
use serde_json::json;

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("a valid stream name")
}

fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type.to_owned(), json!({ "n": n }))
}

async fn all<S: EventStore>(store: &S, query: ReadAll) -> Vec<RecordedEvent> {
    store.read_all(query).try_collect().await.expect("read_all")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_head_and_checkpoints_survive_reopening_and_positions_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("events.db")).synchronous(Synchronous::Full);
    let (kept, gone) = (stream("kept-1"), stream("gone-1"));
    {
        let store = SqliteStore::open(config.clone()).await.unwrap();
        store
            .append(&kept, ExpectedVersion::NoStream, vec![event("a.b", 1)])
            .await
            .unwrap();
        let last = store
            .append(
                &gone,
                ExpectedVersion::NoStream,
                vec![event("a.b", 2), event("a.b", 3)],
            )
            .await
            .unwrap();
        assert_eq!(last.events[1].position, 3);
        assert!(
            store
                .delete_stream(&gone, ExpectedVersion::Any)
                .await
                .unwrap()
        );
        assert_eq!(store.head().await.unwrap(), 3);
        store.save("mailer", 2).await.unwrap();
        store.save("billing", 1).await.unwrap();
        store.save("billing", 3).await.unwrap();
        store.save("audit", 3).await.unwrap();
        store.reset("audit").await.unwrap();
    }
    let wal = dir.path().join("events.db-wal");
    assert!(
        !wal.exists(),
        "closing the store checkpoints and removes the WAL"
    );
    let store = SqliteStore::open(config).await.unwrap();
    assert_eq!(store.load("mailer").await.unwrap(), Some(2));
    assert_eq!(store.load("billing").await.unwrap(), Some(3));
    assert_eq!(store.load("audit").await.unwrap(), None);
    assert_eq!(store.load("never").await.unwrap(), None);
    assert_eq!(store.head().await.unwrap(), 3);
    assert_eq!(*store.watch_head().unwrap().borrow(), 3);
    let read = store
        .read_stream(&kept, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    let again = store
        .append(&gone, ExpectedVersion::NoStream, vec![event("a.b", 4)])
        .await
        .unwrap();
    assert_eq!(
        (again.events[0].version, again.events[0].position),
        (0, 4),
        "a deleted position is not given out again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_see_each_others_writes_in_one_order() {
    let first = TempStore::with(|c| c).await;
    let second = SqliteStore::open(SqliteConfig::new(first.path()))
        .await
        .unwrap();
    let (first, second) = (Arc::new(first), Arc::new(second));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (a, b) = (Arc::clone(&first), Arc::clone(&second));
            tokio::spawn(async move {
                let s = stream(&format!("shared-{w}"));
                for i in 0..25 {
                    let batch = vec![event("x.y", w * 100 + i)];
                    if (w + i) % 2 == 0 {
                        a.append(&s, ExpectedVersion::Any, batch).await.unwrap();
                    } else {
                        b.append(&s, ExpectedVersion::Any, batch).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let seen_by_first = all(&*first, ReadAll::after(0)).await;
    let seen_by_second = all(&*second, ReadAll::after(0)).await;
    assert_eq!(seen_by_first.len(), 100);
    assert_eq!(seen_by_first, seen_by_second);
    let positions: Vec<u64> = seen_by_first.iter().filter_map(|e| e.position()).collect();
    assert_eq!(positions, (1..=100).collect::<Vec<_>>());
    for w in 0..4 {
        let read = second
            .read_stream(&stream(&format!("shared-{w}")), ReadStream::forward())
            .await
            .unwrap();
        let versions: Vec<_> = read.iter().filter_map(|e| e.version()).collect();
        assert_eq!(versions, (0..25).collect::<Vec<_>>());
    }
    assert_eq!(second.head().await.unwrap(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_append_in_a_group_commit_undoes_only_itself() {
    // One write per commit would hide the savepoints: let many queue up.
    let store = Arc::new(TempStore::with(|c| c.max_group_commit(64)).await);
    let contested = stream("contested-1");
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let store = Arc::clone(&store);
            let contested = contested.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store
                        .append(
                            &contested,
                            ExpectedVersion::NoStream,
                            vec![event("c.x", i), event("c.y", i)],
                        )
                        .await
                } else {
                    store
                        .append(
                            &stream(&format!("own-{i}")),
                            ExpectedVersion::NoStream,
                            vec![event("o.x", i)],
                        )
                        .await
                }
            })
        })
        .collect();
    let mut contested_wins = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(_) if i % 2 == 0 => contested_wins += 1,
            Ok(_) => {}
            Err(StoreError::WrongExpectedVersion { actual, .. }) if i % 2 == 0 => {
                assert_eq!(actual, Some(1))
            }
            Err(other) => panic!("append {i}: {other:?}"),
        }
    }
    assert_eq!(contested_wins, 1);
    let log = all(&*store, ReadAll::after(0)).await;
    assert_eq!(log.len(), 32 + 2);
    let read = store
        .read_stream(&contested, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(
        store.head().await.unwrap(),
        log.last().unwrap().position().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_stored_as_the_exact_json_text_given() {
    let store = TempStore::with(|c| c).await;
    let text = " {\"b\": 1,   \"a\" : [1.50, 2e3]} ";
    let payload = Payload::from_json(text).unwrap();
    let s = stream("exact-1");
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![NewEvent::new("exact.text", payload)],
        )
        .await
        .unwrap();
    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(read[0].data().as_str(), text);
    assert_eq!(read[0].correlation_id(), *read[0].id().as_uuid());
    assert_eq!(
        read[0].metadata().correlation_id,
        Some(*read[0].id().as_uuid()),
        "a missing correlation id is set to the event's own id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_all_filters_like_the_memory_store_in_every_plan() {
    let sqlite = TempStore::with(|c| c).await;
    let memory = MemoryStore::new();
    let types = [
        "order.created",
        "order.paid",
        "order.line.added",
        "invoice.sent",
        "invoice.paid",
        "user.registered",
        "a.b",
        "a.c",
        "a.d",
        "a.e",
        "a.f",
    ];
    for chunk in 0..20u64 {
        let batch: Vec<NewEvent> = (0..25u64)
            .map(|i| {
                let n = chunk * 25 + i;
                event(types[(n * 7 % types.len() as u64) as usize], n)
            })
            .collect();
        let s = stream(&format!("mix-{}", chunk % 4));
        sqlite
            .append(&s, ExpectedVersion::Any, batch.clone())
            .await
            .unwrap();
        memory
            .append(&s, ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
    let filters: Vec<Vec<&str>> = vec![
        vec![],
        vec!["#"],
        vec!["order.paid"],
        vec!["order.paid", "invoice.sent", "nothing.here"],
        vec![
            "a.b",
            "a.c",
            "a.d",
            "a.e",
            "a.f",
            "order.paid",
            "invoice.sent",
            "invoice.paid",
            "user.registered",
        ],
        vec!["order.*"],
        vec!["order.#", "*.paid"],
        vec!["#.paid", "a.b"],
    ];
    let n_of = |e: &RecordedEvent| e.data().to_value()["n"].as_u64().unwrap();
    for topics in filters {
        for (batch, limit) in [(7, None), (64, Some(33)), (512, None), (1, Some(5))] {
            let mut query = ReadAll::after(17).batch_size(batch);
            if let Some(limit) = limit {
                query = query.limit(limit);
            }
            for t in &topics {
                query = query.topic(TopicPattern::parse(t).unwrap());
            }
            let got: Vec<u64> = all(&sqlite, query.clone()).await.iter().map(n_of).collect();
            let want: Vec<u64> = all(&memory, query).await.iter().map(n_of).collect();
            assert_eq!(
                got, want,
                "topics {topics:?}, batch {batch}, limit {limit:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_into_the_same_stream_shows_the_links_version_and_its_origin() {
    let store = TempStore::with(|c| c).await;
    let s = stream("self-1");
    let done = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![event("a.b", 1), event("a.b", 2)],
        )
        .await
        .unwrap();
    store
        .link(&s, ExpectedVersion::Exact(1), &[done.events[0].id])
        .await
        .unwrap();
    let back = store.read_stream(&s, ReadStream::backward()).await.unwrap();
    let versions: Vec<_> = back.iter().map(|e| e.version()).collect();
    assert_eq!(versions, [Some(2), Some(1), Some(0)]);
    assert_eq!(back[0].id(), done.events[0].id);
    let origin = back[0]
        .origin
        .as_ref()
        .expect("the link says where it came from");
    assert_eq!((&*origin.stream, origin.version), ("self-1", 0));
    assert!(back[2].origin.is_none());
    let info = store.stream_info(&s).await.unwrap().unwrap();
    assert_eq!((info.version, info.count), (2, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_arguments_give_answers_not_panics() {
    let store = TempStore::with(|c| c).await;
    let s = stream("edge-1");
    store
        .append(&s, ExpectedVersion::Any, vec![event("a.b", 1)])
        .await
        .unwrap();
    let read = |q: ReadStream| store.read_stream(&s, q);
    assert!(
        read(ReadStream::forward().from(u64::MAX))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        read(ReadStream::backward().from(u64::MAX))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        read(ReadStream::forward().limit(usize::MAX))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        read(ReadStream::forward().limit(0))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(all(&store, ReadAll::after(u64::MAX)).await.is_empty());
    let mut zero_batch = ReadAll::after(0);
    zero_batch.batch_size = Some(0);
    assert_eq!(all(&store, zero_batch).await.len(), 1);
    assert_eq!(all(&store, ReadAll::after(0).limit(0)).await.len(), 0);
    let err = store
        .append(&s, ExpectedVersion::Exact(u64::MAX), vec![event("a.b", 2)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Conflict);
    let far = chrono::DateTime::<chrono::Utc>::MAX_UTC;
    assert_eq!(all(&store, ReadAll::after(0).until(far)).await.len(), 1);
    assert!(all(&store, ReadAll::after(0).since(far)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_a_backend_error() {
    let store = TempStore::with(|c| c).await;
    let s = stream("corrupt-1");
    store
        .append(&s, ExpectedVersion::Any, vec![event("a.b", 1)])
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute("UPDATE events SET data = '{not json'", [])
        .unwrap();
    drop(conn);
    let err = store
        .read_stream(&s, ReadStream::forward())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Backend);
    assert!(err.to_string().contains("position 1"), "{err}");
    let err = all_err(&store).await;
    assert_eq!(err.kind(), StoreErrorKind::Backend);
}

async fn all_err<S: EventStore>(store: &S) -> StoreError {
    store
        .read_all(ReadAll::after(0))
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_versioned_and_the_database_is_in_wal_mode() {
    let store = TempStore::with(|c| c.synchronous(Synchronous::Full)).await;
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let (version, name, applied_at): (i64, String, i64) = conn
        .query_row(
            "SELECT version, name, applied_at FROM herald_migrations ORDER BY version LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((version, name.as_str()), (1, "init"));
    let age = chrono::Utc::now().timestamp_micros() - applied_at;
    assert!((0..60_000_000).contains(&age), "applied {age} µs ago");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: HashSet<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for table in [
        "events",
        "streams",
        "stream_entries",
        "checkpoints",
        "subscriber_states",
        "scheduled_retries",
        "herald_migrations",
    ] {
        assert!(tables.contains(table), "{table} in {tables:?}");
    }
}

#[tokio::test]
async fn opening_fails_with_typed_errors() {
    let err = SqliteStore::open(SqliteConfig::new("x.db").read_connections(0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Config(ConfigError::ReadConnections { count: 0 })
        ),
        "{err:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("events.db");
    let err = SqliteStore::open(SqliteConfig::new(&missing))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Database { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");

    let newer = dir.path().join("newer.db");
    drop(SqliteStore::open(SqliteConfig::new(&newer)).await.unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute(
            "INSERT INTO herald_migrations VALUES (999, 'future', 0)",
            [],
        )
        .unwrap();
    let err = SqliteStore::open(SqliteConfig::new(&newer))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpenError::NewerSchema { found: 999, .. }),
        "{err:?}"
    );
}

/// Runs a future on this thread, parking while it waits: no runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => return output,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn the_store_needs_no_tokio_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("events.db"));
    block_on(async move {
        let store = SqliteStore::open(config).await.unwrap();
        let s = stream("plain-1");
        store
            .append(&s, ExpectedVersion::Any, vec![event("a.b", 1)])
            .await
            .unwrap();
        assert_eq!(
            store
                .read_stream(&s, ReadStream::forward())
                .await
                .unwrap()
                .len(),
            1
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_state_saved_through_one_store_is_seen_through_another_and_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("events.db"));
    {
        let first = SqliteStore::open(config.clone()).await.unwrap();
        let second = SqliteStore::open(config.clone()).await.unwrap();
        assert_eq!(second.load_enabled("mailer").await.unwrap(), None);
        first.save_enabled("mailer", false).await.unwrap();
        assert_eq!(second.load_enabled("mailer").await.unwrap(), Some(false));
        second.save_enabled("mailer", true).await.unwrap();
        second.save_enabled("billing", false).await.unwrap();
        assert_eq!(first.load_enabled("mailer").await.unwrap(), Some(true));
        // The state is apart from the checkpoint: resetting one keeps the
        // other.
        first.save("billing", 4).await.unwrap();
        first.reset("billing").await.unwrap();
        assert_eq!(first.load_enabled("billing").await.unwrap(), Some(false));
    }
    let store = SqliteStore::open(config).await.unwrap();
    assert_eq!(store.load_enabled("mailer").await.unwrap(), Some(true));
    assert_eq!(store.load_enabled("billing").await.unwrap(), Some(false));
    assert_eq!(store.load_enabled("audit").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_retries_survive_reopening_with_due_times_to_the_microsecond() {
    use herald::store::ScheduledRetry;
    use herald::{AttemptError, ErrorKind, EventId};

    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("events.db"));
    let whole = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
    let retry = ScheduledRetry {
        event_id: EventId::new(),
        position: 42,
        errors: vec![AttemptError {
            attempt: 1,
            message: "refused".to_owned(),
            kind: ErrorKind::Handler,
            at: whole,
        }],
        due: whole + chrono::Duration::nanoseconds(789),
    };
    {
        let store = SqliteStore::open(config.clone()).await.unwrap();
        store.schedule_retry("mailer", &retry).await.unwrap();
        store.save("mailer", 41).await.unwrap();
    }
    let store = SqliteStore::open(config).await.unwrap();
    let found = store.scheduled_retries("mailer").await.unwrap();
    assert_eq!(
        found,
        [ScheduledRetry {
            due: whole,
            ..retry.clone()
        }],
        "kept across reopening, the due time rounded down to the microsecond"
    );
    // The retry is apart from the checkpoint: resetting one keeps the other.
    store.reset("mailer").await.unwrap();
    assert_eq!(store.scheduled_retries("mailer").await.unwrap().len(), 1);
    store.clear_retry("mailer", retry.event_id).await.unwrap();
    assert!(store.scheduled_retries("mailer").await.unwrap().is_empty());
}

/// The WAL is copied back into the database file in the background, well
/// before it reaches `checkpoint_pages` (where the writer would do it in a
/// commit): after a burst of appends and no more, the main file grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_appends_reach_the_database_file_without_a_commit_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    // About 2 MB of WAL: far below the default 10,000 pages (40 MB).
    for n in 0..20u64 {
        let events = (0..100)
            .map(|i| event("order.created", n * 100 + i))
            .collect();
        store
            .append(&stream(&format!("order-{n}")), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = std::fs::metadata(&path).unwrap().len();
        if now > before + 256 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {now} bytes (from {before}): nothing was checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(store);
}
