//! Competing consumers with real processes: children of this test binary
//! run the same durable subscriber on one PostgreSQL schema and record every
//! event they handle in a table; the parent starts them, stops them
//! gracefully or kills one with SIGKILL, and checks what they handled.
//!
//! The children are this binary run again (`herald_testkit::process`): the
//! `competing_member` test plays the member when the role variable is set.
//! A member stops gracefully (its bus shut down: batches finished,
//! checkpoints saved, partitions given back) when it reads `stop` on its
//! stdin, and exits at once when its stdin closes.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::store::{EventStore, ExpectedVersion, LeaseStore, StreamName};
use herald::{
    Bus, DeliveryMode, EventId, HandlerError, NewEvent, RetryPolicy, Subscriber, handler_fn,
};
use herald_postgres::PgStore;
use herald_testkit::process::{self, ChildGuard};
use serde_json::json;
use uuid::Uuid;

const SCHEMA: &str = "HERALD_COMPETING_SCHEMA";
const TTL_MS: &str = "HERALD_COMPETING_TTL_MS";
const NAME: &str = "competing-work";
const PARTITIONS: u32 = 16;
const STREAMS: usize = 40;
const PATIENCE: Duration = Duration::from_secs(90);

/// One row of the results table: who handled what, in handling order.
#[derive(Debug, Clone)]
struct Handled {
    event_id: Uuid,
    stream: String,
    version: i64,
    pid: i32,
}

/// The member role.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_member() {
    let Some(role) = process::role() else {
        return; // run as an ordinary test: nothing to do
    };
    assert_eq!(role, "member");
    let schema = std::env::var(SCHEMA).expect("the schema");
    let ttl = Duration::from_millis(std::env::var(TTL_MS).expect("the ttl").parse().unwrap());
    // `stop` on stdin: shut down gracefully; stdin closed: exit at once.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut stop = Some(stop_tx);
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(line) if line.trim() == "stop" => {
                    if let Some(tx) = stop.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::process::exit(3);
    });
    // A small pool: the tests of other suites share the server's
    // connections.
    let config = support::config().schema(&schema).max_connections(8);
    let store = Arc::new(support::store_with(config).await);
    let pool = store.pool().clone();
    let insert = format!(
        "INSERT INTO \"{schema}\".handled (event_id, stream, version, pid) VALUES ($1, $2, $3, $4)"
    );
    let bus = Bus::builder()
        .store(Arc::clone(&store))
        .lease_store(Arc::clone(&store) as Arc<dyn LeaseStore>)
        .dead_letter_store(Arc::clone(&store) as Arc<dyn herald::DeadLetterStore>)
        .build();
    bus.subscribe(
        Subscriber::new(
            NAME,
            handler_fn(move |event, _ctx| {
                let (pool, insert) = (pool.clone(), insert.clone());
                async move {
                    sqlx::query(&insert)
                        .bind(*event.id().as_uuid())
                        .bind(event.stream().unwrap_or_default())
                        .bind(event.version().unwrap_or_default() as i64)
                        .bind(std::process::id() as i32)
                        .execute(&pool)
                        .await
                        .map_err(HandlerError::retry)?;
                    Ok(())
                }
            }),
        )
        .topic("work.#")
        .mode(DeliveryMode::Durable)
        // A failed insert (the server busy) is tried again rather than
        // parked, so that the results table is complete.
        .retry(
            RetryPolicy::exponential(Duration::from_millis(50), Duration::from_secs(2))
                .max_attempts(40),
        )
        .competing(PARTITIONS)
        .lease_ttl(ttl)
        .poll_interval(Duration::from_millis(100))
        .batch_size(20),
    )
    .unwrap();
    let _ = stop_rx.await;
    bus.shutdown().await;
    println!("stopped");
}

/// The parent's view of the schema the members share.
struct Group {
    store: PgStore,
    schema: String,
    ttl: Duration,
    appended: Vec<EventId>,
}

impl Group {
    async fn new(ttl: Duration) -> Self {
        let store = support::store().await;
        let schema = store.config().schema.clone();
        sqlx::query(&format!(
            "CREATE TABLE \"{schema}\".handled (\
             seq bigserial PRIMARY KEY, event_id uuid NOT NULL, stream text NOT NULL, \
             version bigint NOT NULL, pid integer NOT NULL)"
        ))
        .execute(store.pool())
        .await
        .expect("create the results table");
        Self {
            store,
            schema,
            ttl,
            appended: Vec::new(),
        }
    }

    fn spawn(&self) -> ChildGuard {
        let url = support::url();
        let ttl = self.ttl.as_millis().to_string();
        process::spawn_self(
            "competing_member",
            "member",
            &[
                (SCHEMA, OsStr::new(&self.schema)),
                (TTL_MS, OsStr::new(&ttl)),
                (support::URL_VAR, OsStr::new(&url)),
            ],
        )
    }

    /// Appends `rounds` events to each stream, one stream after the other.
    async fn append(&mut self, rounds: usize) {
        for _ in 0..rounds {
            for s in 0..STREAMS {
                let stream = StreamName::new(format!("job-{s}")).unwrap();
                let done = self
                    .store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![NewEvent::new("work.queued", json!({ "s": s }))],
                    )
                    .await
                    .unwrap();
                self.appended.extend(done.events.iter().map(|e| e.id));
            }
        }
    }

    /// How many unexpired partitions each member holds.
    async fn owners(&self) -> BTreeMap<String, usize> {
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT owner, count(*) FROM \"{}\".group_partitions \
             WHERE subscriber = $1 AND owner IS NOT NULL AND expires_at > now() GROUP BY owner",
            self.schema
        ))
        .bind(NAME)
        .fetch_all(self.store.pool())
        .await
        .unwrap();
        rows.into_iter().map(|(o, n)| (o, n as usize)).collect()
    }

    /// Polls until the partitions are spread evenly over `members` owners.
    async fn until_balanced(&self, members: usize) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let owners = self.owners().await;
            let total: usize = owners.values().sum();
            let (min, max) = (owners.values().min(), owners.values().max());
            if owners.len() == members
                && total == PARTITIONS as usize
                && max.zip(min).is_some_and(|(max, min)| max - min <= 1)
            {
                return owners;
            }
            assert!(
                Instant::now() < deadline,
                "the partitions never spread over {members} members: {owners:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every partition row: partition, owner, expired, checkpoint, epoch.
    async fn partitions(&self) -> Vec<(i32, Option<String>, bool, i64, i64)> {
        sqlx::query_as(&format!(
            "SELECT partition, owner, expires_at <= now(), position, epoch \
             FROM \"{}\".group_partitions WHERE subscriber = $1 ORDER BY partition",
            self.schema
        ))
        .bind(NAME)
        .fetch_all(self.store.pool())
        .await
        .unwrap()
    }

    async fn dead_letters(&self) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{}\".dead_letters",
            self.schema
        ))
        .fetch_one(self.store.pool())
        .await
        .unwrap()
    }

    async fn handled(&self) -> Vec<Handled> {
        let rows: Vec<(Uuid, String, i64, i32)> = sqlx::query_as(&format!(
            "SELECT event_id, stream, version, pid FROM \"{}\".handled ORDER BY seq",
            self.schema
        ))
        .fetch_all(self.store.pool())
        .await
        .unwrap();
        rows.into_iter()
            .map(|(event_id, stream, version, pid)| Handled {
                event_id,
                stream,
                version,
                pid,
            })
            .collect()
    }

    /// Polls until every appended event was handled at least once.
    async fn until_all_handled(&self) -> Vec<Handled> {
        let deadline = Instant::now() + PATIENCE;
        let all: HashSet<Uuid> = self.appended.iter().map(|id| *id.as_uuid()).collect();
        loop {
            let handled = self.handled().await;
            let seen: HashSet<Uuid> = handled.iter().map(|h| h.event_id).collect();
            if seen.is_superset(&all) {
                return handled;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} of {} events were never handled; partitions: {:?}; dead letters: {}",
                    all.difference(&seen).count(),
                    all.len(),
                    self.partitions().await,
                    self.dead_letters().await,
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Within each stream, the versions in the order they were handled.
fn by_stream(handled: &[Handled]) -> HashMap<String, Vec<i64>> {
    let mut streams: HashMap<String, Vec<i64>> = HashMap::new();
    for h in handled {
        streams.entry(h.stream.clone()).or_default().push(h.version);
    }
    streams
}

fn stop(mut child: ChildGuard) {
    child.send_line("stop");
    assert!(
        child.wait_for_exit(Duration::from_secs(60)),
        "a member did not stop cleanly"
    );
}

/// Three members, the third joining mid-run, all stopped gracefully: the
/// work is shared, every event is handled exactly once, and each stream's
/// events in stream order, across the rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_the_work_in_stream_order_and_handle_each_event_once() {
    let mut group = Group::new(Duration::from_secs(2)).await;
    let (a, b) = (group.spawn(), group.spawn());
    group.until_balanced(2).await;
    group.append(10).await;
    // The third joins while the first two work: they hand partitions over.
    let c = group.spawn();
    group.append(10).await;
    let owners = group.until_balanced(3).await;
    group.append(10).await;
    group.until_all_handled().await;
    for child in [a, b, c] {
        stop(child);
    }
    // Stopped: nothing more comes, so the table is final.
    let handled = group.handled().await;

    let total = STREAMS * 30;
    assert_eq!(group.appended.len(), total);
    let ids: HashSet<Uuid> = handled.iter().map(|h| h.event_id).collect();
    assert_eq!(
        handled.len(),
        ids.len(),
        "{} events were handled twice",
        handled.len() - ids.len()
    );
    assert_eq!(ids.len(), total);
    for (stream, versions) in by_stream(&handled) {
        assert_eq!(
            versions,
            (0..30).collect::<Vec<i64>>(),
            "stream {stream} handled out of order"
        );
    }
    let mut per_process: BTreeMap<i32, usize> = BTreeMap::new();
    for h in &handled {
        *per_process.entry(h.pid).or_default() += 1;
    }
    assert_eq!(
        per_process.len(),
        3,
        "every process handled some: {per_process:?}"
    );
    eprintln!("balanced as {owners:?}; handled per process: {per_process:?}");
}

/// One of three members killed with SIGKILL mid-run: its partitions are
/// taken over within the lease TTL plus a renewal interval, every event is
/// handled at least once, and within each stream no event is handled
/// before an earlier one was handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_s_partitions_are_taken_over_within_the_lease_ttl() {
    let ttl = Duration::from_secs(2);
    let mut group = Group::new(ttl).await;
    let (a, b, mut victim) = (group.spawn(), group.spawn(), group.spawn());
    group.until_balanced(3).await;
    group.append(10).await;
    let deadline = Instant::now() + PATIENCE;
    let pid = victim.id() as i32;
    loop {
        let handled = group.handled().await;
        if handled.iter().filter(|h| h.pid == pid).count() >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the victim never handled 20 events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let prefix = format!("{pid}-");
    let held_by_victim = group
        .owners()
        .await
        .iter()
        .filter(|(owner, _)| owner.starts_with(&prefix))
        .map(|(_, n)| *n)
        .sum::<usize>();
    assert!(held_by_victim > 0, "the victim held no partition");
    victim.kill();
    let killed_at = Instant::now();
    let taken_over = loop {
        let owners = group.owners().await;
        let by_survivors: usize = owners
            .iter()
            .filter(|(owner, _)| !owner.starts_with(&prefix))
            .map(|(_, n)| *n)
            .sum();
        if by_survivors == PARTITIONS as usize {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < PATIENCE,
            "the survivors never took every partition: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let bound = ttl + ttl / 3 + Duration::from_millis(1500);
    assert!(
        taken_over <= bound,
        "takeover took {taken_over:?}, more than {bound:?}"
    );
    group.append(5).await;
    group.until_all_handled().await;
    for child in [a, b] {
        stop(child);
    }
    let handled = group.handled().await;

    let total = STREAMS * 15;
    let ids: HashSet<Uuid> = handled.iter().map(|h| h.event_id).collect();
    assert_eq!(ids.len(), total, "every event was handled");
    for (stream, versions) in by_stream(&handled) {
        // The first handling of each version comes in stream order; a
        // version handled again (after the takeover) is an earlier one.
        let mut next = 0;
        for version in &versions {
            assert!(
                *version <= next,
                "stream {stream}: version {version} handled before {next}: {versions:?}"
            );
            if *version == next {
                next += 1;
            }
        }
        assert_eq!(next, 15, "stream {stream}: {versions:?}");
    }
    let survivors: HashSet<i32> = handled
        .iter()
        .filter(|h| h.pid != pid)
        .map(|h| h.pid)
        .collect();
    assert_eq!(survivors.len(), 2, "both survivors worked");
    eprintln!(
        "{held_by_victim} partitions taken over in {taken_over:?} (bound {bound:?}); \
         {} handlings for {total} events",
        handled.len()
    );
}
