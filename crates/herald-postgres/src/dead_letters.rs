//! [`DeadLetterStore`] for [`PgStore`]: dead letters in the `dead_letters`
//! table of the store's schema.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use herald::store::StoreError;
use herald::{
    AttemptError, DeadLetter, DeadLetterError, DeadLetterQuery, DeadLetterStore, EventId,
    NewDeadLetter, RecordedEvent,
};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::backend;
use crate::store::PgStore;

/// Dead letters live in the store's schema, in the `dead_letters` table,
/// one row per subscriber and event; every process sharing the schema sees
/// the same dead letters.
///
/// # Contract
///
/// As [`DeadLetterStore`] says: recording the same event for the same
/// subscriber again updates its row in the same statement
/// (`INSERT … ON CONFLICT … DO UPDATE`: attempts added, errors appended,
/// reason and last failure updated; id, event and first failure kept), so
/// concurrent records of one failure never make two dead letters. `list`
/// is oldest first by first failure (then id) and honours every
/// [`DeadLetterQuery`] field, the limit counting only the dead letters that
/// pass the filters; the subscriber and the time bounds are filtered by the
/// query, the rest as the rows arrive.
///
/// # Times
///
/// PostgreSQL keeps times to the microsecond: the attempts' times are
/// rounded down to the microsecond when recorded, so that they read back as
/// recorded, and the first and last failure times are those of the first
/// and last attempt (or the time of recording, for a failure without
/// attempts).
///
/// # Retention
///
/// Dead letters are kept until removed, unless
/// [`PgConfig::dead_letter_retention`](crate::PgConfig::dead_letter_retention)
/// is set: then those whose last failure is older than the retention are
/// removed when the store connects and, at most once a minute, after a dead
/// letter is recorded (by any process sharing the schema; a removal that
/// races another is harmless). [`PgStore::purge_dead_letters`] removes them
/// on demand.
#[async_trait]
impl DeadLetterStore for PgStore {
    async fn record(&self, letter: NewDeadLetter) -> Result<DeadLetter, DeadLetterError> {
        let errors: Vec<AttemptError> = letter
            .errors
            .iter()
            .map(|e| AttemptError {
                at: to_micros(e.at),
                ..e.clone()
            })
            .collect();
        let last = errors
            .last()
            .map_or_else(|| to_micros(Utc::now()), |e| e.at);
        let first = errors.first().map_or(last, |e| e.at);
        let attempts = u32::try_from(errors.len()).unwrap_or(u32::MAX).max(1);
        let event = json(serde_json::to_string(&letter.event), "event")?;
        let errors = json(serde_json::to_string(&errors), "errors")?;
        let row = sqlx::query(&self.inner().sql.dead_letter_record)
            .bind(EventId::new().as_uuid())
            .bind(&letter.subscriber)
            .bind(letter.event.id().as_uuid())
            .bind(event)
            .bind(i64::from(attempts))
            .bind(&letter.reason)
            .bind(errors)
            .bind(first)
            .bind(last)
            .fetch_one(self.pool())
            .await
            .map_err(|e| store_error(backend("record a dead letter")(e)))?;
        let recorded = decode(&row)?;
        if self.config().dead_letter_retention.is_some() {
            let now = Utc::now().timestamp();
            let last = self.inner().last_purge.load(Ordering::Relaxed);
            if now - last >= PURGE_EVERY_SECS
                && self
                    .inner()
                    .last_purge
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                // The dead letter is recorded: a failed purge is only
                // logged, and tried again a minute later.
                if let Err(err) = self.purge_past_retention().await {
                    tracing::warn!(error = %err, "could not remove dead letters past their retention");
                }
            }
        }
        Ok(recorded)
    }

    async fn counts(&self) -> Result<BTreeMap<String, u64>, DeadLetterError> {
        let rows = sqlx::query(&self.inner().sql.dead_letter_counts)
            .fetch_all(self.pool())
            .await
            .map_err(|e| store_error(backend("count dead letters")(e)))?;
        rows.iter()
            .map(|row| {
                let subscriber: String = row
                    .try_get(0)
                    .map_err(|e| store_error(backend("count dead letters")(e)))?;
                let count: i64 = row
                    .try_get(1)
                    .map_err(|e| store_error(backend("count dead letters")(e)))?;
                Ok((subscriber, u64::try_from(count).unwrap_or_default()))
            })
            .collect()
    }

    async fn list(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        let mut rows = sqlx::query(&self.inner().sql.dead_letter_list)
            .bind(query.subscriber.as_deref())
            .bind(query.failed_since.map(micros_ceil))
            .bind(query.failed_until.map(micros_ceil))
            .fetch(self.pool());
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| store_error(backend("list dead letters")(e)))?
        {
            let letter = decode(&row)?;
            if query.matches(&letter) {
                found.push(letter);
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    async fn get(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        let row = sqlx::query(&self.inner().sql.dead_letter_get)
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(|e| store_error(backend("read a dead letter")(e)))?;
        row.as_ref().map(decode).transpose()
    }

    async fn remove(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        let row = sqlx::query(&self.inner().sql.dead_letter_remove)
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(|e| store_error(backend("remove a dead letter")(e)))?;
        row.as_ref().map(decode).transpose()
    }
}

/// How often recording a dead letter also purges the expired ones.
const PURGE_EVERY_SECS: i64 = 60;

impl PgStore {
    /// Removes the dead letters whose last failure is more than
    /// `older_than` ago, and returns how many it removed.
    ///
    /// [`PgConfig::dead_letter_retention`](crate::PgConfig::dead_letter_retention)
    /// does this on its own; this is for stores without a retention, or to
    /// purge now.
    ///
    /// ```no_run
    /// # async fn example(store: herald_postgres::PgStore) -> Result<(), herald::DeadLetterError> {
    /// use std::time::Duration;
    ///
    /// let removed = store.purge_dead_letters(Duration::from_secs(30 * 24 * 60 * 60)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Store`] when PostgreSQL fails; nothing is removed
    /// then.
    pub async fn purge_dead_letters(&self, older_than: Duration) -> Result<u64, DeadLetterError> {
        // No dead letter failed before the year 1 (PostgreSQL's range ends
        // in 4713 BC), so a cutoff before it removes nothing.
        let year_one = DateTime::<Utc>::from_timestamp(-62_135_596_800, 0).unwrap_or_default();
        let before = chrono::Duration::from_std(older_than)
            .ok()
            .and_then(|age| Utc::now().checked_sub_signed(age))
            .unwrap_or(year_one);
        if before <= year_one {
            return Ok(0);
        }
        let done = sqlx::query(&self.inner().sql.dead_letter_purge)
            .bind(to_micros(before))
            .execute(self.pool())
            .await
            .map_err(|e| store_error(backend("purge old dead letters")(e)))?;
        let removed = done.rows_affected();
        if removed > 0 {
            tracing::info!(
                removed,
                "herald-postgres: removed dead letters past retention"
            );
        }
        Ok(removed)
    }

    /// Applies [`PgConfig::dead_letter_retention`](crate::PgConfig::dead_letter_retention),
    /// if set.
    pub(crate) async fn purge_past_retention(&self) -> Result<u64, DeadLetterError> {
        match self.config().dead_letter_retention {
            Some(retention) => self.purge_dead_letters(retention).await,
            None => Ok(0),
        }
    }
}

fn store_error(error: StoreError) -> DeadLetterError {
    DeadLetterError::Store(Box::new(error))
}

fn json(serialized: serde_json::Result<String>, what: &str) -> Result<String, DeadLetterError> {
    serialized.map_err(|e| {
        store_error(StoreError::backend(format!(
            "serialize the dead letter's {what}: {e}"
        )))
    })
}

/// A time rounded down to the microsecond, as PostgreSQL keeps it.
fn to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time)
}

/// A time rounded up to the microsecond: for a stored time `t` (whole
/// microseconds), `t >= micros_ceil(x)` exactly when `t >= x`, and
/// `t < micros_ceil(x)` exactly when `t < x`.
fn micros_ceil(time: DateTime<Utc>) -> DateTime<Utc> {
    let floor = to_micros(time);
    if floor == time {
        floor
    } else {
        floor
            .checked_add_signed(chrono::Duration::microseconds(1))
            .unwrap_or(floor)
    }
}

/// A dead letter from a row of the dead-letter columns.
fn decode(row: &PgRow) -> Result<DeadLetter, DeadLetterError> {
    let read = |e| store_error(backend("decode a dead letter")(e));
    let id: Uuid = row.try_get(0).map_err(read)?;
    let corrupt = |what: &dyn std::fmt::Display| {
        store_error(StoreError::backend(format!(
            "stored dead letter {id} does not decode: {what}"
        )))
    };
    let event: &str = row.try_get(2).map_err(read)?;
    let event: RecordedEvent =
        serde_json::from_str(event).map_err(|e| corrupt(&format_args!("event: {e}")))?;
    let attempts: i64 = row.try_get(3).map_err(read)?;
    let errors: &str = row.try_get(5).map_err(read)?;
    let errors: Vec<AttemptError> =
        serde_json::from_str(errors).map_err(|e| corrupt(&format_args!("errors: {e}")))?;
    Ok(DeadLetter {
        id,
        subscriber: row.try_get(1).map_err(read)?,
        event,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(&"attempts out of range"))?,
        reason: row.try_get(4).map_err(read)?,
        errors,
        first_failed_at: row.try_get(6).map_err(read)?,
        last_failed_at: row.try_get(7).map_err(read)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_to_the_microsecond() {
        let whole = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let between = whole + chrono::Duration::nanoseconds(999);
        assert_eq!(to_micros(between), whole);
        assert_eq!(to_micros(whole), whole);
        assert_eq!(micros_ceil(whole), whole);
        assert_eq!(
            micros_ceil(between),
            whole + chrono::Duration::microseconds(1)
        );
        let before = whole - chrono::Duration::nanoseconds(1);
        assert_eq!(micros_ceil(before), whole);
    }
}
