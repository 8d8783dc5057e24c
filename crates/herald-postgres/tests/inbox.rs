//! The inbox against a real PostgreSQL: a handler's writes and the record of
//! the event commit together, so they happen once per subscriber and event
//! however often, and however concurrently, the event is delivered; and a
//! consumer process killed mid-batch and restarted still has every event's
//! effect exactly once.
//!
//! The crash scenario's child processes are this test binary run again
//! (`herald_testkit::process`): the `inbox_child` test then plays the
//! consumer and never returns on its own.

mod support;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::store::{CheckpointStore, EventStore, ExpectedVersion, StreamName};
use herald::{
    Bus, Context, DeliveryMode, Disposition, ErrorKind, Handler, HandlerError, NewEvent,
    RecordedEvent, ReplayFrom, Subscriber,
};
use herald_postgres::{Inbox, InboxError, InboxHandler, PgStore, inbox_fn};
use herald_testkit::process::{self, kill_after};
use serde_json::json;
use sqlx::{Postgres, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

/// How long a test waits for something before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Creates the table the test handlers write their effects to. It has no
/// unique key, so that a duplicate effect would show.
async fn effects_table(store: &PgStore) {
    sqlx::query(&format!(
        "CREATE TABLE \"{}\".effects (subscriber text NOT NULL, event_id uuid NOT NULL)",
        store.config().schema
    ))
    .execute(store.pool())
    .await
    .expect("create the effects table");
}

/// How many effects each event has, for `subscriber`.
async fn effects(store: &PgStore, subscriber: &str) -> HashMap<Uuid, i64> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
        "SELECT event_id, count(*) FROM \"{}\".effects WHERE subscriber = $1 GROUP BY event_id",
        store.config().schema
    ))
    .bind(subscriber)
    .fetch_all(store.pool())
    .await
    .expect("count the effects");
    rows.into_iter().collect()
}

/// How many inbox entries `subscriber` has.
async fn entries(store: &PgStore, subscriber: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".inbox WHERE subscriber = $1",
        store.config().schema
    ))
    .bind(subscriber)
    .fetch_one(store.pool())
    .await
    .expect("count the inbox entries")
}

/// Writes one effect row per delivery it runs for, counts its calls, and
/// fails while told to (after writing, so that a rollback must undo it).
struct WriteEffect {
    insert: String,
    calls: AtomicU64,
    fail: AtomicBool,
    called: Notify,
}

impl WriteEffect {
    fn new(store: &PgStore) -> Arc<Self> {
        Arc::new(Self {
            insert: format!(
                "INSERT INTO \"{}\".effects (subscriber, event_id) VALUES ($1, $2)",
                store.config().schema
            ),
            calls: AtomicU64::new(0),
            fail: AtomicBool::new(false),
            called: Notify::new(),
        })
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl InboxHandler for WriteEffect {
    async fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
        tx: &mut Transaction<'static, Postgres>,
    ) -> Result<(), HandlerError> {
        sqlx::query(&self.insert)
            .bind(ctx.subscriber())
            .bind(event.id().as_uuid())
            .execute(&mut **tx)
            .await
            .map_err(HandlerError::retry)?;
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.called.notify_waiters();
        if self.fail.load(Ordering::SeqCst) {
            return Err(HandlerError::retry("the effect's service is down"));
        }
        Ok(())
    }
}

/// Appends `n` events to a stream of their own; returns them as recorded.
async fn events(store: &PgStore, stream: &str, n: usize) -> Vec<RecordedEvent> {
    let stream = StreamName::new(stream).unwrap();
    let new = (0..n)
        .map(|i| NewEvent::new("payment.received", json!({ "n": i })))
        .collect();
    store
        .append(&stream, ExpectedVersion::Any, new)
        .await
        .unwrap();
    store
        .read_stream(&stream, herald::store::ReadStream::forward())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_claims_the_inbox() {
    let store = support::store().await;
    assert!(store.capabilities().inbox);
    assert_eq!(entries(&store, "anyone").await, 0, "the table is there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_has_its_effect_once_per_subscriber() {
    let store = support::store().await;
    effects_table(&store).await;
    let handler = WriteEffect::new(&store);
    let inbox = Inbox::new(store.clone(), Arc::clone(&handler));
    let event = events(&store, "pay-1", 1).await.remove(0);

    let (billing, audit) = (Context::detached("billing"), Context::detached("audit"));
    inbox.handle(&event, &billing).await.unwrap();
    inbox.handle(&event, &billing).await.unwrap();
    inbox.handle(&event, &audit).await.unwrap();

    assert_eq!(handler.calls(), 2, "once for each subscriber");
    assert_eq!(inbox.duplicates(), 1);
    let uuid = *event.id().as_uuid();
    assert_eq!(effects(&store, "billing").await, HashMap::from([(uuid, 1)]));
    assert_eq!(effects(&store, "audit").await, HashMap::from([(uuid, 1)]));
    assert_eq!(entries(&store, "billing").await, 1);
    assert_eq!(entries(&store, "audit").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_leaves_no_entry_and_no_effect_and_a_later_delivery_records_both() {
    let store = support::store().await;
    effects_table(&store).await;
    let handler = WriteEffect::new(&store);
    let inbox = Inbox::new(store.clone(), Arc::clone(&handler));
    let event = events(&store, "pay-1", 1).await.remove(0);
    let ctx = Context::detached("billing");

    handler.fail.store(true, Ordering::SeqCst);
    let error = inbox.handle(&event, &ctx).await.unwrap_err();
    assert_eq!(
        error.disposition(),
        Disposition::Retry { after: None },
        "the handler's own error, for the subscriber's retry policy"
    );
    assert_eq!(error.to_string(), "the effect's service is down");
    assert_eq!(handler.calls(), 1, "the handler ran and wrote");
    assert!(
        effects(&store, "billing").await.is_empty(),
        "its write rolled back"
    );
    assert_eq!(entries(&store, "billing").await, 0);

    handler.fail.store(false, Ordering::SeqCst);
    inbox.handle(&event, &ctx).await.unwrap();
    assert_eq!(
        handler.calls(),
        2,
        "the later delivery ran the handler again"
    );
    assert_eq!(
        effects(&store, "billing").await,
        HashMap::from([(*event.id().as_uuid(), 1)])
    );
    assert_eq!(entries(&store, "billing").await, 1);
    assert_eq!(inbox.duplicates(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_swallows_a_failed_statement_does_not_count_as_handled() {
    let store = support::store().await;
    effects_table(&store).await;
    let insert = format!(
        "INSERT INTO \"{}\".effects (subscriber, event_id) VALUES ($1, $2)",
        store.config().schema
    );
    let inbox = Inbox::new(
        store.clone(),
        inbox_fn(move |event, ctx, tx| {
            let insert = insert.clone();
            Box::pin(async move {
                sqlx::query(&insert)
                    .bind(ctx.subscriber())
                    .bind(event.id().as_uuid())
                    .execute(&mut **tx)
                    .await
                    .map_err(HandlerError::retry)?;
                // The error is ignored, but the transaction is aborted.
                let _ = sqlx::query("SELECT 1 / 0").execute(&mut **tx).await;
                Ok(())
            })
        }),
    );
    let event = events(&store, "pay-1", 1).await.remove(0);
    let error = inbox
        .handle(&event, &Context::detached("billing"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Ledger);
    assert!(matches!(error.disposition(), Disposition::Retry { .. }));
    let inner = error
        .get_ref()
        .downcast_ref::<InboxError>()
        .expect("an inbox error");
    assert!(
        matches!(inner, InboxError::Aborted { event_id, .. } if *event_id == event.id()),
        "{inner:?}"
    );
    assert!(effects(&store, "billing").await.is_empty());
    assert_eq!(entries(&store, "billing").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_removes_its_entry_does_not_count_as_handled() {
    let store = support::store().await;
    let delete = format!(
        "DELETE FROM \"{}\".inbox WHERE event_id = $1",
        store.config().schema
    );
    let inbox = Inbox::new(
        store.clone(),
        inbox_fn(move |event, _ctx, tx| {
            let delete = delete.clone();
            Box::pin(async move {
                sqlx::query(&delete)
                    .bind(event.id().as_uuid())
                    .execute(&mut **tx)
                    .await
                    .map_err(HandlerError::retry)?;
                Ok(())
            })
        }),
    );
    let event = events(&store, "pay-1", 1).await.remove(0);
    let error = inbox
        .handle(&event, &Context::detached("billing"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Ledger);
    let inner = error.get_ref().downcast_ref::<InboxError>().unwrap();
    assert!(matches!(inner, InboxError::EntryLost { .. }), "{inner:?}");
    assert!(inner.sqlx().is_none());
    assert_eq!(entries(&store, "billing").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_up_events_appended_in_the_transaction_commit_with_the_entry() {
    let store = support::store().await;
    let fail = Arc::new(AtomicBool::new(true));
    let inbox = {
        let (appender, fail) = (store.clone(), Arc::clone(&fail));
        Inbox::new(
            store.clone(),
            inbox_fn(move |event, _ctx, tx| {
                let (store, fail) = (appender.clone(), Arc::clone(&fail));
                Box::pin(async move {
                    let stream = StreamName::new("shipments").unwrap();
                    let follow_up = NewEvent::new(
                        "shipment.requested",
                        json!({ "payment": event.id().to_string() }),
                    );
                    store
                        .append_in_tx(tx, &stream, ExpectedVersion::Any, vec![follow_up])
                        .await
                        .map_err(HandlerError::retry)?;
                    if fail.load(Ordering::SeqCst) {
                        return Err(HandlerError::retry("the carrier is down"));
                    }
                    Ok(())
                })
            }),
        )
    };
    let event = events(&store, "pay-1", 1).await.remove(0);
    let ctx = Context::detached("shipping");
    let shipments = || async {
        store
            .read_stream(
                &StreamName::new("shipments").unwrap(),
                herald::store::ReadStream::forward(),
            )
            .await
            .expect("read the shipments")
            .len()
    };

    inbox.handle(&event, &ctx).await.unwrap_err();
    assert_eq!(shipments().await, 0, "the failed delivery appended nothing");
    fail.store(false, Ordering::SeqCst);
    inbox.handle(&event, &ctx).await.unwrap();
    inbox.handle(&event, &ctx).await.unwrap();
    assert_eq!(
        shipments().await,
        1,
        "one follow-up event, from one delivery"
    );
    assert_eq!(inbox.duplicates(), 1);
    assert_eq!(entries(&store, "shipping").await, 1);
}

/// Backends of this schema's inbox waiting for a lock: a second delivery
/// queued behind the first one's entry.
async fn waiting_on_the_inbox(store: &PgStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' \
         AND query LIKE $1",
    )
    .bind(format!("%\"{}\".inbox%", store.config().schema))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// Delivers `event` to `billing` through `inbox` on a task of its own.
fn deliver<H: InboxHandler>(
    inbox: Inbox<H>,
    event: RecordedEvent,
) -> tokio::task::JoinHandle<herald::HandlerResult> {
    tokio::spawn(async move { inbox.handle(&event, &Context::detached("billing")).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_deliveries_of_one_event_have_one_effect() {
    let store = support::store().await;
    effects_table(&store).await;
    let insert = format!(
        "INSERT INTO \"{}\".effects (subscriber, event_id) VALUES ($1, $2)",
        store.config().schema
    );
    // The first delivery holds its transaction open until released, so the
    // second surely starts while the first's entry is uncommitted.
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let calls = Arc::new(AtomicU64::new(0));
    let inbox = {
        let (entered, release, calls) = (entered.clone(), release.clone(), calls.clone());
        Inbox::new(
            store.clone(),
            inbox_fn(move |event, ctx, tx| {
                let (insert, entered, release, calls) = (
                    insert.clone(),
                    entered.clone(),
                    release.clone(),
                    calls.clone(),
                );
                Box::pin(async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    sqlx::query(&insert)
                        .bind(ctx.subscriber())
                        .bind(event.id().as_uuid())
                        .execute(&mut **tx)
                        .await
                        .map_err(HandlerError::retry)?;
                    let released = release.notified();
                    entered.notify_one();
                    released.await;
                    Ok(())
                })
            }),
        )
    };
    let event = events(&store, "pay-1", 1).await.remove(0);
    let first = deliver(inbox.clone(), event.clone());
    tokio::time::timeout(PATIENCE, entered.notified())
        .await
        .expect("the first delivery ran the handler");
    let second = deliver(inbox.clone(), event.clone());
    // Polling under a deadline: the second delivery blocks in the server.
    let deadline = Instant::now() + PATIENCE;
    while waiting_on_the_inbox(&store).await < 1 {
        assert!(
            Instant::now() < deadline,
            "the second delivery never waited on the inbox"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the second one waits");
    release.notify_one();
    let (a, b) = tokio::time::timeout(PATIENCE, async {
        (first.await.unwrap(), second.await.unwrap())
    })
    .await
    .expect("both deliveries finished");
    a.unwrap();
    b.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(inbox.duplicates(), 1);
    assert_eq!(
        effects(&store, "billing").await,
        HashMap::from([(*event.id().as_uuid(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_deliveries_of_many_events_have_each_effect_once() {
    const EVENTS: usize = 40;
    const TASKS: usize = 6;
    const STEPS: [usize; TASKS] = [1, 3, 7, 9, 11, 13];
    let store = support::store().await;
    effects_table(&store).await;
    let handler = WriteEffect::new(&store);
    let inbox = Inbox::new(store.clone(), Arc::clone(&handler));
    let events = Arc::new(events(&store, "pay-1", EVENTS).await);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (inbox, events) = (inbox.clone(), Arc::clone(&events));
            tokio::spawn(async move {
                let ctx = Context::detached("billing");
                // Every task delivers every event, each task in another
                // order (the steps are prime to EVENTS), so that they
                // collide.
                let step = STEPS[t];
                for i in 0..EVENTS {
                    let event = &events[(i * step + t) % EVENTS];
                    inbox.handle(event, &ctx).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("a task finished")
            .unwrap();
    }
    assert_eq!(handler.calls(), EVENTS as u64, "one call per event");
    assert_eq!(inbox.duplicates(), (TASKS * EVENTS - EVENTS) as u64);
    let counts = effects(&store, "billing").await;
    assert_eq!(counts.len(), EVENTS);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

/// Waits until `done`, polling under a deadline, woken early by `wake`.
async fn until(what: &str, wake: &Notify, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let _ = tokio::time::timeout(Duration::from_millis(20), wake.notified()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_durable_subscriber_has_each_effect_once() {
    const EVENTS: usize = 60;
    let store = Arc::new(support::store().await);
    effects_table(&store).await;
    let handler = WriteEffect::new(&store);
    let inbox = Inbox::new((*store).clone(), Arc::clone(&handler));
    let written = events(&store, "pay-1", EVENTS).await;
    let bus = Bus::builder().store(Arc::clone(&store)).build();
    bus.subscribe(
        Subscriber::new("balances", inbox.clone())
            .topic("payment.#")
            .mode(DeliveryMode::Durable)
            .batch_size(25)
            .poll_interval(Duration::from_millis(50)),
    )
    .unwrap();

    let head = store.head().await.unwrap();
    let caught_up = || bus.subscriber("balances").and_then(|s| s.checkpoint) == Some(head);
    until("the first pass", &handler.called, caught_up).await;
    assert_eq!(handler.calls(), EVENTS as u64);

    let rewound = bus.replay("balances", ReplayFrom::Beginning).await.unwrap();
    assert_eq!(rewound, 0);
    until("the replay", &handler.called, || {
        inbox.duplicates() == EVENTS as u64
    })
    .await;
    until(
        "the checkpoint after the replay",
        &handler.called,
        caught_up,
    )
    .await;
    bus.shutdown().await;

    assert_eq!(handler.calls(), EVENTS as u64, "the replay ran no handler");
    let counts = effects(&store, "balances").await;
    let ids: HashSet<Uuid> = written.iter().map(|e| *e.id().as_uuid()).collect();
    assert_eq!(counts.keys().copied().collect::<HashSet<_>>(), ids);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(
        CheckpointStore::load(&*store, "balances").await.unwrap(),
        Some(head)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_removes_only_old_entries_of_one_subscriber_and_reopens_the_door() {
    let store = support::store().await;
    effects_table(&store).await;
    let handler = WriteEffect::new(&store);
    let inbox = Inbox::new(store.clone(), Arc::clone(&handler));
    let events = events(&store, "pay-1", 3).await;
    let (billing, audit) = (Context::detached("billing"), Context::detached("audit"));
    for event in &events {
        inbox.handle(event, &billing).await.unwrap();
    }
    inbox.handle(&events[0], &audit).await.unwrap();
    // Age the first event's entries by two days.
    sqlx::query(&format!(
        "UPDATE \"{}\".inbox SET handled_at = handled_at - interval '2 days' WHERE event_id = $1",
        store.config().schema
    ))
    .bind(events[0].id().as_uuid())
    .execute(store.pool())
    .await
    .unwrap();

    let day = Duration::from_secs(24 * 3600);
    assert_eq!(store.purge_inbox("billing", 3 * day).await.unwrap(), 0);
    assert_eq!(store.purge_inbox("billing", day).await.unwrap(), 1);
    assert_eq!(entries(&store, "billing").await, 2);
    assert_eq!(
        entries(&store, "audit").await,
        1,
        "another subscriber's stay"
    );

    // The purged event, delivered again, is handled again; the others not.
    for event in &events {
        inbox.handle(event, &billing).await.unwrap();
    }
    assert_eq!(inbox.duplicates(), 2);
    let counts = effects(&store, "billing").await;
    assert_eq!(counts[events[0].id().as_uuid()], 2);
    assert_eq!(counts[events[1].id().as_uuid()], 1);
    assert_eq!(counts[events[2].id().as_uuid()], 1);
}

// ---------------------------------------------------------------------------
// A consumer process killed mid-batch and restarted.

const SCHEMA: &str = "HERALD_INBOX_CRASH_SCHEMA";
/// The durable subscriber of the crash scenario.
const CONSUMER: &str = "inbox-consumer";
/// Events per batch of the consumer.
const CRASH_BATCH: usize = 100;

/// The URL with `application_name` set, so that the parent can tell when
/// the killed child's connections are gone.
fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// The role a child plays, if any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_child() {
    let Some(role) = process::role() else {
        return; // run as an ordinary test: nothing to do
    };
    process::exit_when_parent_is_gone();
    assert_eq!(role, "consumer", "unknown role");
    let schema = std::env::var(SCHEMA).expect("the schema");
    let store = Arc::new(support::store_with(support::config().schema(&schema)).await);
    let insert = format!("INSERT INTO \"{schema}\".effects (subscriber, event_id) VALUES ($1, $2)");
    let inbox = Inbox::new(
        (*store).clone(),
        inbox_fn(move |event, ctx, tx| {
            let insert = insert.clone();
            Box::pin(async move {
                sqlx::query(&insert)
                    .bind(ctx.subscriber())
                    .bind(event.id().as_uuid())
                    .execute(&mut **tx)
                    .await
                    .map_err(HandlerError::retry)?;
                // Work that takes a while, so that the kill lands mid-batch.
                tokio::time::sleep(Duration::from_millis(3)).await;
                let mut out = std::io::stdout().lock();
                writeln!(out, "handling {}", event.id())?;
                out.flush()?;
                Ok(())
            })
        }),
    );
    let bus = Bus::builder().store(Arc::clone(&store)).build();
    bus.subscribe(
        Subscriber::new(CONSUMER, inbox.clone())
            .topic("#")
            .mode(DeliveryMode::Durable)
            .batch_size(CRASH_BATCH),
    )
    .unwrap();
    // Reports, once caught up with the head, how many deliveries the inbox
    // skipped; the parent then kills it.
    let head = store.head().await.expect("the head");
    while bus.subscriber(CONSUMER).and_then(|s| s.checkpoint) != Some(head) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "caught-up {}", inbox.duplicates()).unwrap();
    out.flush().unwrap();
    drop(out);
    std::future::pending::<()>().await;
}

/// Waits until no connection named `name` is left: everything the killed
/// child sent (a commit in flight, say) has been processed.
async fn until_disconnected(store: &PgStore, name: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(name)
        .fetch_one(store.pool())
        .await
        .unwrap();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the killed child's connections stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A consumer killed with SIGKILL in the middle of a batch and restarted:
/// the batch is delivered again, and with the inbox every event still has
/// exactly one effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_restarted_has_every_effect_exactly_once() {
    const EVENTS: usize = 4 * CRASH_BATCH;
    let store = support::store().await;
    let schema = store.config().schema.clone();
    effects_table(&store).await;
    let mut written: HashSet<Uuid> = HashSet::new();
    for batch in 0..EVENTS / CRASH_BATCH {
        let stream = format!("work-{batch}");
        written.extend(
            events(&store, &stream, CRASH_BATCH)
                .await
                .iter()
                .map(|e| *e.id().as_uuid()),
        );
    }
    let spawn = |name: &str| {
        let url = with_application_name(&support::url(), name);
        process::spawn_self(
            "inbox_child",
            "consumer",
            &[
                (SCHEMA, OsStr::new(&schema)),
                (support::URL_VAR, OsStr::new(&url)),
            ],
        )
    };

    // Killed while handling the 150th event: half-way through its second
    // batch, whose checkpoint is not saved yet.
    let first = format!("{schema}_a");
    kill_after(spawn(&first), "handling ", CRASH_BATCH + CRASH_BATCH / 2);
    until_disconnected(&store, &first).await;
    let checkpoint = CheckpointStore::load(&store, CONSUMER)
        .await
        .unwrap()
        .unwrap_or(0);
    let past_checkpoint: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".effects f JOIN \"{schema}\".events e \
         ON e.id = f.event_id WHERE e.position > $1"
    ))
    .bind(checkpoint as i64)
    .fetch_one(store.pool())
    .await
    .unwrap();
    let before: HashMap<Uuid, i64> = effects(&store, CONSUMER).await;
    assert!(
        before.len() >= CRASH_BATCH + CRASH_BATCH / 2 - 1,
        "{} effects before the kill",
        before.len()
    );
    assert!(before.len() < EVENTS, "the kill came before the end");
    assert!(
        past_checkpoint > 0,
        "effects past the checkpoint ({checkpoint}): their batch will come again"
    );

    // Restarted, it catches up; the inbox skips what was handled before.
    let second = format!("{schema}_b");
    let reported = kill_after(spawn(&second), "caught-up ", 1);
    until_disconnected(&store, &second).await;
    let duplicates: i64 = reported[0].parse().expect("a count");
    assert_eq!(
        duplicates, past_checkpoint,
        "every event handled before the kill but after the checkpoint came again, \
         and was skipped"
    );

    eprintln!(
        "killed with {} effects, checkpoint {checkpoint}, {past_checkpoint} effects past it; \
         the restart skipped {duplicates}",
        before.len()
    );

    let after = effects(&store, CONSUMER).await;
    assert_eq!(
        after.keys().copied().collect::<HashSet<_>>(),
        written,
        "every event was handled"
    );
    let twice: Vec<_> = after.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "events with more than one effect: {twice:?}"
    );
    assert_eq!(entries(&store, CONSUMER).await, EVENTS as i64);
    assert_eq!(
        CheckpointStore::load(&store, CONSUMER).await.unwrap(),
        Some(store.head().await.unwrap())
    );
}
