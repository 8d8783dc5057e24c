//! The outbox relay against a real PostgreSQL: concurrent writers that
//! commit out of position order, a relay process killed with SIGKILL and
//! restarted, and two relay processes of which only the lease holder relays.
//!
//! A broker cannot be seen across processes through `MemoryTransport`, so
//! the relay processes publish through [`FileTransport`], a test transport
//! that appends each event as a line to a file of its own before returning
//! `Ok`: the file plays the broker, and the parent reads it after the kill.
//!
//! The child processes are this test binary run again
//! (`herald_testkit::process`): the `relay_child` test plays the role when
//! the role variable is set, and exits as soon as its stdin closes.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::TryStreamExt;
use herald::relay::{Relay, checkpoint_name};
use herald::store::{
    CheckpointStore, EventStore, ExpectedVersion, LeaseStore, ReadAll, StreamName,
};
use herald::transport::{Consumer, ConsumerSpec, MemoryTransport, Transport, TransportError};
use herald::{
    DeadLetterStore, EventId, MemoryDeadLetterStore, NewEvent, RecordedEvent, TopicPattern,
};
use herald_postgres::PgStore;
use herald_testkit::process::{self, ChildGuard, kill_after};
use serde_json::json;

const SCHEMA: &str = "HERALD_RELAY_SCHEMA";
const OUT: &str = "HERALD_RELAY_OUT";
const TTL_MS: &str = "HERALD_RELAY_TTL_MS";
/// The relay processes' batch size.
const BATCH: usize = 100;
const PATIENCE: Duration = Duration::from_secs(90);

/// A test transport that stands in for a broker visible across processes:
/// `publish` appends one line per event (`position stream version id`) to
/// its file, with one write per line, and returns `Ok` once all are
/// written. A SIGKILL during a publish leaves the lines written so far, as
/// a broker keeps the messages it confirmed before the publisher died.
struct FileTransport {
    file: Mutex<std::fs::File>,
    /// Print `published <last position>` on stdout after each publish, for
    /// a parent that chooses when to kill.
    announce: bool,
    dead_letters: MemoryDeadLetterStore,
}

impl FileTransport {
    fn open(path: &Path, announce: bool) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the transport's file");
        Self {
            file: Mutex::new(file),
            announce,
            dead_letters: MemoryDeadLetterStore::new(),
        }
    }
}

#[async_trait]
impl Transport for FileTransport {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError> {
        {
            let mut file = self.file.lock().unwrap();
            for e in events {
                let line = format!(
                    "{} {} {} {}\n",
                    e.position().unwrap(),
                    e.stream().unwrap(),
                    e.version().unwrap(),
                    e.id()
                );
                file.write_all(line.as_bytes())
                    .map_err(|err| TransportError::broker("file", err))?;
            }
        }
        if self.announce {
            if let Some(last) = events.last().and_then(RecordedEvent::position) {
                let mut out = std::io::stdout().lock();
                writeln!(out, "published {last}").unwrap();
                out.flush().unwrap();
            }
        }
        Ok(())
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, TransportError> {
        Err(TransportError::InvalidName {
            transport: "file",
            name: spec.name.clone(),
            reason: "the file transport only publishes".into(),
        })
    }

    async fn redeliver(&self, _: &str, event: &RecordedEvent) -> Result<(), TransportError> {
        self.publish(std::slice::from_ref(event)).await
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(self.dead_letters.clone())
    }

    async fn close(&self) -> Result<(), TransportError> {
        Ok(())
    }
}

/// One published event as a file line has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    position: u64,
    stream: String,
    version: u64,
    id: EventId,
}

/// The lines of a transport file (none if it does not exist). A line cut
/// by the kill is left out: it was not "confirmed".
fn read_lines(path: &Path) -> Vec<Line> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let mut next = || parts.next().expect("a whole line");
            Line {
                position: next().parse().unwrap(),
                stream: next().to_owned(),
                version: next().parse().unwrap(),
                id: next().parse().unwrap(),
            }
        })
        .collect()
}

/// Checks that each stream's first deliveries come in version order from 0
/// without a gap, and that a copy only repeats what came before (a batch
/// published again from its start); returns the distinct ids.
fn assert_stream_order<'a>(
    seen: impl IntoIterator<Item = (&'a str, u64, EventId)>,
) -> HashSet<EventId> {
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut ids = HashSet::new();
    for (stream, version, id) in seen {
        let expected = next.entry(stream).or_insert(0);
        assert!(
            version <= *expected,
            "stream {stream}: version {version} came before version {expected}"
        );
        if version == *expected {
            *expected += 1;
        }
        ids.insert(id);
    }
    ids
}

/// A file for a transport, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("herald-pg-relay-{name}.log"));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spawn(role: &str, schema: &str, out: &Path, ttl: Duration) -> ChildGuard {
    let url = support::url();
    let ttl = ttl.as_millis().to_string();
    process::spawn_self(
        "relay_child",
        role,
        &[
            (SCHEMA, OsStr::new(schema)),
            (OUT, out.as_os_str()),
            (TTL_MS, OsStr::new(&ttl)),
            (support::URL_VAR, OsStr::new(&url)),
        ],
    )
}

/// The role a child plays, if any: a relay (`relay`: alone; `leased`: on
/// the schema's leases) publishing to the file named by `OUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_child() {
    let Some(role) = process::role() else {
        return; // run as an ordinary test: nothing to do
    };
    process::exit_when_parent_is_gone();
    let schema = std::env::var(SCHEMA).expect("the schema");
    let out = PathBuf::from(std::env::var(OUT).expect("the output file"));
    let ttl = Duration::from_millis(std::env::var(TTL_MS).unwrap().parse().unwrap());
    let config = support::config().schema(&schema).max_connections(4);
    let store = Arc::new(support::store_with(config).await);
    let transport = Arc::new(FileTransport::open(&out, true));
    let builder = Relay::builder(role.as_str(), Arc::clone(&store), transport).batch_size(BATCH);
    let _relay = match role.as_str() {
        "relay" => builder.spawn().unwrap(),
        "leased" => builder.lease_store(store).lease_ttl(ttl).spawn().unwrap(),
        other => panic!("unknown role {other}"),
    };
    std::future::pending::<()>().await;
}

/// Appends `rounds` rounds of `per_append` events to each of `streams`
/// streams; returns every id.
async fn preload(
    store: &PgStore,
    prefix: &str,
    streams: usize,
    rounds: usize,
    per_append: usize,
) -> Vec<EventId> {
    let mut ids = Vec::new();
    for round in 0..rounds {
        for s in 0..streams {
            let stream = StreamName::new(format!("{prefix}-{s}")).unwrap();
            let events = (0..per_append)
                .map(|n| NewEvent::new("relay.loaded", json!({ "round": round, "n": n })))
                .collect();
            let done = store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("append");
            ids.extend(done.events.iter().map(|e| e.id));
        }
    }
    ids
}

async fn positions(store: &PgStore) -> Vec<u64> {
    store
        .read_all(ReadAll::after(0))
        .map_ok(|e| e.position().unwrap())
        .try_collect()
        .await
        .unwrap()
}

/// Eight writers, two of which hold their transactions open for a while
/// (so positions commit out of order), append while the relay runs; the
/// broker's consumer gets every committed event, each stream in order, and
/// no rolled-back one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_every_event_of_eight_concurrent_writers_in_stream_order() {
    const FAST: u64 = 6;
    const SLOW: u64 = 2;
    let store = Arc::new(support::store_with(support::config().max_connections(20)).await);
    let broker = Arc::new(MemoryTransport::new());
    let mut consumer = broker
        .subscribe(&ConsumerSpec::new(
            "everything",
            vec![TopicPattern::parse("#").unwrap()],
        ))
        .await
        .unwrap();
    let relay = Relay::builder("writers", Arc::clone(&store), broker.clone())
        .batch_size(50)
        .spawn()
        .unwrap();

    let mut writers = Vec::new();
    for w in 0..FAST {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let stream = StreamName::new(format!("fast-{w}")).unwrap();
            let mut ids = Vec::new();
            for i in 0..50u64 {
                let events = (0..=i % 3)
                    .map(|n| NewEvent::new("relay.fast", json!({ "i": i, "n": n })))
                    .collect();
                let done = store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .expect("append");
                ids.extend(done.events.iter().map(|e| e.id));
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
            (ids, Vec::new())
        }));
    }
    for w in 0..SLOW {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let stream = StreamName::new(format!("slow-{w}")).unwrap();
            let (mut kept, mut dropped) = (Vec::new(), Vec::new());
            for i in 0..4u64 {
                let mut tx = store.pool().begin().await.expect("begin");
                let done = store
                    .append_in_tx(
                        &mut tx,
                        &stream,
                        ExpectedVersion::Any,
                        vec![
                            NewEvent::new("relay.slow", json!({ "i": i, "n": 0 })),
                            NewEvent::new("relay.slow", json!({ "i": i, "n": 1 })),
                        ],
                    )
                    .await
                    .expect("append in a transaction");
                let ids = done.events.iter().map(|e| e.id);
                // Held open while the fast writers commit later positions.
                tokio::time::sleep(Duration::from_millis(400 + 300 * w)).await;
                if (w + i) % 4 == 3 {
                    tx.rollback().await.expect("roll back");
                    dropped.extend(ids);
                } else {
                    tx.commit().await.expect("commit");
                    kept.extend(ids);
                }
            }
            (kept, dropped)
        }));
    }
    let (mut kept, mut dropped) = (HashSet::new(), HashSet::new());
    for writer in writers {
        let (k, d) = writer.await.expect("writer");
        kept.extend(k);
        dropped.extend(d);
    }
    assert!(!dropped.is_empty(), "the test rolls some appends back");
    let head = store.head().await.unwrap();
    tokio::time::timeout(PATIENCE, relay.wait_forwarded(head))
        .await
        .unwrap_or_else(|_| panic!("forwarded up to {} of {head}", relay.forwarded()));
    relay.stop().await;

    let mut seen = Vec::new();
    for _ in 0..broker.queued("everything") {
        let delivery = consumer.next().await.unwrap();
        let e = delivery.event();
        seen.push((e.stream().unwrap().to_owned(), e.version().unwrap(), e.id()));
        delivery.ack().await.unwrap();
    }
    let got = assert_stream_order(seen.iter().map(|(s, v, id)| (s.as_str(), *v, *id)));
    assert_eq!(
        got, kept,
        "the broker got every committed event and nothing else"
    );
    assert!(got.is_disjoint(&dropped));
    // The relay may have read a later head than the test (positions of
    // rolled-back appends count): the checkpoint is at least the head.
    let saved = CheckpointStore::load(&*store, &checkpoint_name("writers"))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(saved >= head, "checkpoint {saved}, head {head}");
}

/// A relay process killed with SIGKILL in the middle of its work, then
/// restarted: every event reaches the broker, each stream in order, and
/// only the batch in flight at the kill is published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_restarts_from_its_checkpoint_and_loses_nothing() {
    let store = Arc::new(support::store().await);
    let schema = store.config().schema.clone();
    let ids = preload(&store, "crash", 30, 10, 10).await;
    let head = store.head().await.unwrap();
    let out = TempFile::new(&schema);

    // Killed after its eighth confirmed batch, maybe while writing the ninth.
    kill_after(
        spawn("relay", &schema, &out.0, Duration::ZERO),
        "published ",
        8,
    );
    let at_kill = CheckpointStore::load(&*store, &checkpoint_name("relay"))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(at_kill < head, "the kill came before the end");
    let before = read_lines(&out.0);
    assert!(before.len() >= 8 * BATCH, "{} lines", before.len());

    let relay = Relay::builder(
        "relay",
        Arc::clone(&store),
        Arc::new(FileTransport::open(&out.0, false)),
    )
    .batch_size(BATCH)
    .spawn()
    .unwrap();
    tokio::time::timeout(PATIENCE, relay.wait_forwarded(head))
        .await
        .expect("the restarted relay caught up");
    relay.stop().await;

    let lines = read_lines(&out.0);
    let got = assert_stream_order(lines.iter().map(|l| (l.stream.as_str(), l.version, l.id)));
    assert_eq!(
        got,
        ids.iter().copied().collect::<HashSet<_>>(),
        "an event was lost"
    );
    // Copies only of the batch after the checkpoint saved before the kill.
    let in_flight: BTreeSet<u64> = positions(&store)
        .await
        .into_iter()
        .filter(|p| *p > at_kill)
        .take(BATCH)
        .collect();
    let mut count: HashMap<u64, usize> = HashMap::new();
    for l in &lines {
        *count.entry(l.position).or_default() += 1;
    }
    for (position, n) in &count {
        assert!(
            *n == 1 || (*n == 2 && in_flight.contains(position)),
            "position {position} published {n} times (checkpoint at the kill: {at_kill})"
        );
    }
}

/// Who holds the relay's lease: the owner's process id (member ids start
/// with it).
async fn lease_holder(store: &PgStore, relay: &str) -> Option<u32> {
    let states = store.partitions(&checkpoint_name(relay)).await.unwrap();
    states
        .iter()
        .find(|s| s.partition == 0)
        .and_then(|s| s.owner.as_deref())
        .and_then(|owner| owner.split('-').next())
        .and_then(|pid| pid.parse().ok())
}

async fn members(store: &PgStore, relay: &str) -> usize {
    let schema = &store.config().schema;
    let n: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".group_members WHERE subscriber = $1 AND expires_at > now()"
    ))
    .bind(checkpoint_name(relay))
    .fetch_one(store.pool())
    .await
    .unwrap();
    n as usize
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two relay processes on the schema's leases: only the holder publishes;
/// killed with SIGKILL, the other takes over within the TTL and a margin,
/// and between them every event reaches the broker, each stream in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_relay_processes_only_the_lease_holder_relays_and_the_other_takes_over() {
    const TTL: Duration = Duration::from_millis(2000);
    let store = Arc::new(support::store().await);
    let schema = store.config().schema.clone();
    let out_a = TempFile::new(&format!("{schema}-a"));
    let out_b = TempFile::new(&format!("{schema}-b"));
    let mut ids = preload(&store, "leased", 10, 5, 10).await;

    let a = spawn("leased", &schema, &out_a.0, TTL);
    let a_pid = a.id();
    wait_until("the first process holds the lease", PATIENCE, || async {
        lease_holder(&store, "leased").await == Some(a_pid)
    })
    .await;
    let b = spawn("leased", &schema, &out_b.0, TTL);
    wait_until("the second process joined", PATIENCE, || async {
        members(&store, "leased").await == 2
    })
    .await;

    // Events keep coming while both run.
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..150 {
                ids.extend(preload(&store, &format!("live{i}"), 1, 1, 10).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        })
    };
    wait_until(
        "the first process relayed live events",
        PATIENCE,
        || async { read_lines(&out_a.0).len() > 1000 },
    )
    .await;
    assert!(read_lines(&out_b.0).is_empty(), "the standby published");
    assert_eq!(lease_holder(&store, "leased").await, Some(a_pid));

    kill_after(a, "published ", 0);
    let killed = Instant::now();
    let b_pid = b.id();
    wait_until(
        "the second process took the lease over",
        TTL + TTL / 3 + Duration::from_secs(3),
        || async { lease_holder(&store, "leased").await == Some(b_pid) },
    )
    .await;
    let took = killed.elapsed();
    assert!(
        took >= TTL / 2,
        "taken over after {took:?}, before the lease could expire"
    );

    ids.extend(writer.await.unwrap());
    let head = store.head().await.unwrap();
    let want: HashSet<EventId> = ids.iter().copied().collect();
    wait_until(
        "the second process relayed everything",
        PATIENCE,
        || async {
            let all: HashSet<EventId> = read_lines(&out_a.0)
                .into_iter()
                .chain(read_lines(&out_b.0))
                .map(|l| l.id)
                .collect();
            all == want
        },
    )
    .await;
    let (from_a, from_b) = (read_lines(&out_a.0), read_lines(&out_b.0));
    assert!(!from_b.is_empty());
    // The broker's order: what the first process published, then the second.
    let got = assert_stream_order(
        from_a
            .iter()
            .chain(&from_b)
            .map(|l| (l.stream.as_str(), l.version, l.id)),
    );
    assert_eq!(got, want);
    let copies = from_a.len() + from_b.len() - want.len();
    assert!(
        copies <= BATCH,
        "{copies} copies: more than the batch in flight"
    );
    wait_until("the checkpoint reached the head", PATIENCE, || async {
        store
            .partitions(&checkpoint_name("leased"))
            .await
            .unwrap()
            .first()
            .is_some_and(|p| p.position >= head)
    })
    .await;
    drop(b);
}
