//! The transport and dead-letter conformance suites against a real NATS
//! JetStream server (`HERALD_NATS_URL`, by default the local one).

mod common;

use herald::{DeadLetter, DeadLetterError, DeadLetterQuery, DeadLetterStore, NewDeadLetter};
use herald_nats::NatsDeadLetters;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

async fn harness() -> common::NatsHarness {
    common::NatsHarness::default()
}

herald_testkit::transport_conformance!(harness);

/// The dead letters of a prefix of the test's own, whose streams go when
/// the test is over.
struct DeadLetters {
    store: Arc<NatsDeadLetters>,
    _cleanup: common::Cleanup,
}

#[herald::async_trait]
impl DeadLetterStore for DeadLetters {
    async fn record(&self, letter: NewDeadLetter) -> Result<DeadLetter, DeadLetterError> {
        self.store.record(letter).await
    }
    async fn list(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.store.list(query).await
    }
    async fn get(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        self.store.get(id).await
    }
    async fn remove(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        self.store.remove(id).await
    }
    async fn counts(&self) -> Result<BTreeMap<String, u64>, DeadLetterError> {
        self.store.counts().await
    }
}

async fn dead_letters() -> DeadLetters {
    let namespace = herald_testkit::transports::namespace("dlq");
    let transport = common::connect(&common::url(), &namespace).await;
    DeadLetters {
        store: transport.nats_dead_letters(),
        _cleanup: common::Cleanup(namespace),
    }
}

herald_testkit::dead_letter_conformance!(dead_letters);
