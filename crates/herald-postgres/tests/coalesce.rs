//! Coalesced appends: appends queued together share one commit, and each
//! is still settled on its own — its expected version, its ids, its
//! idempotent repeat.
//!
//! The tests make the groups deterministic: the store has two connections,
//! both held by the test while every append is polled once (which queues
//! it). The first two appends then form one group each, and every other
//! append waits for the next group, which takes them all when a connection
//! is free again.

mod support;

use futures_util::FutureExt;
use futures_util::future::join_all;
use herald::store::{
    Appended, EventStore, ExpectedVersion, ReadAll, ReadStream, StoreError, StreamName,
};
use herald::{EventId, NewEvent, RecordedEvent};
use herald_postgres::PgStore;
use serde_json::json;

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("a valid stream name")
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("test.happened", json!({ "n": n }))
}

/// A store with two connections and two groups in flight at most.
async fn store() -> PgStore {
    support::store_with(
        support::config()
            .max_connections(2)
            .coalesce_groups(2)
            .notify(false),
    )
    .await
}

type Call = (StreamName, ExpectedVersion, Vec<NewEvent>);

/// Runs the appends concurrently: the first two in groups of their own,
/// all the others in one group after them (see the module docs).
async fn grouped(store: &PgStore, calls: &[Call]) -> Vec<Result<Appended, StoreError>> {
    let held = (
        store.pool().acquire().await.expect("a connection"),
        store.pool().acquire().await.expect("another connection"),
    );
    let mut appends: Vec<_> = calls
        .iter()
        .map(|(s, expected, events)| store.append(s, *expected, events.clone()))
        .collect();
    for append in &mut appends {
        assert!(
            append.as_mut().now_or_never().is_none(),
            "an append finished while the store had no connection"
        );
    }
    drop(held);
    join_all(appends).await
}

/// Two appends to streams of their own, which take the first two groups.
fn fillers() -> Vec<Call> {
    (0..2)
        .map(|i| {
            (
                stream(&format!("filler-{i}")),
                ExpectedVersion::Any,
                vec![event(i)],
            )
        })
        .collect()
}

/// The whole global log, which must hold `want` events: read until they all
/// came (a group that fell back to one subtransaction per append leaves the
/// gap of its rolled-back attempt, which a reader passes on its next read),
/// checked against the table's row count.
async fn log(store: &PgStore, want: usize) -> Vec<RecordedEvent> {
    let stored: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".events",
        store.config().schema
    ))
    .fetch_one(store.pool())
    .await
    .expect("count the events");
    assert_eq!(stored, want as i64, "events stored");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen: Vec<RecordedEvent> = Vec::new();
    while seen.len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {want} events",
            seen.len()
        );
        let after = seen.last().and_then(RecordedEvent::position).unwrap_or(0);
        let batch: Vec<RecordedEvent> =
            futures_util::TryStreamExt::try_collect(store.read_all(ReadAll::after(after)))
                .await
                .expect("read the global log");
        if batch.is_empty() {
            tokio::task::yield_now().await;
        }
        seen.extend(batch);
    }
    seen
}

/// How many transactions wrote the events of these streams (their rows'
/// `xmin`).
async fn writers(store: &PgStore, streams: &[&str]) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(DISTINCT xmin::text) FROM \"{}\".events WHERE stream = ANY ($1)",
        store.config().schema
    ))
    .bind(streams)
    .fetch_one(store.pool())
    .await
    .expect("count the writers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_share_one_commit() {
    let store = store().await;
    let names: Vec<String> = (0..62).map(|i| format!("shared-{i}")).collect();
    let mut calls = fillers();
    calls.extend(names.iter().enumerate().map(|(i, name)| {
        (
            stream(name),
            ExpectedVersion::NoStream,
            vec![event(i as u64)],
        )
    }));

    let results = grouped(&store, &calls).await;

    let mut positions = std::collections::HashSet::new();
    for (result, (s, _, _)) in results.into_iter().zip(&calls) {
        let appended = result.unwrap_or_else(|e| panic!("append to {s} failed: {e}"));
        assert_eq!(&appended.stream, s);
        assert_eq!(appended.version, Some(0));
        assert_eq!(appended.events.len(), 1);
        assert!(positions.insert(appended.events[0].position));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        writers(&store, &names).await,
        1,
        "the 62 queued appends committed together"
    );
    let log = log(&store, 64).await;
    let logged: std::collections::HashSet<u64> =
        log.iter().filter_map(RecordedEvent::position).collect();
    assert_eq!(logged, positions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_exact_appends_let_one_win_per_version_and_losers_write_nothing() {
    let store = store().await;
    let s = stream("race");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();
    let mut winners = Vec::new();
    for version in 0..5_u64 {
        let calls: Vec<Call> = (0..16)
            .map(|caller| {
                (
                    s.clone(),
                    ExpectedVersion::Exact(version),
                    vec![NewEvent::new(
                        "test.raced",
                        json!({ "version": version, "caller": caller }),
                    )],
                )
            })
            .collect();
        let results = grouped(&store, &calls).await;
        let mut won = None;
        for (caller, result) in results.into_iter().enumerate() {
            match result {
                Ok(appended) => {
                    assert!(won.is_none(), "two appends won version {version}");
                    assert_eq!(appended.version, Some(version + 1));
                    won = Some(caller);
                }
                Err(StoreError::WrongExpectedVersion {
                    expected, actual, ..
                }) => {
                    assert_eq!(expected, ExpectedVersion::Exact(version));
                    assert_eq!(actual, Some(version + 1));
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        winners.push(won.unwrap_or_else(|| panic!("no append won version {version}")));
    }

    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(read.len(), 6, "only the winners were written");
    for (version, caller) in winners.iter().enumerate() {
        assert_eq!(
            read[version + 1].data().to_value(),
            json!({ "version": version, "caller": caller })
        );
    }
    log(&store, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_settles_failing_and_succeeding_appends_each_on_its_own() {
    let store = store().await;
    let existing = stream("existing");
    let stored = NewEvent::new("test.stored", json!({ "kept": true })).with_id(EventId::new());
    let original = store
        .append(&existing, ExpectedVersion::NoStream, vec![stored.clone()])
        .await
        .unwrap();
    let stored_id = stored.id().unwrap();

    let mut calls = fillers();
    calls.extend([
        (stream("fresh-1"), ExpectedVersion::NoStream, vec![event(1)]),
        (existing.clone(), ExpectedVersion::Exact(5), vec![event(2)]),
        (existing.clone(), ExpectedVersion::NoStream, vec![event(3)]),
        (
            stream("missing"),
            ExpectedVersion::StreamExists,
            vec![event(4)],
        ),
        (existing.clone(), ExpectedVersion::Exact(0), vec![event(5)]),
        (
            stream("fresh-2"),
            ExpectedVersion::Any,
            vec![NewEvent::new("test.stored", json!({ "kept": false })).with_id(stored_id)],
        ),
        (existing.clone(), ExpectedVersion::Any, vec![stored.clone()]),
        (
            stream("fresh-3"),
            ExpectedVersion::Any,
            vec![event(6), event(7)],
        ),
    ]);
    let mut results = grouped(&store, &calls).await.into_iter().skip(2);
    let mut next = || results.next().expect("a result per append");

    let ok1 = next().expect("fresh-1 is created");
    assert_eq!(ok1.version, Some(0));
    for (expected, actual) in [
        (ExpectedVersion::Exact(5), Some(0)),
        (ExpectedVersion::NoStream, Some(0)),
        (ExpectedVersion::StreamExists, None),
    ] {
        match next() {
            Err(StoreError::WrongExpectedVersion {
                expected: e,
                actual: a,
                ..
            }) => assert_eq!((e, a), (expected, actual)),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    let ok2 = next().expect("the exact append after the conflicts wins");
    assert_eq!(ok2.version, Some(1));
    match next() {
        Err(StoreError::DuplicateEvent { id, stream: s, .. }) => {
            assert_eq!((id, s), (stored_id, stream("fresh-2")));
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let repeat = next().expect("an identical repeat is idempotent");
    assert_eq!(repeat.events, original.events);
    let ok3 = next().expect("fresh-3 is created");
    assert_eq!(ok3.version, Some(1));
    assert_eq!(
        ok3.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [0, 1]
    );

    assert!(
        store
            .stream_info(&stream("missing"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .stream_info(&stream("fresh-2"))
            .await
            .unwrap()
            .is_none()
    );
    let read = store
        .read_stream(&existing, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[1].id(), ok2.events[0].id);
    // The stored event, the fillers, fresh-1, existing's second, fresh-3's two.
    log(&store, 7).await;
    assert_eq!(
        writers(&store, &["fresh-1", "fresh-3"]).await,
        1,
        "the group's appends committed together"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_given_twice_in_one_group_is_written_once() {
    let store = store().await;
    let twice = NewEvent::new("test.twice", json!({ "n": 1 })).with_id(EventId::new());
    let mut calls = fillers();
    calls.extend([
        (stream("twice-a"), ExpectedVersion::Any, vec![twice.clone()]),
        (stream("twice-b"), ExpectedVersion::Any, vec![twice.clone()]),
        (stream("twice-a"), ExpectedVersion::Any, vec![twice.clone()]),
        (stream("other"), ExpectedVersion::Any, vec![event(2)]),
    ]);
    let results = grouped(&store, &calls).await;
    let [_, _, first, elsewhere, again, other] = <[_; 6]>::try_from(results).unwrap();

    let first = first.expect("the first append of the id writes it");
    assert!(
        matches!(elsewhere, Err(StoreError::DuplicateEvent { ref stream, .. }) if stream.as_str() == "twice-b"),
        "{elsewhere:?}"
    );
    assert_eq!(
        again.expect("the identical repeat is idempotent").events,
        first.events
    );
    other.expect("an unrelated append of the group is written");
    assert!(
        store
            .stream_info(&stream("twice-b"))
            .await
            .unwrap()
            .is_none()
    );
    let read = store
        .read_stream(&stream("twice-a"), ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    log(&store, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_appends_write_once_and_return_the_same_positions() {
    let store = store().await;
    let s = stream("idempotent");
    let same = NewEvent::new("test.once", json!({ "n": 1 })).with_id(EventId::new());
    let calls: Vec<Call> = (0..32)
        .map(|_| (s.clone(), ExpectedVersion::Any, vec![same.clone()]))
        .collect();

    let results = grouped(&store, &calls).await;

    let mut all = results
        .into_iter()
        .map(|r| r.expect("every identical append succeeds"));
    let first = all.next().unwrap();
    assert_eq!(first.version, Some(0));
    for appended in all {
        assert_eq!(appended.events, first.events);
    }
    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(read.len(), 1);
    log(&store, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_re_appends_of_a_stored_event_return_its_positions() {
    let store = store().await;
    let s = stream("stored-once");
    let events: Vec<NewEvent> = (0..3).map(|n| event(n).with_id(EventId::new())).collect();
    let original = store
        .append(&s, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    // Repeats with an expectation the stream no longer meets are still
    // repeats.
    let calls: Vec<Call> = (0..16)
        .map(|_| (s.clone(), ExpectedVersion::NoStream, events.clone()))
        .collect();

    for result in grouped(&store, &calls).await {
        assert_eq!(result.expect("a repeat succeeds").events, original.events);
    }
    log(&store, 3).await;
}
