//! [`DeadLetterStore`] for [`PgStore`]: dead letters in the `dead_letters`
//! table of the store's schema.

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
/// Dead letters are kept until removed.
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
        decode(&row)
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
