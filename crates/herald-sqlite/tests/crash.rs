//! Crash safety with real processes: a writer and a consumer are killed with
//! SIGKILL in the middle of their work, and the store is checked after.
//!
//! The child processes are this test binary run again
//! (`herald_testkit::process`): the `crash_child` test then plays the role
//! and never returns on its own.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use herald::store::{EventStore, ExpectedVersion, ReadAll, ReadStream, StreamName};
use herald::{
    Bus, Context, DeliveryMode, EventId, HandlerResult, NewEvent, RecordedEvent, Subscriber,
};
use herald_sqlite::{SqliteConfig, SqliteStore};
use herald_testkit::process::{self, kill_after};
use serde_json::json;

const DB: &str = "HERALD_CRASH_DB";
const HANDLED: &str = "HERALD_CRASH_HANDLED";
/// Events per append of the writer.
const BATCH: usize = 10;

/// Starts this test binary again in a child role.
fn spawn(role: &str, db: &Path, handled: Option<&Path>) -> process::ChildGuard {
    let mut env = vec![(DB, db.as_os_str())];
    if let Some(handled) = handled {
        env.push((HANDLED, handled.as_os_str()));
    }
    process::spawn_self("crash_child", role, &env)
}

async fn open(db: &Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(db))
        .await
        .expect("open the store")
}

/// The role a child plays, if any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Some(role) = process::role() else {
        return; // run as an ordinary test: nothing to do
    };
    process::exit_when_parent_is_gone();
    let db = PathBuf::from(std::env::var(DB).expect("the database path"));
    let store = Arc::new(open(&db).await);
    let stdout = std::io::stdout();
    match role.as_str() {
        "writer" => {
            for i in 0.. {
                let stream = StreamName::new(format!("crash-{i}")).unwrap();
                let events = (0..BATCH)
                    .map(|n| NewEvent::new("crash.written", json!({ "i": i, "n": n })))
                    .collect();
                store
                    .append(&stream, ExpectedVersion::NoStream, events)
                    .await
                    .expect("append");
                let mut out = stdout.lock();
                writeln!(out, "ok {i}").unwrap();
                out.flush().unwrap();
            }
        }
        "consumer" => {
            let handled = PathBuf::from(std::env::var(HANDLED).expect("the handled log"));
            let log = Arc::new(std::sync::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(handled)
                    .expect("open the handled log"),
            ));
            let bus = Bus::builder().store(Arc::clone(&store)).build();
            bus.subscribe(
                Subscriber::new_sync(
                    "crash-consumer",
                    move |e: &RecordedEvent, _: &Context| -> HandlerResult {
                        let mut file = log.lock().unwrap();
                        writeln!(file, "{}", e.id())?;
                        file.flush()?;
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "handled {}", e.id())?;
                        out.flush()?;
                        Ok(())
                    },
                )
                .topic("#")
                .mode(DeliveryMode::Durable)
                .batch_size(50),
            )
            .unwrap();
            std::future::pending::<()>().await;
        }
        other => panic!("unknown role {other}"),
    }
}

/// A writer killed mid-stream: every append that returned Ok is there, whole,
/// and no append is there in part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_loses_no_acknowledged_append_and_leaves_none_in_part() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    drop(open(&db).await); // create the schema before the child races it
    let acknowledged = kill_after(spawn("writer", &db, None), "ok ", 40);

    let store = open(&db).await;
    for i in &acknowledged {
        let stream = StreamName::new(format!("crash-{i}")).unwrap();
        let events = store
            .read_stream(&stream, ReadStream::forward())
            .await
            .unwrap();
        assert_eq!(events.len(), BATCH, "acknowledged append {i} is not whole");
    }
    let all: Vec<RecordedEvent> = store
        .read_all(ReadAll::after(0))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len() % BATCH, 0, "an append is stored in part");
    assert!(all.len() >= acknowledged.len() * BATCH);
    let mut per_stream = std::collections::HashMap::<String, usize>::new();
    for e in &all {
        *per_stream
            .entry(e.stream().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(per_stream.values().all(|n| *n == BATCH), "{per_stream:?}");
}

/// A durable consumer killed mid-batch and restarted handles every event at
/// least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_resumes_and_handles_every_event_at_least_once() {
    const EVENTS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let handled_log = dir.path().join("handled.log");
    let mut written: HashSet<EventId> = HashSet::new();
    {
        let store = open(&db).await;
        for batch in 0..EVENTS / 100 {
            let stream = StreamName::new(format!("work-{batch}")).unwrap();
            let events = (0..100)
                .map(|n| NewEvent::new("work.queued", json!({ "n": n })))
                .collect();
            let done = store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
            written.extend(done.events.iter().map(|e| e.id));
        }
    }
    // Killed after 130 events: in the middle of its third batch of 50.
    kill_after(spawn("consumer", &db, Some(&handled_log)), "handled ", 130);
    let before_crash: HashSet<EventId> = std::fs::read_to_string(&handled_log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(before_crash.len() >= 130);

    let store = Arc::new(open(&db).await);
    let checkpoint = herald::store::CheckpointStore::load(&*store, "crash-consumer")
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        checkpoint < EVENTS as u64,
        "the crash happened before the end"
    );
    let after: Arc<std::sync::Mutex<HashSet<EventId>>> = Arc::default();
    let (seen, done) = (Arc::clone(&after), Arc::new(tokio::sync::Notify::new()));
    let notify = Arc::clone(&done);
    let bus = Bus::builder().store(Arc::clone(&store)).build();
    bus.subscribe(
        Subscriber::new_sync(
            "crash-consumer",
            move |e: &RecordedEvent, _: &Context| -> HandlerResult {
                seen.lock().unwrap().insert(e.id());
                notify.notify_one();
                Ok(())
            },
        )
        .topic("#")
        .mode(DeliveryMode::Durable)
        .batch_size(50),
    )
    .unwrap();
    let head = store.head().await.unwrap();
    let caught_up = async {
        while bus.subscriber("crash-consumer").and_then(|s| s.checkpoint) != Some(head) {
            tokio::select! {
                _ = done.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), caught_up)
        .await
        .expect("the restarted consumer caught up");
    bus.shutdown().await;
    let after = after.lock().unwrap().clone();
    let union: HashSet<EventId> = before_crash.union(&after).copied().collect();
    assert_eq!(union, written, "an event was never handled");
    // Events after the saved checkpoint came again: at least once, not
    // exactly once.
    assert!(after.len() >= EVENTS - checkpoint as usize);
}
