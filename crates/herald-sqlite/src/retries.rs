//! Durable subscribers' scheduled retries, in the `scheduled_retries` table
//! of the store's file.
//!
//! Listing runs on the read pool; scheduling and clearing go to the writer
//! thread like every other write, so they share its group commit and are as
//! durable as an append.

use herald::store::{ScheduledRetry, StoreError};
use herald::{AttemptError, EventId};
use rusqlite::{Connection, Row};

use crate::error::{Context, failure};
use crate::rows::{self, int};

const UPSERT: &str = "INSERT INTO scheduled_retries (subscriber, event_id, position, errors, due) \
     VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (subscriber, event_id) DO UPDATE SET position = excluded.position, \
     errors = excluded.errors, due = excluded.due";
const DELETE: &str = "DELETE FROM scheduled_retries WHERE subscriber = ?1 AND event_id = ?2";
const LIST: &str = "SELECT event_id, position, errors, due FROM scheduled_retries \
     WHERE subscriber = ?1 ORDER BY position, event_id";

/// Saves `retry` for `subscriber`, replacing the one it had for the same
/// event (on the writer's connection, in its transaction). The due time is
/// kept to the microsecond, rounded down.
pub(crate) fn schedule(
    conn: &Connection,
    subscriber: &str,
    retry: &ScheduledRetry,
) -> Result<(), StoreError> {
    let event = retry.event_id;
    let context = || format!("schedule the retry of event {event} for subscriber {subscriber:?}");
    let errors = serde_json::to_string(&retry.errors)
        .map_err(|e| failure(format_args!("serialize the scheduled retry's errors: {e}")))?;
    conn.prepare_cached(UPSERT)
        .context(context())?
        .execute((
            subscriber,
            event.as_uuid().as_bytes(),
            int(retry.position),
            errors,
            retry.due.timestamp_micros(),
        ))
        .context(context())
        .map(|_| ())
}

/// Removes `subscriber`'s scheduled retry of `event`, if any (on the
/// writer's connection).
pub(crate) fn clear(conn: &Connection, subscriber: &str, event: EventId) -> Result<(), StoreError> {
    let context = || format!("clear the retry of event {event} for subscriber {subscriber:?}");
    conn.prepare_cached(DELETE)
        .context(context())?
        .execute((subscriber, event.as_uuid().as_bytes()))
        .context(context())
        .map(|_| ())
}

/// `subscriber`'s scheduled retries, by position.
pub(crate) fn list(conn: &Connection, subscriber: &str) -> Result<Vec<ScheduledRetry>, StoreError> {
    let context = || format!("list the scheduled retries of subscriber {subscriber:?}");
    let mut statement = conn.prepare_cached(LIST).context(context())?;
    let mut rows = statement.query([subscriber]).context(context())?;
    let mut found = Vec::new();
    while let Some(row) = rows.next().context(context())? {
        found.push(retry(row)?);
    }
    Ok(found)
}

/// A scheduled retry from a row of `event_id, position, errors, due`.
fn retry(row: &Row<'_>) -> Result<ScheduledRetry, StoreError> {
    let event_id = rows::id(row, 0)?;
    let corrupt = |what: &dyn std::fmt::Display| {
        failure(format_args!(
            "stored scheduled retry of event {event_id} does not decode: {what}"
        ))
    };
    let errors: Vec<AttemptError> =
        serde_json::from_slice(rows::bytes(row, 2, "scheduled retry errors")?)
            .map_err(|e| corrupt(&format_args!("errors: {e}")))?;
    let due: i64 = row.get(3).context("read scheduled retry due time")?;
    Ok(ScheduledRetry {
        event_id,
        position: rows::unsigned(row, 1, "scheduled retry position")?,
        errors,
        due: rows::time(due).ok_or_else(|| corrupt(&"the due time is out of range"))?,
    })
}
