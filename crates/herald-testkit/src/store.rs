//! The [`EventStore`] conformance suite.
//!
//! Each scenario tests sentences of [`EventStore`]'s contract. Run them all
//! with [`store_conformance!`](crate::store_conformance).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use herald::store::{
    Direction, EventStore, ExpectedVersion, ListStreams, ReadAll, ReadStream, StoreError,
    StoreErrorKind, StreamAppend, StreamName,
};
use herald::{EventId, NewEvent, TopicPattern};
use serde_json::json;

/// Turns the scenarios into one test each, for a store made by `$factory`
/// (an `async fn() -> impl EventStore` returning an empty store of the
/// test's own). The calling crate needs `tokio` (with `macros` and
/// `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! store_conformance {
    ($factory:path) => {
        $crate::__store_scenarios!(
            $factory;
            appends_events_with_consecutive_versions_and_increasing_positions,
            rejects_append_at_wrong_expected_version_and_writes_nothing,
            checks_every_kind_of_expected_version,
            appends_a_batch_atomically,
            appends_to_several_streams_in_one_step,
            an_append_to_several_streams_writes_nothing_when_one_part_fails,
            repeats_an_identical_append_idempotently,
            rejects_a_reused_event_id_with_other_content,
            rejects_a_reused_event_id_in_another_stream_or_batch,
            empty_append_checks_the_expected_version_and_writes_nothing,
            keeps_ids_types_payloads_and_metadata,
            reads_a_stream_forward_and_backward_with_limits,
            reads_an_unknown_stream_as_empty,
            reads_the_global_log_in_position_order_across_batches,
            filters_the_global_log_by_topic_and_time,
            links_events_into_another_stream_without_copying,
            linking_an_unknown_event_fails_and_writes_nothing,
            an_event_linked_into_its_own_stream_reads_as_a_link,
            reports_stream_info,
            lists_streams_by_name_with_paging_and_prefix,
            deletes_a_stream_and_its_events_everywhere,
            a_deleted_stream_name_can_be_used_again,
            concurrent_exact_appends_to_one_stream_let_exactly_one_win,
            a_tailing_reader_never_misses_events_from_concurrent_writers,
            head_tracks_the_last_position,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_scenarios {
    ($factory:path; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::store::$name($factory().await).await;
            }
        )*
    };
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("a valid stream name")
}

fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type.to_owned(), json!({ "n": n }))
}

fn n_of(e: &herald::RecordedEvent) -> u64 {
    e.data().to_value()["n"].as_u64().expect("payload with n")
}

async fn all<S: EventStore>(store: &S, query: ReadAll) -> Vec<herald::RecordedEvent> {
    store
        .read_all(query)
        .try_collect()
        .await
        .expect("read the global log")
}

/// Versions count from 0 in each stream; positions increase across streams.
pub async fn appends_events_with_consecutive_versions_and_increasing_positions<S: EventStore>(
    store: S,
) {
    let a = stream("order-1");
    let b = stream("order-2");
    let first = store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![event("order.created", 1), event("order.paid", 2)],
        )
        .await
        .unwrap();
    assert_eq!(first.version, Some(1));
    assert_eq!(
        first.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [0, 1]
    );
    let second = store
        .append(&b, ExpectedVersion::Any, vec![event("order.created", 3)])
        .await
        .unwrap();
    let third = store
        .append(
            &a,
            ExpectedVersion::Exact(1),
            vec![event("order.shipped", 4)],
        )
        .await
        .unwrap();
    assert_eq!(second.events[0].version, 0);
    assert_eq!(third.events[0].version, 2);
    let positions: Vec<u64> = first
        .events
        .iter()
        .chain(&second.events)
        .chain(&third.events)
        .map(|e| e.position)
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let read = store.read_stream(&a, ReadStream::forward()).await.unwrap();
    let got: Vec<(Option<&str>, Option<u64>, Option<u64>)> = read
        .iter()
        .map(|e| (e.stream(), e.version(), e.position()))
        .collect();
    assert_eq!(
        got,
        [
            (Some("order-1"), Some(0), Some(positions[0])),
            (Some("order-1"), Some(1), Some(positions[1])),
            (Some("order-1"), Some(2), Some(positions[3])),
        ]
    );
}

/// A conflict names the stream, the expected and the actual version, and
/// writes nothing.
pub async fn rejects_append_at_wrong_expected_version_and_writes_nothing<S: EventStore>(store: S) {
    let s = stream("account-9");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![event("account.opened", 1), event("account.credited", 2)],
        )
        .await
        .unwrap();
    let err = store
        .append(
            &s,
            ExpectedVersion::Exact(0),
            vec![event("account.debited", 3)],
        )
        .await
        .unwrap_err();
    match &err {
        StoreError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(stream.as_str(), "account-9");
            assert_eq!(*expected, ExpectedVersion::Exact(0));
            assert_eq!(*actual, Some(1));
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    assert_eq!(err.kind(), StoreErrorKind::Conflict);
    assert_eq!(
        err.to_string(),
        "wrong expected version for stream account-9: expected version 0, found version 1"
    );
    assert_eq!(
        store
            .read_stream(&s, ReadStream::forward())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(all(&store, ReadAll::after(0)).await.len(), 2);
}

/// `NoStream`, `StreamExists`, `Exact` and `Any` each accept and refuse what
/// they say.
pub async fn checks_every_kind_of_expected_version<S: EventStore>(store: S) {
    let s = stream("cart-3");
    let conflict =
        |r: Result<_, StoreError>| matches!(r, Err(StoreError::WrongExpectedVersion { .. }));
    assert!(conflict(
        store
            .append(&s, ExpectedVersion::StreamExists, vec![event("cart.x", 0)])
            .await
    ));
    assert!(conflict(
        store
            .append(&s, ExpectedVersion::Exact(0), vec![event("cart.x", 0)])
            .await
    ));
    store
        .append(&s, ExpectedVersion::NoStream, vec![event("cart.x", 1)])
        .await
        .unwrap();
    assert!(conflict(
        store
            .append(&s, ExpectedVersion::NoStream, vec![event("cart.x", 2)])
            .await
    ));
    store
        .append(&s, ExpectedVersion::StreamExists, vec![event("cart.x", 3)])
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Exact(1), vec![event("cart.x", 4)])
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Any, vec![event("cart.x", 5)])
        .await
        .unwrap();
    let ns: Vec<u64> = store
        .read_stream(&s, ReadStream::forward())
        .await
        .unwrap()
        .iter()
        .map(n_of)
        .collect();
    assert_eq!(ns, [1, 3, 4, 5]);
}

/// A batch with one bad event type writes none of its events.
pub async fn appends_a_batch_atomically<S: EventStore>(store: S) {
    let s = stream("batch-1");
    let err = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![
                event("good.one", 1),
                event("bad type", 2),
                event("good.two", 3),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidEventType(_)), "{err:?}");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
    assert!(
        store
            .read_stream(&s, ReadStream::forward())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.stream_info(&s).await.unwrap().is_none());
    assert!(all(&store, ReadAll::after(0)).await.is_empty());
}

/// Appending the same events (same ids, same content) again returns where
/// they are and writes nothing.
pub async fn repeats_an_identical_append_idempotently<S: EventStore>(store: S) {
    let s = stream("payment-5");
    let batch = vec![
        event("payment.requested", 1).with_id(EventId::new()),
        event("payment.captured", 2).with_id(EventId::new()),
    ];
    let first = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    // The retry still says NoStream, as a client retrying after a lost reply
    // would.
    let again = store
        .append(&s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert_eq!(again.events, first.events);
    assert_eq!(again.version, Some(1));
    assert_eq!(
        store
            .read_stream(&s, ReadStream::forward())
            .await
            .unwrap()
            .len(),
        2
    );
}

/// Reusing an id with another payload is a clear error that writes nothing.
pub async fn rejects_a_reused_event_id_with_other_content<S: EventStore>(store: S) {
    let s = stream("payment-6");
    let id = EventId::new();
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![event("payment.requested", 1).with_id(id)],
        )
        .await
        .unwrap();
    let err = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![event("payment.requested", 2).with_id(id)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEvent { id: dup, .. } if dup == id),
        "{err:?}"
    );
    assert!(err.to_string().contains(&id.to_string()), "{err}");
    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(n_of(&read[0]), 1);
}

/// An id stored in another stream, repeated within a batch, or mixed with new
/// events is a duplicate too.
pub async fn rejects_a_reused_event_id_in_another_stream_or_batch<S: EventStore>(store: S) {
    let (a, b) = (stream("dup-a"), stream("dup-b"));
    let id = EventId::new();
    store
        .append(&a, ExpectedVersion::Any, vec![event("x.y", 1).with_id(id)])
        .await
        .unwrap();
    let in_other = store
        .append(&b, ExpectedVersion::Any, vec![event("x.y", 1).with_id(id)])
        .await
        .unwrap_err();
    assert!(
        matches!(in_other, StoreError::DuplicateEvent { .. }),
        "{in_other:?}"
    );
    let twice = EventId::new();
    let in_batch = store
        .append(
            &b,
            ExpectedVersion::Any,
            vec![
                event("x.y", 2).with_id(twice),
                event("x.y", 2).with_id(twice),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(in_batch, StoreError::DuplicateEvent { .. }),
        "{in_batch:?}"
    );
    let mixed = store
        .append(
            &a,
            ExpectedVersion::Any,
            vec![event("x.y", 3), event("x.y", 1).with_id(id)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(mixed, StoreError::DuplicateEvent { .. }),
        "{mixed:?}"
    );
    assert!(store.stream_info(&b).await.unwrap().is_none());
    assert_eq!(
        store
            .read_stream(&a, ReadStream::forward())
            .await
            .unwrap()
            .len(),
        1
    );
}

/// An empty append checks the expectation and writes nothing.
pub async fn empty_append_checks_the_expected_version_and_writes_nothing<S: EventStore>(store: S) {
    let s = stream("empty-1");
    let none = store
        .append(&s, ExpectedVersion::NoStream, vec![])
        .await
        .unwrap();
    assert_eq!(none.version, None);
    assert!(none.events.is_empty());
    assert!(store.stream_info(&s).await.unwrap().is_none());
    store
        .append(&s, ExpectedVersion::Any, vec![event("a.b", 1)])
        .await
        .unwrap();
    let some = store
        .append(&s, ExpectedVersion::Exact(0), vec![])
        .await
        .unwrap();
    assert_eq!(some.version, Some(0));
    assert!(matches!(
        store.append(&s, ExpectedVersion::Exact(5), vec![]).await,
        Err(StoreError::WrongExpectedVersion { .. })
    ));
}

/// What goes in comes out: id, type, payload bytes, metadata, and a
/// recorded-at time.
pub async fn keeps_ids_types_payloads_and_metadata<S: EventStore>(store: S) {
    let s = stream("meta-1");
    let id = EventId::new();
    let correlation = *EventId::new().as_uuid();
    let causation = *EventId::new().as_uuid();
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let payload = json!({"text": "héllo \"quoted\" \n", "list": [1, 2.5, null, true], "nested": {"deep": {}}});
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![
                NewEvent::new("order.line.added", payload.clone())
                    .with_id(id)
                    .with_correlation_id(correlation)
                    .with_causation_id(causation)
                    .with_header("tenant", "acme")
                    .with_header("trace", "00-abc-01"),
            ],
        )
        .await
        .unwrap();
    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    let e = &read[0];
    assert_eq!(e.id(), id);
    assert_eq!(e.event_type(), "order.line.added");
    assert_eq!(e.data().to_value(), payload);
    assert_eq!(e.correlation_id(), correlation);
    assert_eq!(e.causation_id(), Some(causation));
    assert_eq!(e.metadata().headers["tenant"], "acme");
    assert_eq!(e.metadata().headers["trace"], "00-abc-01");
    assert!(
        e.recorded_at() >= before
            && e.recorded_at() <= chrono::Utc::now() + chrono::Duration::seconds(1)
    );
    assert_eq!(store.event(id).await.unwrap().as_ref(), Some(e));
    assert!(store.event(EventId::new()).await.unwrap().is_none());
}

/// Forward and backward reads honour `from` and `limit`.
pub async fn reads_a_stream_forward_and_backward_with_limits<S: EventStore>(store: S) {
    let s = stream("list-1");
    store
        .append(
            &s,
            ExpectedVersion::Any,
            (0..10).map(|n| event("item.added", n)).collect(),
        )
        .await
        .unwrap();
    let read = |q: ReadStream| {
        let store = &store;
        let s = &s;
        async move {
            store
                .read_stream(s, q)
                .await
                .unwrap()
                .iter()
                .map(n_of)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        read(ReadStream::forward()).await,
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(read(ReadStream::forward().from(7)).await, [7, 8, 9]);
    assert_eq!(
        read(ReadStream::forward().from(2).limit(3)).await,
        [2, 3, 4]
    );
    assert_eq!(read(ReadStream::backward().limit(3)).await, [9, 8, 7]);
    assert_eq!(read(ReadStream::backward().from(4).limit(2)).await, [4, 3]);
    assert_eq!(read(ReadStream::backward().from(100)).await.len(), 10);
    assert!(read(ReadStream::forward().from(10)).await.is_empty());
    assert_eq!(ReadStream::backward().direction, Direction::Backward);
}

/// A stream with no events reads as empty, not as an error.
pub async fn reads_an_unknown_stream_as_empty<S: EventStore>(store: S) {
    let read = store
        .read_stream(&stream("nobody-here"), ReadStream::forward())
        .await
        .unwrap();
    assert!(read.is_empty());
    assert!(
        store
            .stream_info(&stream("nobody-here"))
            .await
            .unwrap()
            .is_none()
    );
}

/// The global log yields every event in position order, across read batches.
pub async fn reads_the_global_log_in_position_order_across_batches<S: EventStore>(store: S) {
    for chunk in 0..12u64 {
        let s = stream(&format!("log-{}", chunk % 3));
        store
            .append(
                &s,
                ExpectedVersion::Any,
                (0..100)
                    .map(|i| event("log.entry", chunk * 100 + i))
                    .collect(),
            )
            .await
            .unwrap();
    }
    let events = all(&store, ReadAll::after(0).batch_size(64)).await;
    assert_eq!(events.len(), 1200);
    assert_eq!(
        events.iter().map(n_of).collect::<Vec<_>>(),
        (0..1200).collect::<Vec<_>>()
    );
    let positions: Vec<u64> = events.iter().map(|e| e.position().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let after = all(&store, ReadAll::after(positions[999]).batch_size(7)).await;
    assert_eq!(after.len(), 200);
    assert_eq!(after[0].position(), Some(positions[1000]));
    let limited = all(&store, ReadAll::after(0).limit(150).batch_size(64)).await;
    assert_eq!(limited.len(), 150);
}

/// Topic patterns and a time range filter the global log.
pub async fn filters_the_global_log_by_topic_and_time<S: EventStore>(store: S) {
    let s = stream("mixed-1");
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![
                event("order.created", 1),
                event("invoice.sent", 2),
                event("order.line.added", 3),
            ],
        )
        .await
        .unwrap();
    let orders = all(
        &store,
        ReadAll::after(0).topic(TopicPattern::parse("order.*").unwrap()),
    )
    .await;
    assert_eq!(orders.iter().map(n_of).collect::<Vec<_>>(), [1]);
    let deep = all(
        &store,
        ReadAll::after(0)
            .topic(TopicPattern::parse("order.#").unwrap())
            .topic(TopicPattern::parse("invoice.sent").unwrap()),
    )
    .await;
    assert_eq!(deep.iter().map(n_of).collect::<Vec<_>>(), [1, 2, 3]);

    // The cut lies after every event so far; the next append comes once the
    // wall clock is well past it (stores may stamp times on their own clock).
    let cut = chrono::Utc::now() + chrono::Duration::milliseconds(5);
    while chrono::Utc::now() < cut + chrono::Duration::milliseconds(15) {
        tokio::task::yield_now().await;
    }
    store
        .append(&s, ExpectedVersion::Any, vec![event("order.created", 4)])
        .await
        .unwrap();
    let late = all(&store, ReadAll::after(0).since(cut)).await;
    assert_eq!(late.iter().map(n_of).collect::<Vec<_>>(), [4]);
    let early = all(&store, ReadAll::after(0).until(cut)).await;
    assert_eq!(early.iter().map(n_of).collect::<Vec<_>>(), [1, 2, 3]);
}

/// A link shows an event in a second stream without copying it.
pub async fn links_events_into_another_stream_without_copying<S: EventStore>(store: S) {
    let (o1, o2, customer) = (stream("order-71"), stream("order-72"), stream("customer-7"));
    let a = store
        .append(&o1, ExpectedVersion::Any, vec![event("order.created", 1)])
        .await
        .unwrap();
    let b = store
        .append(&o2, ExpectedVersion::Any, vec![event("order.created", 2)])
        .await
        .unwrap();
    let linked = store
        .link(
            &customer,
            ExpectedVersion::NoStream,
            &[a.events[0].id, b.events[0].id],
        )
        .await
        .unwrap();
    assert_eq!(linked.version, Some(1));
    assert_eq!(linked.events[0].position, a.events[0].position);
    let read = store
        .read_stream(&customer, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[1].id(), b.events[0].id);
    assert_eq!(read[1].stream(), Some("customer-7"));
    assert_eq!(read[1].version(), Some(1));
    assert_eq!(read[1].position(), Some(b.events[0].position));
    let origin = read[1]
        .origin
        .as_ref()
        .expect("a linked event says where it came from");
    assert_eq!((&*origin.stream, origin.version), ("order-72", 0));
    // The global log still holds each event once.
    assert_eq!(all(&store, ReadAll::after(0)).await.len(), 2);
    // The expected version applies to links too.
    assert!(matches!(
        store
            .link(&customer, ExpectedVersion::Exact(0), &[a.events[0].id])
            .await,
        Err(StoreError::WrongExpectedVersion { .. })
    ));
}

/// An event linked into the stream it was appended to appears twice there:
/// once as itself, once as a link at the next version.
pub async fn an_event_linked_into_its_own_stream_reads_as_a_link<S: EventStore>(store: S) {
    let s = stream("self-link-1");
    let a = store
        .append(&s, ExpectedVersion::Any, vec![event("note.added", 1)])
        .await
        .unwrap();
    store
        .link(&s, ExpectedVersion::Exact(0), &[a.events[0].id])
        .await
        .unwrap();
    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(
        (read[0].version(), read[0].origin.as_ref()),
        (Some(0), None)
    );
    assert_eq!(read[1].id(), a.events[0].id);
    assert_eq!(read[1].version(), Some(1));
    let origin = read[1].origin.as_ref().expect("the second is a link");
    assert_eq!((&*origin.stream, origin.version), ("self-link-1", 0));
}

/// Linking an id the store does not hold fails, and links nothing.
pub async fn linking_an_unknown_event_fails_and_writes_nothing<S: EventStore>(store: S) {
    let s = stream("order-81");
    let a = store
        .append(&s, ExpectedVersion::Any, vec![event("order.created", 1)])
        .await
        .unwrap();
    let missing = EventId::new();
    let err = store
        .link(
            &stream("customer-8"),
            ExpectedVersion::Any,
            &[a.events[0].id, missing],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::EventNotFound(id) if id == missing),
        "{err:?}"
    );
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    assert!(
        store
            .stream_info(&stream("customer-8"))
            .await
            .unwrap()
            .is_none()
    );
}

/// Stream info gives version, count and first and last times.
pub async fn reports_stream_info<S: EventStore>(store: S) {
    let s = stream("info-1");
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![event("a.b", 1), event("a.b", 2)],
        )
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Any, vec![event("a.b", 3)])
        .await
        .unwrap();
    let info = store
        .stream_info(&s)
        .await
        .unwrap()
        .expect("the stream exists");
    assert_eq!(info.stream, s);
    assert_eq!(info.version, 2);
    assert_eq!(info.count, 3);
    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(info.first_recorded_at, read[0].recorded_at());
    assert_eq!(info.last_recorded_at, read[2].recorded_at());
}

/// Streams list in name order, with a cursor, a prefix and a limit.
pub async fn lists_streams_by_name_with_paging_and_prefix<S: EventStore>(store: S) {
    for name in ["order-2", "customer-1", "order-1", "order-10", "invoice-1"] {
        store
            .append(&stream(name), ExpectedVersion::Any, vec![event("a.b", 0)])
            .await
            .unwrap();
    }
    let names = |infos: Vec<herald::store::StreamInfo>| {
        infos
            .into_iter()
            .map(|i| i.stream.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(store.list_streams(ListStreams::default()).await.unwrap()),
        ["customer-1", "invoice-1", "order-1", "order-10", "order-2"]
    );
    assert_eq!(
        names(
            store
                .list_streams(ListStreams::default().prefix("order-").limit(2))
                .await
                .unwrap()
        ),
        ["order-1", "order-10"]
    );
    assert_eq!(
        names(
            store
                .list_streams(ListStreams::default().prefix("order-").after("order-10"))
                .await
                .unwrap()
        ),
        ["order-2"]
    );
}

/// Deleting a stream removes its events from the stream and the global log,
/// and leaves holes where they were linked.
pub async fn deletes_a_stream_and_its_events_everywhere<S: EventStore>(store: S) {
    let (gone, kept, links) = (stream("gdpr-1"), stream("keep-1"), stream("index-1"));
    let g = store
        .append(
            &gone,
            ExpectedVersion::Any,
            vec![event("user.registered", 1), event("user.renamed", 2)],
        )
        .await
        .unwrap();
    let k = store
        .append(
            &kept,
            ExpectedVersion::Any,
            vec![event("user.registered", 3)],
        )
        .await
        .unwrap();
    store
        .link(
            &links,
            ExpectedVersion::Any,
            &[g.events[0].id, k.events[0].id, g.events[1].id],
        )
        .await
        .unwrap();
    store
        .link(&gone, ExpectedVersion::Any, &[k.events[0].id])
        .await
        .unwrap();

    assert!(matches!(
        store.delete_stream(&gone, ExpectedVersion::Exact(0)).await,
        Err(StoreError::WrongExpectedVersion { .. })
    ));
    assert!(
        store
            .delete_stream(&gone, ExpectedVersion::Exact(2))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_stream(&gone, ExpectedVersion::Any)
            .await
            .unwrap()
    );

    assert!(
        store
            .read_stream(&gone, ReadStream::forward())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.stream_info(&gone).await.unwrap().is_none());
    assert!(store.event(g.events[0].id).await.unwrap().is_none());
    let log = all(&store, ReadAll::after(0)).await;
    assert_eq!(log.iter().map(n_of).collect::<Vec<_>>(), [3]);
    // The linking stream keeps its other entries at their versions.
    let index = store
        .read_stream(&links, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(index.len(), 1);
    assert_eq!((n_of(&index[0]), index[0].version()), (3, Some(1)));
    assert_eq!(store.stream_info(&links).await.unwrap().unwrap().version, 2);
    // The event the deleted stream linked to is still there.
    assert_eq!(
        store
            .read_stream(&kept, ReadStream::forward())
            .await
            .unwrap()
            .len(),
        1
    );
}

/// After a delete, the name starts again from version 0.
pub async fn a_deleted_stream_name_can_be_used_again<S: EventStore>(store: S) {
    let s = stream("reuse-1");
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![event("a.b", 1), event("a.b", 2)],
        )
        .await
        .unwrap();
    store.delete_stream(&s, ExpectedVersion::Any).await.unwrap();
    let again = store
        .append(&s, ExpectedVersion::NoStream, vec![event("a.b", 3)])
        .await
        .unwrap();
    assert_eq!(again.events[0].version, 0);
    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(read.iter().map(n_of).collect::<Vec<_>>(), [3]);
}

/// Writers racing with the same exact expected version: one wins per round,
/// the others get a conflict, and the stream has no gap or duplicate.
pub async fn concurrent_exact_appends_to_one_stream_let_exactly_one_win<S: EventStore>(store: S) {
    let store = Arc::new(store);
    let s = stream("race-1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event("race.start", 0)])
        .await
        .unwrap();
    for round in 0..5u64 {
        let tasks: Vec<_> = (0..8u64)
            .map(|w| {
                let (store, s) = (Arc::clone(&store), s.clone());
                tokio::spawn(async move {
                    store
                        .append(
                            &s,
                            ExpectedVersion::Exact(round),
                            vec![event("race.step", round * 10 + w)],
                        )
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.expect("writer task") {
                Ok(_) => wins += 1,
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    assert_eq!(actual, Some(round + 1))
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
    assert_eq!(read.len(), 6);
    assert!(
        read.iter()
            .enumerate()
            .all(|(i, e)| e.version() == Some(i as u64))
    );
}

/// A reader that tails the global log from its last position, while 8
/// writers append concurrently, sees every event exactly once.
pub async fn a_tailing_reader_never_misses_events_from_concurrent_writers<S: EventStore>(store: S) {
    const WRITERS: u64 = 8;
    const APPENDS: u64 = 40;
    let store = Arc::new(store);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let s = stream(&format!("tail-{w}"));
                let mut ids = Vec::new();
                for i in 0..APPENDS {
                    let batch = vec![
                        event("tail.x", w * 1000 + i * 2),
                        event("tail.x", w * 1000 + i * 2 + 1),
                    ];
                    let done = store
                        .append(&s, ExpectedVersion::Any, batch)
                        .await
                        .expect("append");
                    ids.extend(done.events.iter().map(|e| e.id));
                }
                ids
            })
        })
        .collect();
    let reader = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut after = 0;
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while (seen.len() as u64) < WRITERS * APPENDS * 2 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "reader saw only {} events",
                    seen.len()
                );
                let batch = all(&*store, ReadAll::after(after).limit(100)).await;
                for e in &batch {
                    let p = e.position().expect("a stored event has a position");
                    assert!(p > after, "position {p} after {after}");
                    after = p;
                    seen.push(e.id());
                }
                if batch.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            seen
        })
    };
    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.expect("writer task"));
    }
    let seen = reader.await.expect("reader task");
    let unique: HashSet<_> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an event was seen twice");
    assert_eq!(unique, written, "the reader missed events");
}

/// `head` is the last position, and `watch_head`, where offered, follows it.
pub async fn head_tracks_the_last_position<S: EventStore>(store: S) {
    assert_eq!(store.head().await.unwrap(), 0);
    let mut watch = store.watch_head();
    let done = store
        .append(
            &stream("head-1"),
            ExpectedVersion::Any,
            vec![event("a.b", 1), event("a.b", 2)],
        )
        .await
        .unwrap();
    let last = done.events[1].position;
    assert_eq!(store.head().await.unwrap(), last);
    if let Some(rx) = watch.as_mut() {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|p| *p >= last))
            .await
            .expect("the head watch was told of the append")
            .expect("the store is alive");
    }
}

/// `append_all` stores every part, in order, a stream named twice
/// continuing where its first part ended.
pub async fn appends_to_several_streams_in_one_step<S: EventStore>(store: S) {
    let (order, customer) = (stream("order-1"), stream("customer-1"));
    let appended = store
        .append_all(vec![
            StreamAppend::new(
                order.clone(),
                ExpectedVersion::NoStream,
                vec![event("order.created", 0), event("order.paid", 1)],
            ),
            StreamAppend::new(
                customer.clone(),
                ExpectedVersion::Any,
                vec![event("customer.ordered", 2)],
            ),
            StreamAppend::new(
                order.clone(),
                ExpectedVersion::Exact(1),
                vec![event("order.shipped", 3)],
            ),
        ])
        .await
        .expect("append to several streams");
    assert_eq!(appended.len(), 3);
    assert_eq!(appended[0].version, Some(1));
    assert_eq!(appended[1].version, Some(0));
    assert_eq!(appended[2].version, Some(2));
    let positions: Vec<u64> = appended
        .iter()
        .flat_map(|a| a.events.iter().map(|e| e.position))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions follow the order given: {positions:?}"
    );
    let read = store
        .read_stream(&order, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.iter().map(n_of).collect::<Vec<_>>(), vec![0, 1, 3]);
    assert_eq!(store.head().await.unwrap(), 4);
}

/// A conflict or a reused id in any part of `append_all` fails it with the
/// part's typed error, and no part is stored.
pub async fn an_append_to_several_streams_writes_nothing_when_one_part_fails<S: EventStore>(
    store: S,
) {
    let (taken, fresh) = (stream("taken"), stream("fresh"));
    store
        .append(&taken, ExpectedVersion::Any, vec![event("thing.made", 0)])
        .await
        .unwrap();
    let err = store
        .append_all(vec![
            StreamAppend::new(
                fresh.clone(),
                ExpectedVersion::Any,
                vec![event("thing.made", 1)],
            ),
            StreamAppend::new(
                taken.clone(),
                ExpectedVersion::NoStream,
                vec![event("thing.made", 2)],
            ),
        ])
        .await
        .expect_err("the second part conflicts");
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { ref stream, .. } if *stream == taken),
        "{err}"
    );

    let id = EventId::new();
    let err = store
        .append_all(vec![
            StreamAppend::new(
                fresh.clone(),
                ExpectedVersion::Any,
                vec![event("thing.made", 3).with_id(id)],
            ),
            StreamAppend::new(
                stream("other"),
                ExpectedVersion::Any,
                vec![event("thing.made", 4).with_id(id)],
            ),
        ])
        .await
        .expect_err("one id in two parts");
    assert!(matches!(err, StoreError::DuplicateEvent { .. }), "{err}");

    assert_eq!(
        store.head().await.unwrap(),
        1,
        "nothing of the failed calls"
    );
    assert!(
        store
            .read_stream(&fresh, ReadStream::forward())
            .await
            .unwrap()
            .is_empty()
    );
}
