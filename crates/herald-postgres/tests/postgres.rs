//! What the PostgreSQL store promises beyond the conformance suite: the
//! outbox, the watermark under adversarial writers, migrations, and the
//! head watch across processes.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use herald::store::{EventStore, ExpectedVersion, ReadAll, ReadStream, StoreError, StreamName};
use herald::{EventId, NewEvent, Payload, RecordedEvent};
use herald_postgres::{ConnectError, PgConfig, PgStore};
use serde_json::json;

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("a valid stream name")
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("test.happened", json!({ "n": n }))
}

async fn all(store: &PgStore, after: u64) -> Vec<RecordedEvent> {
    store
        .read_all(ReadAll::after(after))
        .try_collect()
        .await
        .expect("read the global log")
}

/// Creates a business table in the store's schema.
async fn orders_table(store: &PgStore) -> String {
    let table = format!("\"{}\".orders", store.config().schema);
    sqlx::query(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY)"))
        .execute(store.pool())
        .await
        .expect("create the orders table");
    table
}

async fn count(store: &PgStore, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(store.pool())
        .await
        .expect("count rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_append_rolls_back_with_the_business_row() {
    let store = support::store().await;
    let orders = orders_table(&store).await;
    let s = stream("order-1");

    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {orders} (id) VALUES (1)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let appended = store
        .append_in_tx(&mut tx, &s, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    let id = appended.events[0].id;
    tx.rollback().await.unwrap();

    assert_eq!(count(&store, &orders).await, 0);
    assert!(store.event(id).await.unwrap().is_none());
    assert!(store.stream_info(&s).await.unwrap().is_none());
    assert!(all(&store, 0).await.is_empty());
    assert_eq!(store.head().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_append_commits_with_the_business_row() {
    let store = support::store().await;
    let orders = orders_table(&store).await;
    let s = stream("order-2");

    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {orders} (id) VALUES (2)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let appended = store
        .append_in_tx(&mut tx, &s, ExpectedVersion::NoStream, vec![event(2)])
        .await
        .unwrap();
    // Not visible before the commit.
    assert!(store.event(appended.events[0].id).await.unwrap().is_none());
    tx.commit().await.unwrap();

    assert_eq!(count(&store, &orders).await, 1);
    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].id(), appended.events[0].id);
    assert_eq!(all(&store, 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_in_an_outbox_append_leaves_the_transaction_usable() {
    let store = support::store().await;
    let orders = orders_table(&store).await;
    let s = stream("order-3");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();

    let mut tx = store.pool().begin().await.unwrap();
    let err = store
        .append_in_tx(&mut tx, &s, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongExpectedVersion {
                actual: Some(0),
                ..
            }
        ),
        "{err:?}"
    );
    let bad = store
        .append_in_tx(
            &mut tx,
            &s,
            ExpectedVersion::Any,
            vec![NewEvent::new("bad type", json!(1))],
        )
        .await
        .unwrap_err();
    assert!(matches!(bad, StoreError::InvalidEventType(_)), "{bad:?}");
    sqlx::query(&format!("INSERT INTO {orders} (id) VALUES (3)"))
        .execute(&mut *tx)
        .await
        .expect("the transaction is still usable");
    store
        .append_in_tx(&mut tx, &s, ExpectedVersion::Exact(0), vec![event(2)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&store, &orders).await, 1);
    assert_eq!(
        store
            .read_stream(&s, ReadStream::forward())
            .await
            .unwrap()
            .len(),
        2
    );
}

/// The case that a watermark of "transaction id below the snapshot's xmin"
/// gets wrong when the log is read in position order: transaction X takes
/// its id first (it writes a business row), Y takes a later id and draws a
/// position, X draws a higher position and commits while Y runs. X's id is
/// below every running id, yet Y can still commit a lower position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waits_for_a_younger_transaction_that_drew_a_lower_position() {
    let store = support::store().await;
    let orders = orders_table(&store).await;

    let mut x = store.pool().begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {orders} (id) VALUES (1)"))
        .execute(&mut *x)
        .await
        .unwrap();
    let mut y = store.pool().begin().await.unwrap();
    let low = store
        .append_in_tx(&mut y, &stream("y-1"), ExpectedVersion::Any, vec![event(1)])
        .await
        .unwrap();
    let high = store
        .append_in_tx(&mut x, &stream("x-1"), ExpectedVersion::Any, vec![event(2)])
        .await
        .unwrap();
    assert!(low.events[0].position < high.events[0].position);
    x.commit().await.unwrap();

    // X is committed and older than every running transaction, but Y holds a
    // lower position: nothing may be read yet, however often we look.
    for _ in 0..5 {
        assert!(all(&store, 0).await.is_empty());
        assert_eq!(store.head().await.unwrap(), 0);
    }
    y.commit().await.unwrap();
    let read = all(&store, 0).await;
    assert_eq!(
        read.iter()
            .map(|e| e.position().unwrap())
            .collect::<Vec<_>>(),
        [low.events[0].position, high.events[0].position]
    );
    assert_eq!(store.head().await.unwrap(), high.events[0].position);
}

/// Polls the global log from `after` until `want` events came, or 20 s.
async fn tail(store: &PgStore, mut after: u64, want: usize) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "saw {} of {want} events",
            seen.len()
        );
        let batch = all(store, after).await;
        for e in &batch {
            let p = e.position().unwrap();
            assert!(p > after, "position {p} after {after}");
            after = p;
        }
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen.extend(batch);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_pass_the_gap_of_a_rolled_back_append() {
    let store = support::store().await;
    store
        .append(&stream("a-1"), ExpectedVersion::Any, vec![event(1)])
        .await
        .unwrap();
    let mut tx = store.pool().begin().await.unwrap();
    store
        .append_in_tx(
            &mut tx,
            &stream("a-2"),
            ExpectedVersion::Any,
            vec![event(2), event(3)],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let last = store
        .append(&stream("a-3"), ExpectedVersion::Any, vec![event(4)])
        .await
        .unwrap();
    let read = tail(&store, 0, 2).await;
    assert_eq!(
        read.iter()
            .map(|e| e.data().to_value()["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 4]
    );
    assert_eq!(store.head().await.unwrap(), last.events[0].position);
}

/// A rolled-back append's gap is passed as soon as the appends that were in
/// flight have ended, while an unrelated transaction stays open (which
/// holds the cluster's xmin back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_pass_a_rolled_back_gap_while_an_unrelated_transaction_runs() {
    let store = support::store().await;
    let orders = orders_table(&store).await;
    let mut unrelated = store.pool().begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {orders} (id) VALUES (1)"))
        .execute(&mut *unrelated)
        .await
        .unwrap();
    let mut tx = store.pool().begin().await.unwrap();
    store
        .append_in_tx(
            &mut tx,
            &stream("b-1"),
            ExpectedVersion::Any,
            vec![event(1)],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    store
        .append(&stream("b-2"), ExpectedVersion::Any, vec![event(2)])
        .await
        .unwrap();
    // One read: it stops at the gap, takes a mark, finds nobody appending,
    // and goes on.
    let read = all(&store, 0).await;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].data().to_value()["n"], 2);
    unrelated.rollback().await.unwrap();
}

/// Twelve writers: eight append in short transactions, four append in
/// transactions they hold open for one to two seconds (one in four of which
/// roll back), and the others commit after them all the while. Each of
/// three readers tailing the global log sees every committed event exactly
/// once, in position order, and no rolled-back one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_reader_sees_every_event_once_despite_long_transactions() {
    const FAST: u64 = 8;
    const SLOW: u64 = 4;
    const FAST_APPENDS: u64 = 60;
    const SLOW_APPENDS: u64 = 3;
    let store = Arc::new(support::store_with(support::config().max_connections(30)).await);

    let mut writers = Vec::new();
    for w in 0..FAST {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let s = stream(&format!("fast-{w}"));
            let mut ids = Vec::new();
            for i in 0..FAST_APPENDS {
                let done = store
                    .append(&s, ExpectedVersion::Any, vec![event(w * 1000 + i)])
                    .await
                    .expect("append");
                ids.extend(done.events.iter().map(|e| e.id));
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (ids, Vec::new())
        }));
    }
    for w in 0..SLOW {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let s = stream(&format!("slow-{w}"));
            let (mut kept, mut dropped) = (Vec::new(), Vec::new());
            for i in 0..SLOW_APPENDS {
                let mut tx = store.pool().begin().await.expect("begin");
                let done = store
                    .append_in_tx(
                        &mut tx,
                        &s,
                        ExpectedVersion::Any,
                        vec![event(100_000 + w * 100 + i), event(200_000 + w * 100 + i)],
                    )
                    .await
                    .expect("append in a transaction");
                let ids = done.events.iter().map(|e| e.id);
                tokio::time::sleep(Duration::from_millis(1000 + 250 * w)).await;
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
    // Three readers share the store (and so its watermark), each with its
    // own pace.
    let readers: Vec<_> = (0..3u64)
        .map(|r| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut after = 0;
                let mut seen = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                // Read until the event the test appends after every writer ended.
                loop {
                    assert!(tokio::time::Instant::now() < deadline, "reader timed out");
                    let batch: Vec<RecordedEvent> = store
                        .read_all(ReadAll::after(after).limit(20 + 30 * r as usize))
                        .try_collect()
                        .await
                        .expect("read");
                    for e in &batch {
                        let p = e.position().unwrap();
                        assert!(p > after, "position {p} after {after}");
                        after = p;
                        seen.push(e.id());
                        if e.stream() == Some("done") {
                            return seen;
                        }
                    }
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1 + r)).await;
                    }
                }
            })
        })
        .collect();
    let (mut kept, mut dropped) = (HashSet::new(), HashSet::new());
    for writer in writers {
        let (k, d) = writer.await.expect("writer");
        kept.extend(k);
        dropped.extend(d);
    }
    assert!(!dropped.is_empty(), "the test rolls some appends back");
    // Tell the reader everything is written; it reads up to this last event.
    let done = store
        .append(&stream("done"), ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();
    kept.insert(done.events[0].id);
    for reader in readers {
        let seen = reader.await.expect("reader");
        let unique: HashSet<EventId> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "an event was seen twice");
        assert!(unique.is_disjoint(&dropped), "a rolled-back event was seen");
        assert_eq!(
            unique.len(),
            kept.len(),
            "missed {} events",
            kept.difference(&unique).count()
        );
        assert_eq!(unique, kept);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creators_of_one_stream_let_exactly_one_win() {
    let store = Arc::new(support::store().await);
    let s = stream("created-once");
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let (store, s) = (Arc::clone(&store), s.clone());
            tokio::spawn(async move {
                store
                    .append(&s, ExpectedVersion::NoStream, vec![event(w)])
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Some(0)),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_text_is_kept_byte_for_byte() {
    let store = support::store().await;
    let text = "{ \"b\" : 1,\n  \"a\" : [1.50, 2e3, \"\\u00e9\\u0000\"] }";
    let payload = Payload::from_json(text.to_owned()).unwrap();
    let s = stream("bytes-1");
    let done = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![NewEvent::new("raw.text", payload)],
        )
        .await
        .unwrap();
    let read = store.event(done.events[0].id).await.unwrap().unwrap();
    assert_eq!(read.data().as_str(), text);
    let logged = all(&store, 0).await;
    assert_eq!(logged[0].data().as_str(), text);
    assert_eq!(&logged[0], &read);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_stores_share_a_schema() {
    let config = support::config();
    let first = support::store_with(config.clone()).await;
    let second = support::store_with(config).await;
    second.migrate().await.unwrap();
    first
        .append(&stream("shared-1"), ExpectedVersion::Any, vec![event(1)])
        .await
        .unwrap();
    assert_eq!(all(&second, 0).await.len(), 1);
    let applied: Vec<i32> = sqlx::query_scalar(&format!(
        "SELECT version FROM \"{}\".herald_migrations ORDER BY version",
        first.config().schema
    ))
    .fetch_all(first.pool())
    .await
    .unwrap();
    assert_eq!(
        applied,
        [1, 2, 3, 4, 5, 6, 7, 8, 9],
        "each migration recorded once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_watch_hears_appends_from_another_store() {
    // The watcher polls only once a minute: a notification must wake it.
    let config = support::config().poll_interval(Duration::from_secs(60));
    let watcher = support::store_with(config.clone()).await;
    let writer = support::store_with(config.clone()).await;
    let silent = support::store_with(config.notify(false)).await;
    assert!(silent.watch_head().is_none());
    let mut rx = watcher.watch_head().expect("notify is on");
    // Let the listener start listening.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE query = $1")
                    .bind(format!(
                        "LISTEN \"{}.herald_events\"",
                        watcher.config().schema
                    ))
                    .fetch_one(watcher.pool())
                    .await
                    .unwrap();
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the listener started");
    for n in 1..=3 {
        let done = writer
            .append(&stream("watched-1"), ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
        let last = done.events[0].position;
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|p| *p >= last))
            .await
            .expect("the watch heard the append")
            .unwrap();
    }
}

#[tokio::test]
async fn an_unreachable_database_is_a_connect_error() {
    let config = PgConfig::new("postgres://nobody@127.0.0.1:1/none")
        .schema("unused")
        .acquire_timeout(Duration::from_secs(2));
    let err = PgStore::connect(config).await.unwrap_err();
    assert!(matches!(err, ConnectError::Connect(_)), "{err:?}");
    assert!(
        err.to_string().contains("cannot connect to postgres"),
        "{err}"
    );
}

#[tokio::test]
async fn an_invalid_config_is_refused_before_connecting() {
    let err = PgStore::connect(PgConfig::new(support::url()).schema("No Way"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Config(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_filters_in_sql_match_as_topic_patterns_do() {
    use herald::TopicPattern;
    let store = support::store().await;
    let types = [
        "a",
        "a.b",
        "a.x.b",
        "a.x.y.b",
        "a.x.y",
        "b",
        "x.a.b",
        "order.created",
        "shop.order.created",
        "order-x.created_1",
        "created",
    ];
    store
        .append(
            &stream("types-1"),
            ExpectedVersion::Any,
            types
                .iter()
                .map(|t| NewEvent::new(*t, json!(null)))
                .collect(),
        )
        .await
        .unwrap();
    for pattern in [
        "a.#.b",
        "a.#",
        "#.b",
        "#",
        "*",
        "*.created",
        "order.*",
        "a.*.b",
        "#.created",
        "order-x.created_1",
        "a.b",
    ] {
        let topic = TopicPattern::parse(pattern).unwrap();
        let got: Vec<String> = store
            .read_all(ReadAll::after(0).topic(topic.clone()))
            .map_ok(|e| e.event_type().to_owned())
            .try_collect()
            .await
            .unwrap();
        let want: Vec<String> = types
            .iter()
            .filter(|t| topic.matches(t))
            .map(|t| (*t).to_owned())
            .collect();
        assert_eq!(got, want, "pattern {pattern}");
    }
    // `#` beside other patterns still matches every type.
    let got: Vec<String> = store
        .read_all(
            ReadAll::after(0)
                .topic(TopicPattern::parse("a.b").unwrap())
                .topic(TopicPattern::parse("#").unwrap()),
        )
        .map_ok(|e| e.event_type().to_owned())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(got, types, "patterns a.b and #");
}

/// Polls until `bus`'s subscriber `name` is in `state`.
async fn until_state(bus: &herald::Bus, name: &str, state: herald::SubscriberState) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while bus.subscriber(name).map(|s| s.state).as_ref() != Some(&state) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {name} is {state:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_state_saved_through_one_store_is_followed_through_another() {
    use herald::store::CheckpointStore;
    use herald::{Bus, DeliveryMode, Subscriber, SubscriberState, handler_fn};

    // Two stores on one schema, as two processes have.
    let config = support::config();
    let first = Arc::new(support::store_with(config.clone()).await);
    let second = Arc::new(support::store_with(config).await);
    assert_eq!(second.load_enabled("mailer").await.unwrap(), None);
    first.save_enabled("mailer", false).await.unwrap();
    assert_eq!(second.load_enabled("mailer").await.unwrap(), Some(false));
    // Saving again replaces the row, and leaves the checkpoint alone.
    first.save("mailer", 7).await.unwrap();
    second.save_enabled("mailer", true).await.unwrap();
    second.save_enabled("mailer", false).await.unwrap();
    assert_eq!(first.load_enabled("mailer").await.unwrap(), Some(false));
    assert_eq!(first.load("mailer").await.unwrap(), Some(7));

    let subscriber = || {
        Subscriber::new("mailer", handler_fn(|_, _| async { Ok(()) }))
            .topic("#")
            .mode(DeliveryMode::Durable)
            .poll_interval(Duration::from_millis(50))
    };
    let a = Bus::builder().store(Arc::clone(&first)).build();
    let b = Bus::builder().store(Arc::clone(&second)).build();
    a.subscribe(subscriber()).unwrap();
    b.subscribe(subscriber()).unwrap();
    until_state(&a, "mailer", SubscriberState::Disabled).await;
    until_state(&b, "mailer", SubscriberState::Disabled).await;

    a.set_enabled("mailer", true).await.unwrap();
    until_state(&b, "mailer", SubscriberState::Enabled).await;
    // A sync disable is saved by the runner on its next round.
    b.disable("mailer").unwrap();
    until_state(&a, "mailer", SubscriberState::Disabled).await;
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(first.load_enabled("mailer").await.unwrap(), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_retries_saved_through_one_store_are_seen_through_another() {
    use herald::store::{CheckpointStore, ScheduledRetry};
    use herald::{AttemptError, ErrorKind};

    // Two stores on one schema, as two processes (or a restarted one) have.
    let config = support::config();
    let first = support::store_with(config.clone()).await;
    let whole = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
    let retry = ScheduledRetry {
        event_id: EventId::new(),
        position: 42,
        errors: vec![AttemptError {
            attempt: 1,
            message: "refused".to_owned(),
            kind: ErrorKind::Timeout,
            at: whole,
        }],
        due: whole + chrono::Duration::nanoseconds(789),
    };
    first.schedule_retry("mailer", &retry).await.unwrap();
    first.save("mailer", 41).await.unwrap();
    drop(first);
    let second = support::store_with(config).await;
    assert_eq!(
        second.scheduled_retries("mailer").await.unwrap(),
        [ScheduledRetry {
            due: whole,
            ..retry.clone()
        }],
        "seen through another store, the due time rounded down to the microsecond"
    );
    // The retry is apart from the checkpoint: resetting one keeps the other.
    second.reset("mailer").await.unwrap();
    assert_eq!(second.scheduled_retries("mailer").await.unwrap().len(), 1);
    second.clear_retry("mailer", retry.event_id).await.unwrap();
    assert!(second.scheduled_retries("mailer").await.unwrap().is_empty());
}
