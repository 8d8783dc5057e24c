//! [`CheckpointStore`] for [`PgStore`]: checkpoints in the `checkpoints`
//! table of the store's schema, enabled states in `subscriber_states`,
//! scheduled retries in `scheduled_retries`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald::store::{CheckpointStore, ScheduledRetry, StoreError};
use herald::{AttemptError, EventId};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::backend;
use crate::store::PgStore;

/// Checkpoints live in the store's schema, in the `checkpoints` table, one
/// row per subscriber (its position and the time it was saved). A save is
/// one statement (an upsert), committed when it returns, so a saved
/// checkpoint is as durable as an append and every process sharing the
/// schema sees it. Whether a subscriber is enabled is kept the same way, in
/// `subscriber_states`, and its scheduled retries in `scheduled_retries`
/// (one row per subscriber and event, replaced by an upsert; the errors as
/// a JSON array, the due time to the microsecond, rounded down).
#[async_trait]
impl CheckpointStore for PgStore {
    async fn load(&self, subscriber: &str) -> Result<Option<u64>, StoreError> {
        let position: Option<i64> = sqlx::query_scalar(&self.inner().sql.checkpoint_load)
            .bind(subscriber)
            .fetch_optional(self.pool())
            .await
            .map_err(backend("load a checkpoint"))?;
        position
            .map(|p| {
                u64::try_from(p).map_err(|_| {
                    StoreError::backend(format!(
                        "the stored checkpoint of subscriber {subscriber:?} is negative: {p}"
                    ))
                })
            })
            .transpose()
    }

    async fn save(&self, subscriber: &str, position: u64) -> Result<(), StoreError> {
        let position = i64::try_from(position).map_err(|_| {
            StoreError::backend(format!(
                "checkpoint {position} of subscriber {subscriber:?} is beyond any position"
            ))
        })?;
        sqlx::query(&self.inner().sql.checkpoint_save)
            .bind(subscriber)
            .bind(position)
            .execute(self.pool())
            .await
            .map_err(backend("save a checkpoint"))?;
        Ok(())
    }

    async fn reset(&self, subscriber: &str) -> Result<(), StoreError> {
        sqlx::query(&self.inner().sql.checkpoint_reset)
            .bind(subscriber)
            .execute(self.pool())
            .await
            .map_err(backend("reset a checkpoint"))?;
        Ok(())
    }

    async fn load_enabled(&self, subscriber: &str) -> Result<Option<bool>, StoreError> {
        sqlx::query_scalar(&self.inner().sql.enabled_load)
            .bind(subscriber)
            .fetch_optional(self.pool())
            .await
            .map_err(backend("load whether a subscriber is enabled"))
    }

    async fn save_enabled(&self, subscriber: &str, enabled: bool) -> Result<(), StoreError> {
        sqlx::query(&self.inner().sql.enabled_save)
            .bind(subscriber)
            .bind(enabled)
            .execute(self.pool())
            .await
            .map_err(backend("save whether a subscriber is enabled"))?;
        Ok(())
    }

    async fn schedule_retry(
        &self,
        subscriber: &str,
        retry: &ScheduledRetry,
    ) -> Result<(), StoreError> {
        let position = i64::try_from(retry.position).map_err(|_| {
            StoreError::backend(format!(
                "the retry of event {} for subscriber {subscriber:?} is at {}, beyond any position",
                retry.event_id, retry.position
            ))
        })?;
        let errors = serde_json::to_string(&retry.errors).map_err(|e| {
            StoreError::backend(format!("serialize the scheduled retry's errors: {e}"))
        })?;
        sqlx::query(&self.inner().sql.retry_schedule)
            .bind(subscriber)
            .bind(retry.event_id.as_uuid())
            .bind(position)
            .bind(errors)
            .bind(to_micros(retry.due))
            .execute(self.pool())
            .await
            .map_err(backend("schedule a retry"))?;
        Ok(())
    }

    async fn scheduled_retries(&self, subscriber: &str) -> Result<Vec<ScheduledRetry>, StoreError> {
        let rows = sqlx::query(&self.inner().sql.retry_list)
            .bind(subscriber)
            .fetch_all(self.pool())
            .await
            .map_err(backend("list scheduled retries"))?;
        rows.iter().map(decode).collect()
    }

    async fn clear_retry(&self, subscriber: &str, event: EventId) -> Result<(), StoreError> {
        sqlx::query(&self.inner().sql.retry_clear)
            .bind(subscriber)
            .bind(event.as_uuid())
            .execute(self.pool())
            .await
            .map_err(backend("clear a scheduled retry"))?;
        Ok(())
    }
}

/// A time rounded down to the microsecond, as PostgreSQL keeps it.
fn to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time)
}

/// A scheduled retry from a row of `event_id, position, errors, due`.
fn decode(row: &PgRow) -> Result<ScheduledRetry, StoreError> {
    let read = || backend("decode a scheduled retry");
    let event_id: Uuid = row.try_get(0).map_err(read())?;
    let corrupt = |what: &dyn std::fmt::Display| {
        StoreError::backend(format!(
            "stored scheduled retry of event {event_id} does not decode: {what}"
        ))
    };
    let position: i64 = row.try_get(1).map_err(read())?;
    let errors: &str = row.try_get(2).map_err(read())?;
    let errors: Vec<AttemptError> =
        serde_json::from_str(errors).map_err(|e| corrupt(&format_args!("errors: {e}")))?;
    Ok(ScheduledRetry {
        event_id: EventId::from_uuid(event_id),
        position: u64::try_from(position)
            .map_err(|_| corrupt(&format_args!("negative position {position}")))?,
        errors,
        due: row.try_get(3).map_err(read())?,
    })
}
