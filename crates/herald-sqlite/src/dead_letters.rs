//! [`DeadLetterStore`] for [`SqliteStore`]: dead letters in the
//! `dead_letters` table of the store's file.
//!
//! Reads (`list`, `get`) run on the read pool; writes (`record`, `remove`,
//! purges) go to the writer thread like every other write, so they share
//! its group commit and are as durable as an append.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald::store::StoreError;
use herald::{
    AttemptError, DeadLetter, DeadLetterError, DeadLetterQuery, DeadLetterStore, EventId,
    NewDeadLetter, RecordedEvent,
};
use rusqlite::{Connection, Row};
use uuid::Uuid;

use crate::error::{Context, failure};
use crate::rows::{self, micros_ceil};
use crate::store::SqliteStore;
use crate::writer::Command;

/// The columns [`letter`] reads, in order.
macro_rules! letter_columns {
    () => {
        "id, subscriber, event, attempts, reason, errors, first_failed_at, last_failed_at"
    };
}

const LIST: &str = include_str!("../queries/dead_letters/list.sql");
const LIST_BY_SUBSCRIBER: &str = include_str!("../queries/dead_letters/list_by_subscriber.sql");
const GET: &str = concat!(
    "SELECT ",
    letter_columns!(),
    " FROM dead_letters WHERE id = ?1"
);
const FIND: &str = concat!(
    "SELECT ",
    letter_columns!(),
    " FROM dead_letters WHERE subscriber = ?1 AND event_id = ?2"
);
const INSERT: &str = "INSERT INTO dead_letters \
     (id, subscriber, event_id, event, attempts, reason, errors, first_failed_at, last_failed_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const UPDATE: &str = "UPDATE dead_letters \
     SET attempts = ?2, reason = ?3, errors = ?4, last_failed_at = ?5 WHERE id = ?1";
const DELETE: &str = "DELETE FROM dead_letters WHERE id = ?1";
const COUNTS: &str = "SELECT subscriber, count(*) FROM dead_letters GROUP BY subscriber";
const PURGE: &str = "DELETE FROM dead_letters WHERE last_failed_at < ?1";

/// Dead letters live in the same file as the history, in the
/// `dead_letters` table, one row per subscriber and event.
///
/// # Contract
///
/// As [`DeadLetterStore`] says: recording the same event for the same
/// subscriber again updates its row (attempts added, errors appended, reason
/// and last failure updated; id and first failure kept), `list` is oldest
/// first by first failure and honours every [`DeadLetterQuery`] field, the
/// limit counting only the dead letters that pass the filters.
///
/// # Times
///
/// Times are kept to the microsecond, as everywhere in this store: the
/// attempts' times are rounded down to the microsecond when recorded, and
/// the first and last failure times are those of the first and last
/// attempt (or the time of recording, for a failure without attempts).
///
/// # Retention
///
/// With [`SqliteConfig::dead_letter_retention`](crate::SqliteConfig::dead_letter_retention),
/// dead letters whose last failure is older than the retention are removed
/// when the store opens and each time a dead letter is recorded;
/// [`SqliteStore::purge_dead_letters`] removes them on demand.
#[async_trait]
impl DeadLetterStore for SqliteStore {
    async fn record(&self, letter: NewDeadLetter) -> Result<DeadLetter, DeadLetterError> {
        self.write(|reply| Command::RecordDeadLetter { letter, reply })
            .await
            .map_err(store_error)
    }

    async fn list(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let limit = query.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let query = query.clone();
        self.read(move |conn| list(conn, &query, limit))
            .await
            .map_err(store_error)
    }

    async fn counts(&self) -> Result<BTreeMap<String, u64>, DeadLetterError> {
        self.read(counts).await.map_err(store_error)
    }

    async fn get(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        self.read(move |conn| get(conn, id))
            .await
            .map_err(store_error)
    }

    async fn remove(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        self.write(|reply| Command::RemoveDeadLetter { id, reply })
            .await
            .map_err(store_error)
    }
}

impl SqliteStore {
    /// Removes the dead letters whose last failure is more than
    /// `older_than` ago, and returns how many it removed.
    ///
    /// [`SqliteConfig::dead_letter_retention`](crate::SqliteConfig::dead_letter_retention)
    /// does this on its own; this is for stores without a retention, or to
    /// purge now.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use herald_sqlite::{SqliteConfig, SqliteStore};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = SqliteStore::open(SqliteConfig::new(dir.path().join("events.db"))).await?;
    /// let week = Duration::from_secs(7 * 24 * 60 * 60);
    /// assert_eq!(store.purge_dead_letters(week).await?, 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Store`] when SQLite fails; nothing is removed
    /// then.
    pub async fn purge_dead_letters(&self, older_than: Duration) -> Result<u64, DeadLetterError> {
        let before = cutoff(Utc::now(), older_than);
        self.write(|reply| Command::PurgeDeadLetters { before, reply })
            .await
            .map_err(store_error)
    }
}

fn store_error(error: StoreError) -> DeadLetterError {
    DeadLetterError::Store(Box::new(error))
}

/// The time `older_than` before `now`, in microseconds (the earliest time
/// when that is before every representable one).
pub(crate) fn cutoff(now: DateTime<Utc>, older_than: Duration) -> i64 {
    let now = now.timestamp_micros();
    let age = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
    now.saturating_sub(age)
}

fn list(
    conn: &Connection,
    query: &DeadLetterQuery,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let context = || "list dead letters".to_owned();
    let since = query.failed_since.map_or(i64::MIN, micros_ceil);
    let until = query.failed_until.map_or(i64::MAX, micros_ceil);
    let mut found = Vec::new();
    let (mut statement, subscriber) = match &query.subscriber {
        Some(subscriber) => (
            conn.prepare_cached(LIST_BY_SUBSCRIBER).context(context())?,
            Some(subscriber.as_str()),
        ),
        None => (conn.prepare_cached(LIST).context(context())?, None),
    };
    let mut rows = match subscriber {
        Some(subscriber) => statement.query((since, until, subscriber)),
        None => statement.query((since, until)),
    }
    .context(context())?;
    while let Some(row) = rows.next().context(context())? {
        let dead = letter(row)?;
        if query.matches(&dead) {
            found.push(dead);
            if found.len() >= limit {
                break;
            }
        }
    }
    Ok(found)
}

fn counts(conn: &Connection) -> Result<BTreeMap<String, u64>, StoreError> {
    let context = || "count dead letters".to_owned();
    let mut statement = conn.prepare_cached(COUNTS).context(context())?;
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .context(context())?;
    let mut counts = BTreeMap::new();
    for row in rows {
        let (subscriber, count) = row.context(context())?;
        counts.insert(subscriber, u64::try_from(count).unwrap_or_default());
    }
    Ok(counts)
}

fn get(conn: &Connection, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
    let context = || format!("read dead letter {id}");
    let mut statement = conn.prepare_cached(GET).context(context())?;
    let mut rows = statement.query([id.as_bytes()]).context(context())?;
    match rows.next().context(context())? {
        Some(row) => letter(row).map(Some),
        None => Ok(None),
    }
}

/// Records a failure (on the writer's connection, in its transaction).
pub(crate) fn record(conn: &Connection, new: &NewDeadLetter) -> Result<DeadLetter, StoreError> {
    let event_id = new.event.id();
    let context = || {
        format!(
            "record the dead letter of subscriber {:?} for event {event_id}",
            new.subscriber
        )
    };
    let errors: Vec<AttemptError> = new
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
    let attempts = u32::try_from(errors.len()).unwrap_or(u32::MAX).max(1);
    let existing = {
        let mut statement = conn.prepare_cached(FIND).context(context())?;
        let mut rows = statement
            .query((new.subscriber.as_str(), event_id.as_uuid().as_bytes()))
            .context(context())?;
        match rows.next().context(context())? {
            Some(row) => Some(letter(row)?),
            None => None,
        }
    };
    match existing {
        Some(mut dead) => {
            dead.attempts = dead.attempts.saturating_add(attempts);
            dead.errors.extend(errors);
            dead.reason.clone_from(&new.reason);
            dead.last_failed_at = last;
            let errors_json = json(serde_json::to_string(&dead.errors), "errors")?;
            conn.prepare_cached(UPDATE)
                .context(context())?
                .execute((
                    dead.id.as_bytes(),
                    dead.attempts,
                    dead.reason.as_str(),
                    errors_json,
                    dead.last_failed_at.timestamp_micros(),
                ))
                .context(context())?;
            Ok(dead)
        }
        None => {
            let dead = DeadLetter {
                id: *EventId::new().as_uuid(),
                subscriber: new.subscriber.clone(),
                event: new.event.clone(),
                attempts,
                reason: new.reason.clone(),
                first_failed_at: errors.first().map_or(last, |e| e.at),
                last_failed_at: last,
                errors,
            };
            conn.prepare_cached(INSERT)
                .context(context())?
                .execute((
                    dead.id.as_bytes(),
                    dead.subscriber.as_str(),
                    event_id.as_uuid().as_bytes(),
                    json(serde_json::to_string(&dead.event), "event")?,
                    dead.attempts,
                    dead.reason.as_str(),
                    json(serde_json::to_string(&dead.errors), "errors")?,
                    dead.first_failed_at.timestamp_micros(),
                    dead.last_failed_at.timestamp_micros(),
                ))
                .context(context())?;
            Ok(dead)
        }
    }
}

/// Removes a dead letter (on the writer's connection), returning it.
pub(crate) fn remove(conn: &Connection, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
    let Some(dead) = get(conn, id)? else {
        return Ok(None);
    };
    conn.prepare_cached(DELETE)
        .context(format_args!("remove dead letter {id}"))?
        .execute([id.as_bytes()])
        .context(format_args!("remove dead letter {id}"))?;
    Ok(Some(dead))
}

/// Removes the dead letters whose last failure is before `before`
/// (microseconds), on the writer's connection; returns how many.
pub(crate) fn purge(conn: &Connection, before: i64) -> Result<u64, StoreError> {
    let context = "purge old dead letters";
    conn.prepare_cached(PURGE)
        .context(context)?
        .execute([before])
        .context(context)
        .map(|n| n as u64)
}

/// A time rounded down to the microsecond, as the store keeps it.
fn to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    rows::time(time.timestamp_micros()).unwrap_or(time)
}

fn json(serialized: serde_json::Result<String>, what: &str) -> Result<String, StoreError> {
    serialized.map_err(|e| failure(format_args!("serialize the dead letter's {what}: {e}")))
}

/// A dead letter from a row of `letter_columns!()`.
fn letter(row: &Row<'_>) -> Result<DeadLetter, StoreError> {
    let id = rows::uuid(row, 0, "dead letter id")?;
    let corrupt = |what: &dyn std::fmt::Display| {
        failure(format_args!(
            "stored dead letter {id} does not decode: {what}"
        ))
    };
    let event: RecordedEvent = serde_json::from_slice(rows::bytes(row, 2, "dead letter event")?)
        .map_err(|e| corrupt(&format_args!("event: {e}")))?;
    let attempts: i64 = row.get(3).context("read dead letter attempts")?;
    let errors: Vec<AttemptError> =
        serde_json::from_slice(rows::bytes(row, 5, "dead letter errors")?)
            .map_err(|e| corrupt(&format_args!("errors: {e}")))?;
    let time = |i: usize| {
        row.get::<_, i64>(i)
            .context("read dead letter times")
            .and_then(|t| rows::time(t).ok_or_else(|| corrupt(&"a time is out of range")))
    };
    Ok(DeadLetter {
        id,
        subscriber: rows::text(row, 1, "dead letter subscriber")?.to_owned(),
        event,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(&"attempts out of range"))?,
        reason: rows::text(row, 4, "dead letter reason")?.to_owned(),
        errors,
        first_failed_at: time(6)?,
        last_failed_at: time(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_saturates_instead_of_overflowing() {
        let now = rows::time(10_000_000).unwrap();
        assert_eq!(cutoff(now, Duration::from_secs(3)), 7_000_000);
        assert_eq!(cutoff(now, Duration::MAX), 10_000_000 - i64::MAX);
        assert_eq!(cutoff(DateTime::<Utc>::MIN_UTC, Duration::MAX), i64::MIN);
    }

    #[test]
    fn times_round_down_to_the_microsecond() {
        let t = rows::time(1_700_000_000_123_456).unwrap() + chrono::Duration::nanoseconds(999);
        assert_eq!(to_micros(t).timestamp_micros(), 1_700_000_000_123_456);
        assert_eq!(to_micros(t).timestamp_subsec_nanos() % 1_000, 0);
    }
}
