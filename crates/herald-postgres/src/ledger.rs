//! [`Ledger`] for [`PgStore`]: the idempotency ledger in the `ledger` table
//! of the store's schema.

use async_trait::async_trait;
use herald::{EventId, Ledger, LedgerError};

use crate::error::backend;
use crate::store::PgStore;

/// The ledger lives in the store's schema, in the `ledger` table, one row
/// per subscriber and handled event (with the time it was recorded); every
/// process sharing the schema sees what the others recorded.
///
/// # Idempotency
///
/// Inserting an event the ledger holds already changes nothing
/// (`ON CONFLICT DO NOTHING`; its first time is kept).
///
/// # Retention
///
/// Rows are kept for good: unlike [`MemoryLedger`](herald::MemoryLedger),
/// this ledger forgets nothing, and grows by one small row per handled event
/// and subscriber.
///
/// # Examples
///
/// ```no_run
/// # async fn example(store: herald_postgres::PgStore) -> Result<(), Box<dyn std::error::Error>> {
/// use herald::{EventId, Ledger};
///
/// let event = EventId::new();
/// store.insert("billing", event).await?;
/// assert!(store.contains("billing", event).await?);
/// assert!(!store.contains("shipping", event).await?);
/// # Ok(()) }
/// ```
#[async_trait]
impl Ledger for PgStore {
    async fn contains(&self, subscriber: &str, event: EventId) -> Result<bool, LedgerError> {
        sqlx::query_scalar(&self.inner().sql.ledger_contains)
            .bind(subscriber)
            .bind(event.as_uuid())
            .fetch_one(self.pool())
            .await
            .map_err(|e| LedgerError(Box::new(backend("look up an event in the ledger")(e))))
    }

    async fn insert(&self, subscriber: &str, event: EventId) -> Result<(), LedgerError> {
        sqlx::query(&self.inner().sql.ledger_insert)
            .bind(subscriber)
            .bind(event.as_uuid())
            .execute(self.pool())
            .await
            .map_err(|e| LedgerError(Box::new(backend("record an event in the ledger")(e))))?;
        Ok(())
    }
}
