//! A store in a temporary directory of its own, removed when the store is
//! dropped.

use std::ops::Deref;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use herald::store::{
    Appended, Capabilities, CheckpointStore, EventStore, ExpectedVersion, ListStreams, ReadAll,
    ReadStream, ScheduledRetry, StoreError, StreamAppend, StreamInfo, StreamName,
};
use herald::{
    DeadLetter, DeadLetterError, DeadLetterQuery, DeadLetterStore, EventId, Ledger, LedgerError,
    NewDeadLetter, NewEvent, RecordedEvent,
};
use herald_sqlite::{SqliteConfig, SqliteStore};
use tempfile::TempDir;

/// A [`SqliteStore`] that owns the directory of its database file.
pub(crate) struct TempStore {
    // Declared first, so dropped first: the store's threads stop and its
    // connections close before the directory is removed.
    store: SqliteStore,
    dir: TempDir,
}

impl TempStore {
    /// A fresh store, configured by `configure`.
    pub(crate) async fn with(configure: impl FnOnce(SqliteConfig) -> SqliteConfig) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = configure(SqliteConfig::new(dir.path().join("events.db")));
        let store = SqliteStore::open(config).await.expect("open the store");
        Self { store, dir }
    }

    /// The directory of the database file.
    #[allow(dead_code)]
    pub(crate) fn dir(&self) -> &TempDir {
        &self.dir
    }
}

impl Deref for TempStore {
    type Target = SqliteStore;

    fn deref(&self) -> &SqliteStore {
        &self.store
    }
}

#[async_trait]
impl EventStore for TempStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.store.append(stream, expected, events).await
    }

    async fn append_all(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>, StoreError> {
        self.store.append_all(appends).await
    }

    async fn link(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[EventId],
    ) -> Result<Appended, StoreError> {
        self.store.link(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        query: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_stream(stream, query).await
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
        self.store.read_all(query)
    }

    async fn event(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.store.event(id).await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, StoreError> {
        self.store.stream_info(stream).await
    }

    async fn list_streams(&self, query: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        self.store.list_streams(query).await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<bool, StoreError> {
        self.store.delete_stream(stream, expected).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.store.head().await
    }

    fn watch_head(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.store.watch_head()
    }

    fn capabilities(&self) -> Capabilities {
        self.store.capabilities()
    }
}

#[async_trait]
impl CheckpointStore for TempStore {
    async fn load(&self, subscriber: &str) -> Result<Option<u64>, StoreError> {
        self.store.load(subscriber).await
    }

    async fn save(&self, subscriber: &str, position: u64) -> Result<(), StoreError> {
        self.store.save(subscriber, position).await
    }

    async fn reset(&self, subscriber: &str) -> Result<(), StoreError> {
        self.store.reset(subscriber).await
    }

    async fn load_enabled(&self, subscriber: &str) -> Result<Option<bool>, StoreError> {
        self.store.load_enabled(subscriber).await
    }

    async fn save_enabled(&self, subscriber: &str, enabled: bool) -> Result<(), StoreError> {
        self.store.save_enabled(subscriber, enabled).await
    }

    async fn schedule_retry(
        &self,
        subscriber: &str,
        retry: &ScheduledRetry,
    ) -> Result<(), StoreError> {
        self.store.schedule_retry(subscriber, retry).await
    }

    async fn scheduled_retries(&self, subscriber: &str) -> Result<Vec<ScheduledRetry>, StoreError> {
        self.store.scheduled_retries(subscriber).await
    }

    async fn clear_retry(&self, subscriber: &str, event: EventId) -> Result<(), StoreError> {
        self.store.clear_retry(subscriber, event).await
    }
}

#[async_trait]
impl DeadLetterStore for TempStore {
    async fn record(&self, letter: NewDeadLetter) -> Result<DeadLetter, DeadLetterError> {
        self.store.record(letter).await
    }

    async fn list(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.store.list(query).await
    }

    async fn get(&self, id: uuid::Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        self.store.get(id).await
    }

    async fn remove(&self, id: uuid::Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        self.store.remove(id).await
    }
}

#[async_trait]
impl Ledger for TempStore {
    async fn contains(&self, subscriber: &str, event: EventId) -> Result<bool, LedgerError> {
        self.store.contains(subscriber, event).await
    }

    async fn insert(&self, subscriber: &str, event: EventId) -> Result<(), LedgerError> {
        self.store.insert(subscriber, event).await
    }
}
