//! Subscription definitions as events in the stream `herald:subscriptions`.

use std::collections::BTreeMap;

use herald::NewEvent;
use herald::store::{EventStore, ExpectedVersion, ReadStream, StoreError, StreamName};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::definition::Definition;

/// The stream that holds the definitions.
pub(crate) const STREAM: &str = "herald:subscriptions";
/// A subscription was created: its definition, sealed secret and start.
pub(crate) const CREATED: &str = "herald.subscription.created";
/// A subscription was deleted.
pub(crate) const DELETED: &str = "herald.subscription.deleted";
/// A subscription was disabled.
pub(crate) const DISABLED: &str = "herald.subscription.disabled";
/// A subscription was enabled again.
pub(crate) const ENABLED: &str = "herald.subscription.enabled";

/// How many events are read per page when folding.
const PAGE: usize = 1000;

/// The data of a `created` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Created {
    #[serde(flatten)]
    pub(crate) definition: Definition,
    /// The secret sealed with the store's key (see `seal`), absent for
    /// unsigned deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) secret_sealed: Option<String>,
    /// The log position the subscription starts after: the head when it
    /// was created.
    pub(crate) start_after: u64,
}

/// A subscription as folded from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) created: Created,
    pub(crate) enabled: bool,
}

/// Every subscription, and the stream's version they were folded at.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    pub(crate) version: Option<u64>,
    pub(crate) subscriptions: BTreeMap<String, Stored>,
}

impl Folded {
    /// The expectation under which an append keeps this fold valid.
    pub(crate) fn expected(&self) -> ExpectedVersion {
        match self.version {
            Some(v) => ExpectedVersion::Exact(v),
            None => ExpectedVersion::NoStream,
        }
    }
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

pub(crate) fn stream() -> StreamName {
    // A constant name of allowed characters.
    StreamName::new(STREAM).unwrap_or_else(|e| unreachable!("{e}"))
}

/// Reads the stream and folds it. Events that do not decode (appended by
/// hand, say) are logged and skipped.
pub(crate) async fn fold(store: &dyn EventStore) -> Result<Folded, StoreError> {
    let stream = stream();
    let mut folded = Folded::default();
    let mut from = 0;
    loop {
        let page = store
            .read_stream(&stream, ReadStream::forward().from(from).limit(PAGE))
            .await?;
        for event in &page {
            folded.version = event.version().or(folded.version);
            apply(&mut folded.subscriptions, event);
        }
        match page.last().and_then(|e| e.version()) {
            Some(last) if page.len() == PAGE => from = last + 1,
            _ => return Ok(folded),
        }
    }
}

fn apply(subscriptions: &mut BTreeMap<String, Stored>, event: &herald::RecordedEvent) {
    let data = event.data().to_value();
    let result = match event.event_type() {
        CREATED => serde_json::from_value::<Created>(data).map(|created| {
            subscriptions.insert(
                created.definition.name.clone(),
                Stored {
                    created,
                    enabled: true,
                },
            );
        }),
        DELETED => serde_json::from_value::<Named>(data).map(|n| {
            subscriptions.remove(&n.name);
        }),
        DISABLED | ENABLED => serde_json::from_value::<Named>(data).map(|n| {
            if let Some(s) = subscriptions.get_mut(&n.name) {
                s.enabled = event.event_type() == ENABLED;
            }
        }),
        other => {
            tracing::warn!(event_id = %event.id(), event_type = other, "unknown event in {STREAM}; skipped");
            Ok(())
        }
    };
    if let Err(err) = result {
        tracing::warn!(event_id = %event.id(), event_type = event.event_type(), error = %err, "undecodable event in {STREAM}; skipped");
    }
}

/// Appends one change, if the stream is still at `expected`.
async fn append(
    store: &dyn EventStore,
    expected: ExpectedVersion,
    event_type: &'static str,
    data: serde_json::Value,
) -> Result<(), StoreError> {
    store
        .append(&stream(), expected, vec![NewEvent::new(event_type, data)])
        .await
        .map(drop)
}

/// Records a new subscription.
pub(crate) async fn created(
    store: &dyn EventStore,
    expected: ExpectedVersion,
    created: &Created,
) -> Result<(), StoreError> {
    let data = serde_json::to_value(created).map_err(StoreError::backend)?;
    append(store, expected, CREATED, data).await
}

/// Records that `name` was deleted, disabled or enabled.
pub(crate) async fn changed(
    store: &dyn EventStore,
    expected: ExpectedVersion,
    event_type: &'static str,
    name: &str,
) -> Result<(), StoreError> {
    append(store, expected, event_type, json!({ "name": name })).await
}
