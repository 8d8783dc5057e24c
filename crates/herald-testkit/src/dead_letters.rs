//! The [`DeadLetterStore`] conformance suite.
//!
//! Run it with [`dead_letter_conformance!`](crate::dead_letter_conformance).

use chrono::{DateTime, Utc};
use herald::{
    AttemptError, DeadLetterQuery, DeadLetterStore, ErrorKind, EventId, EventType, Metadata,
    NewDeadLetter, Payload, RecordedEvent, RecordedParts, TopicPattern,
};
use serde_json::json;

/// Turns the scenarios into one test each, for dead-letter stores made by
/// `$factory` (an `async fn() -> impl DeadLetterStore`, empty and of the
/// test's own).
#[macro_export]
macro_rules! dead_letter_conformance {
    ($factory:path) => {
        $crate::__dead_letter_scenarios!(
            $factory;
            records_a_dead_letter_with_its_event_attempts_errors_and_times,
            updates_the_dead_letter_of_the_same_subscriber_and_event_instead_of_copying,
            keeps_one_dead_letter_per_subscriber_for_the_same_event,
            lists_oldest_first_with_filters_and_a_limit,
            gets_and_removes_dead_letters,
            counts_dead_letters_per_subscriber,
            pages_through_dead_letters_after_a_cursor,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __dead_letter_scenarios {
    ($factory:path; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::dead_letters::$name($factory().await).await;
            }
        )*
    };
}

fn event(event_type: &str, n: u64) -> RecordedEvent {
    RecordedEvent::from_parts(RecordedParts {
        id: EventId::new(),
        event_type: EventType::new(event_type).expect("a valid type"),
        stream: Some("dead-letter-tests".into()),
        version: Some(n),
        position: Some(n + 1),
        recorded_at: Utc::now(),
        data: Payload::from(json!({ "n": n })),
        metadata: Metadata::default(),
        origin: None,
    })
}

fn attempts(from: u32, messages: &[&str], at: DateTime<Utc>) -> Vec<AttemptError> {
    messages
        .iter()
        .zip(from..)
        .map(|(m, attempt)| AttemptError {
            attempt,
            message: (*m).to_owned(),
            kind: ErrorKind::Handler,
            at: at + chrono::Duration::milliseconds(i64::from(attempt)),
        })
        .collect()
}

fn letter(subscriber: &str, event: &RecordedEvent, errors: Vec<AttemptError>) -> NewDeadLetter {
    NewDeadLetter {
        subscriber: subscriber.to_owned(),
        event: event.clone(),
        reason: errors.last().map(|e| e.message.clone()).unwrap_or_default(),
        errors,
    }
}

/// A recorded dead letter keeps the event, the subscriber, the attempts,
/// every error and the first and last failure times.
pub async fn records_a_dead_letter_with_its_event_attempts_errors_and_times<D: DeadLetterStore>(
    store: D,
) {
    let e = event("order.created", 1);
    let t = Utc::now();
    let recorded = store
        .record(letter(
            "mailer",
            &e,
            attempts(1, &["timeout", "timeout", "refused"], t),
        ))
        .await
        .expect("record");
    let got = store.get(recorded.id).await.expect("get").expect("stored");
    assert_eq!(got, recorded);
    assert_eq!(got.subscriber, "mailer");
    assert_eq!(got.event, e);
    assert_eq!(got.attempts, 3);
    assert_eq!(got.reason, "refused");
    assert_eq!(
        got.errors
            .iter()
            .map(|a| a.message.as_str())
            .collect::<Vec<_>>(),
        ["timeout", "timeout", "refused"]
    );
    assert_eq!(got.first_failed_at, got.errors[0].at);
    assert_eq!(got.last_failed_at, got.errors[2].at);
}

/// The same event failing again for the same subscriber updates its dead
/// letter: attempts add up, errors append, the id stays.
pub async fn updates_the_dead_letter_of_the_same_subscriber_and_event_instead_of_copying<
    D: DeadLetterStore,
>(
    store: D,
) {
    let e = event("order.created", 2);
    let t = Utc::now();
    let first = store
        .record(letter("billing", &e, attempts(1, &["a", "b"], t)))
        .await
        .expect("record");
    let second = store
        .record(letter(
            "billing",
            &e,
            attempts(3, &["c"], t + chrono::Duration::seconds(5)),
        ))
        .await
        .expect("record again");
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempts, 3);
    assert_eq!(second.reason, "c");
    assert_eq!(
        second.errors.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(second.first_failed_at, first.first_failed_at);
    assert!(second.last_failed_at > first.last_failed_at);
    let all = store.list(&DeadLetterQuery::default()).await.expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0], second);
}

/// Two subscribers failing on one event have a dead letter each.
pub async fn keeps_one_dead_letter_per_subscriber_for_the_same_event<D: DeadLetterStore>(store: D) {
    let e = event("order.created", 3);
    let t = Utc::now();
    let a = store
        .record(letter("a", &e, attempts(1, &["x"], t)))
        .await
        .expect("record");
    let b = store
        .record(letter("b", &e, attempts(1, &["y"], t)))
        .await
        .expect("record");
    assert_ne!(a.id, b.id);
    assert_eq!(
        store
            .list(&DeadLetterQuery::default())
            .await
            .expect("list")
            .len(),
        2
    );
}

/// Listing is oldest first and filters by subscriber, event type, error
/// text and failure time.
pub async fn lists_oldest_first_with_filters_and_a_limit<D: DeadLetterStore>(store: D) {
    let t0 = Utc::now();
    let mut ids = Vec::new();
    for (i, (sub, ty, msg)) in [
        ("mailer", "order.created", "smtp timeout"),
        ("billing", "order.created", "card declined"),
        ("mailer", "invoice.sent", "smtp refused"),
        ("billing", "refund.issued", "ledger locked"),
    ]
    .into_iter()
    .enumerate()
    {
        let at = t0 + chrono::Duration::seconds(i as i64 * 10);
        let recorded = store
            .record(letter(sub, &event(ty, i as u64), attempts(1, &[msg], at)))
            .await
            .expect("record");
        ids.push(recorded.id);
    }
    let list = |q: DeadLetterQuery| {
        let store = &store;
        async move {
            store
                .list(&q)
                .await
                .expect("list")
                .iter()
                .map(|l| l.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(DeadLetterQuery::default()).await, ids);
    assert_eq!(
        list(DeadLetterQuery::default().subscriber("mailer")).await,
        [ids[0], ids[2]]
    );
    assert_eq!(
        list(DeadLetterQuery::default().event_type(TopicPattern::parse("order.*").unwrap())).await,
        [ids[0], ids[1]]
    );
    assert_eq!(
        list(DeadLetterQuery::default().error("smtp")).await,
        [ids[0], ids[2]]
    );
    assert_eq!(
        list(DeadLetterQuery::default().failed_between(
            Some(t0 + chrono::Duration::seconds(10)),
            Some(t0 + chrono::Duration::seconds(30)),
        ))
        .await,
        [ids[1], ids[2]]
    );
    assert_eq!(list(DeadLetterQuery::default().limit(3)).await, ids[..3]);
    assert_eq!(
        list(
            DeadLetterQuery::default()
                .subscriber("billing")
                .error("card")
        )
        .await,
        [ids[1]]
    );
}

/// `get` finds by id, `remove` returns the removed dead letter once.
pub async fn gets_and_removes_dead_letters<D: DeadLetterStore>(store: D) {
    let e = event("order.created", 4);
    let t = Utc::now();
    let recorded = store
        .record(letter("s", &e, attempts(1, &["x"], t)))
        .await
        .expect("record");
    assert!(
        store
            .get(EventId::new().into())
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(
        store.remove(recorded.id).await.expect("remove"),
        Some(recorded.clone())
    );
    assert_eq!(store.remove(recorded.id).await.expect("remove again"), None);
    assert!(store.get(recorded.id).await.expect("get").is_none());
    // After a removal, the same event failing again makes a new dead letter.
    let again = store
        .record(letter("s", &e, attempts(1, &["y"], t)))
        .await
        .expect("record");
    assert_ne!(again.id, recorded.id);
    assert_eq!(again.attempts, 1);
}

/// `counts` has one entry per subscriber with dead letters: a repeated
/// failure does not count twice, a removal counts down.
pub async fn counts_dead_letters_per_subscriber<D: DeadLetterStore>(store: D) {
    assert!(store.counts().await.expect("counts").is_empty());
    let t = Utc::now();
    let first = event("order.created", 1);
    let a1 = store
        .record(letter("a", &first, attempts(1, &["x"], t)))
        .await
        .expect("record");
    store
        .record(letter("a", &first, attempts(2, &["x again"], t)))
        .await
        .expect("record the same failure again");
    store
        .record(letter("a", &event("order.paid", 2), attempts(1, &["y"], t)))
        .await
        .expect("record");
    store
        .record(letter("b", &first, attempts(1, &["z"], t)))
        .await
        .expect("record");
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [("a".to_owned(), 2), ("b".to_owned(), 1)]
    );
    store.remove(a1.id).await.expect("remove");
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.get("a"), Some(&1));
    assert_eq!(counts.get("b"), Some(&1));
}

/// A dead letter of `subscriber` for a new `order.created` event, whose one
/// failure was at `at`: what retention tests record.
pub fn failed_at(subscriber: &str, at: DateTime<Utc>) -> NewDeadLetter {
    let error = AttemptError {
        attempt: 1,
        message: "down".to_owned(),
        kind: ErrorKind::Handler,
        at,
    };
    letter(subscriber, &event("order.created", 1), vec![error])
}

/// The subscribers of the dead letters in `store`, in listing order.
pub async fn subscribers(store: &impl DeadLetterStore) -> Vec<String> {
    store
        .list(&DeadLetterQuery::default())
        .await
        .expect("list dead letters")
        .into_iter()
        .map(|l| l.subscriber)
        .collect()
}

/// `DeadLetterQuery::after` continues a listing after a page's last dead
/// letter: the pages together list each dead letter once, in order.
pub async fn pages_through_dead_letters_after_a_cursor<D: DeadLetterStore>(store: D) {
    let start = Utc::now() - chrono::Duration::minutes(10);
    let mut recorded = Vec::new();
    for n in 0..5u64 {
        let at = start + chrono::Duration::seconds(i64::try_from(n).unwrap_or(0));
        let letter = store
            .record(letter(
                "pager",
                &event("order.created", n),
                attempts(1, &["boom"], at),
            ))
            .await
            .expect("record");
        recorded.push(letter.id);
    }
    let mut query = DeadLetterQuery::default().subscriber("pager").limit(2);
    let mut paged = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.list(&query).await.expect("list a page");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        query = query.after(last);
        paged.extend(page.iter().map(|l| l.id));
        pages += 1;
        assert!(pages <= 3, "more pages than dead letters allow");
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, recorded);
}
