//! [`Ledger`] for [`SqliteStore`]: the idempotency ledger in the `ledger`
//! table of the store's file.

use async_trait::async_trait;
use herald::store::StoreError;
use herald::{EventId, Ledger, LedgerError};
use rusqlite::{Connection, OptionalExtension};

use crate::error::Context;
use crate::store::SqliteStore;
use crate::writer::Command;

const CONTAINS: &str = "SELECT 1 FROM ledger WHERE subscriber = ?1 AND event_id = ?2";
const INSERT: &str = "INSERT INTO ledger (subscriber, event_id, handled_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (subscriber, event_id) DO NOTHING";

/// The ledger lives in the same file as the history, in the `ledger` table,
/// one row per subscriber and handled event; inserts go through the writer
/// (and its group commit), so a recorded event is as durable as an append.
///
/// # Idempotency
///
/// Inserting an event the ledger holds already changes nothing (its first
/// time is kept).
///
/// # Retention
///
/// Rows are kept for good: unlike [`MemoryLedger`](herald::MemoryLedger),
/// this ledger forgets nothing, and grows by one small row per handled event
/// and subscriber.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald::{EventId, Ledger};
/// use herald_sqlite::{SqliteConfig, SqliteStore};
///
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(SqliteConfig::new(dir.path().join("events.db"))).await?;
/// let event = EventId::new();
/// store.insert("billing", event).await?;
/// assert!(store.contains("billing", event).await?);
/// assert!(!store.contains("shipping", event).await?);
/// # Ok(()) }
/// ```
#[async_trait]
impl Ledger for SqliteStore {
    async fn contains(&self, subscriber: &str, event: EventId) -> Result<bool, LedgerError> {
        let subscriber = subscriber.to_owned();
        self.read(move |conn| {
            let context = || format!("look up event {event} in the ledger of {subscriber:?}");
            conn.prepare_cached(CONTAINS)
                .context(context())?
                .query_row(
                    (subscriber.as_str(), event.as_uuid().as_bytes()),
                    |_| Ok(()),
                )
                .optional()
                .context(context())
                .map(|found| found.is_some())
        })
        .await
        .map_err(ledger_error)
    }

    async fn insert(&self, subscriber: &str, event: EventId) -> Result<(), LedgerError> {
        self.write(|reply| Command::Handled {
            subscriber: subscriber.to_owned(),
            event,
            reply,
        })
        .await
        .map_err(ledger_error)
    }
}

fn ledger_error(error: StoreError) -> LedgerError {
    LedgerError(Box::new(error))
}

/// Records that `subscriber` handled `event` at `at` (microseconds), on the
/// writer's connection.
pub(crate) fn insert(
    conn: &Connection,
    subscriber: &str,
    event: EventId,
    at: i64,
) -> Result<(), StoreError> {
    let context = || format!("record event {event} in the ledger of {subscriber:?}");
    conn.prepare_cached(INSERT)
        .context(context())?
        .execute((subscriber, event.as_uuid().as_bytes(), at))
        .context(context())
        .map(|_| ())
}
