//! Crash safety against a real PostgreSQL: a writer and a consumer are killed
//! with SIGKILL in the middle of their work, and a durable subscriber has its
//! connections terminated by the server while events are published.
//!
//! The child processes are this test binary run again
//! (`herald_testkit::process`): the `crash_child` test then plays the role
//! and never returns on its own; it also exits as soon as its stdin closes,
//! so that it cannot outlive the test process, however that one ends.

mod support;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use herald::store::{
    CheckpointStore, EventStore, ExpectedVersion, ReadAll, ReadStream, StreamName,
};
use herald::{
    Bus, Context, DeliveryMode, EventId, HandlerResult, NewEvent, RecordedEvent, Subscriber,
};
use herald_postgres::{PgConfig, PgStore};
use herald_testkit::process::{self, kill_after};
use serde_json::json;
use sqlx::Connection;
use tokio::sync::Notify;

const SCHEMA: &str = "HERALD_CRASH_SCHEMA";
const HANDLED: &str = "HERALD_CRASH_HANDLED";
/// Events per append of the writer.
const BATCH: usize = 10;

/// Starts this test binary again in a child role, on this schema.
fn spawn(role: &str, schema: &str, handled: Option<&Path>) -> process::ChildGuard {
    let url = support::url();
    let mut env = vec![
        (SCHEMA, OsStr::new(schema)),
        (support::URL_VAR, OsStr::new(&url)),
    ];
    if let Some(handled) = handled {
        env.push((HANDLED, handled.as_os_str()));
    }
    process::spawn_self("crash_child", role, &env)
}

/// A config for this schema, on the test database.
fn config_for(schema: &str) -> PgConfig {
    support::config().schema(schema)
}

async fn open(schema: &str) -> PgStore {
    support::store_with(config_for(schema)).await
}

/// A file for the consumer's log of handled ids, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("herald-pg-crash-{name}.log"));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The role a child plays, if any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Some(role) = process::role() else {
        return; // run as an ordinary test: nothing to do
    };
    process::exit_when_parent_is_gone();
    let schema = std::env::var(SCHEMA).expect("the schema");
    let store = Arc::new(open(&schema).await);
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
                let mut out = std::io::stdout().lock();
                writeln!(out, "ok {i}").unwrap();
                out.flush().unwrap();
            }
        }
        "consumer" => {
            let handled = PathBuf::from(std::env::var(HANDLED).expect("the handled log"));
            let log = Arc::new(Mutex::new(
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
    // Create the schema before the child uses it.
    let store = support::store().await;
    let schema = store.config().schema.clone();
    let acknowledged = kill_after(spawn("writer", &schema, None), "ok ", 40);
    drop(store);

    let store = open(&schema).await;
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
    assert!(all.len() >= acknowledged.len() * BATCH);
    let mut per_stream = HashMap::<String, usize>::new();
    for e in &all {
        *per_stream
            .entry(e.stream().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        per_stream.values().all(|n| *n == BATCH),
        "an append is stored in part: {per_stream:?}"
    );
    assert_eq!(all.len() % BATCH, 0, "an append is stored in part");
}

/// A durable consumer killed mid-batch and restarted handles every event at
/// least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_resumes_and_handles_every_event_at_least_once() {
    const EVENTS: usize = 600;
    let store = Arc::new(support::store().await);
    let schema = store.config().schema.clone();
    let handled_log = TempFile::new(&schema);
    let mut written: HashSet<EventId> = HashSet::new();
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
    // Killed after 130 events: in the middle of its third batch of 50.
    kill_after(
        spawn("consumer", &schema, Some(&handled_log.0)),
        "handled ",
        130,
    );
    let before_crash: HashSet<EventId> = std::fs::read_to_string(&handled_log.0)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(before_crash.len() >= 130, "{}", before_crash.len());

    let checkpoint = CheckpointStore::load(&*store, "crash-consumer")
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        checkpoint < EVENTS as u64,
        "the crash happened before the end"
    );
    let after: Arc<Mutex<HashSet<EventId>>> = Arc::default();
    let (seen, done) = (Arc::clone(&after), Arc::new(Notify::new()));
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

/// The URL with `application_name` set, to tell this store's connections
/// apart from every other test's.
fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// Terminates every backend of the database whose application name is
/// `name`; returns how many.
async fn terminate(admin: &mut sqlx::PgConnection, name: &str) -> usize {
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND application_name = $1",
    )
    .bind(name)
    .fetch_all(admin)
    .await
    .expect("terminate the store's backends");
    killed.into_iter().filter(|k| *k).count()
}

/// The server drops every connection of the store, repeatedly, while events
/// are published: the durable subscriber reconnects by itself and handles
/// every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_subscriber_survives_its_connections_being_terminated() {
    const EVENTS: usize = 300;
    let mut config = support::config();
    // The schema is unique to this test, so its name marks the connections.
    let app = config.schema.clone();
    config.url = with_application_name(&config.url, &app);
    config.poll_interval = Duration::from_millis(100);
    let store = Arc::new(support::store_with(config).await);
    let mut admin = sqlx::PgConnection::connect(&support::url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable (set {}): {e}",
                support::URL_VAR
            )
        });

    let handled: Arc<Mutex<HashSet<EventId>>> = Arc::default();
    let changed = Arc::new(Notify::new());
    let bus = Bus::builder().store(Arc::clone(&store)).build();
    let (seen, notify) = (Arc::clone(&handled), Arc::clone(&changed));
    bus.subscribe(
        Subscriber::new_sync(
            "survivor",
            move |e: &RecordedEvent, _: &Context| -> HandlerResult {
                seen.lock().unwrap().insert(e.id());
                notify.notify_one();
                Ok(())
            },
        )
        .topic("#")
        .mode(DeliveryMode::Durable)
        .batch_size(20),
    )
    .unwrap();

    // Terminates the store's backends every 50 ms until publishing is done.
    let publishing = Arc::new(AtomicBool::new(true));
    let terminated = Arc::new(AtomicU64::new(0));
    let killer = {
        let (publishing, terminated, app) = (
            Arc::clone(&publishing),
            Arc::clone(&terminated),
            app.clone(),
        );
        tokio::spawn(async move {
            while publishing.load(Ordering::Acquire) {
                let n = terminate(&mut admin, &app).await;
                terminated.fetch_add(n as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Once more when idle: the subscriber is waiting on the head
            // watch and the pool then, and must come back from that too.
            let n = terminate(&mut admin, &app).await;
            terminated.fetch_add(n as u64, Ordering::Relaxed);
        })
    };

    let mut published = HashSet::new();
    let mut failed_publishes = 0u32;
    let publish_all = async {
        for n in 0..EVENTS {
            let id = EventId::new();
            loop {
                let event = NewEvent::new("crash.published", json!({ "n": n })).with_id(id);
                match bus.publish_new(event).await {
                    Ok(recorded) => {
                        assert_eq!(recorded.id(), id);
                        break;
                    }
                    Err(_) => {
                        failed_publishes += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            published.insert(id);
            if n % 10 == 9 {
                // Let the killer in between the publishes.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), publish_all)
        .await
        .expect("every event was published in the end");
    publishing.store(false, Ordering::Release);
    killer.await.expect("the killer task");
    let terminated = terminated.load(Ordering::Relaxed);
    assert!(terminated > 0, "no connection of the store was terminated");

    let all_handled = async {
        loop {
            let notified = changed.notified();
            if handled.lock().unwrap().is_superset(&published) {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), all_handled)
        .await
        .is_err()
    {
        let missing = published.difference(&handled.lock().unwrap()).count();
        panic!(
            "the subscriber did not handle {missing} of {EVENTS} events within 60 s \
             ({terminated} backends terminated, {failed_publishes} publishes failed): {:?}",
            bus.subscriber("survivor")
        );
    }
    // And its checkpoint reaches the head, saved through new connections.
    let head = store.head().await.unwrap();
    let saved = async {
        while bus.subscriber("survivor").and_then(|s| s.checkpoint) != Some(head) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), saved)
        .await
        .expect("the subscriber's checkpoint reached the head");
    assert_eq!(
        CheckpointStore::load(&*store, "survivor").await.unwrap(),
        Some(head)
    );
    bus.shutdown().await;
    assert_eq!(
        *handled.lock().unwrap(),
        published,
        "the subscriber handled exactly the published events"
    );
    eprintln!("{terminated} backends terminated, {failed_publishes} publishes retried");
}
