//! Turning rows into recorded events and stream infos, and times into
//! microseconds.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use herald::store::{StoreError, StreamInfo, StreamName};
use herald::{EventId, EventType, Metadata, Origin, Payload, RecordedEvent, RecordedParts};
use rusqlite::Row;
use rusqlite::types::ValueRef;

use crate::error::{Context, failure};

/// The columns [`event`] reads, in order, from `events`.
pub(crate) const EVENT_COLUMNS: &str =
    "position, id, type, stream, version, recorded_at, data, metadata";

/// The columns [`stream_info`] reads, in order, from `streams`.
pub(crate) const STREAM_COLUMNS: &str = "name, version, count, first_recorded_at, last_recorded_at";

/// Where a row of [`EVENT_COLUMNS`] is shown.
pub(crate) enum Shown<'a> {
    /// In the stream it was appended to.
    Own,
    /// Through a link, in `stream` at `version`.
    Linked {
        stream: &'a StreamName,
        version: u64,
    },
}

/// A recorded event from a row that starts with [`EVENT_COLUMNS`].
pub(crate) fn event(row: &Row<'_>, shown: Shown<'_>) -> Result<RecordedEvent, StoreError> {
    let position = unsigned(row, 0, "position")?;
    let id = id(row, 1)?;
    let event_type = EventType::new(text(row, 2, "type")?)
        .map_err(|e| corrupt(position, format_args!("type: {e}")))?;
    let stream: Arc<str> = Arc::from(text(row, 3, "stream")?);
    let version = unsigned(row, 4, "version")?;
    let recorded_at = time(row.get(5).context("read recorded_at")?)
        .ok_or_else(|| corrupt(position, "recorded_at is out of range"))?;
    let data = Payload::from_json(bytes(row, 6, "data")?.to_vec())
        .map_err(|e| corrupt(position, format_args!("data: {e}")))?;
    let metadata: Metadata = serde_json::from_slice(bytes(row, 7, "metadata")?)
        .map_err(|e| corrupt(position, format_args!("metadata: {e}")))?;
    let (stream, version, origin) = match shown {
        Shown::Own => (stream, version, None),
        Shown::Linked {
            stream: shown_in,
            version: shown_at,
        } => (
            Arc::clone(shown_in.as_arc()),
            shown_at,
            Some(Origin { stream, version }),
        ),
    };
    Ok(RecordedEvent::from_parts(RecordedParts {
        id,
        event_type,
        stream: Some(stream),
        version: Some(version),
        position: Some(position),
        recorded_at,
        data,
        metadata,
        origin,
    }))
}

/// A stream info from a row of [`STREAM_COLUMNS`].
pub(crate) fn stream_info(row: &Row<'_>) -> Result<StreamInfo, StoreError> {
    let name = text(row, 0, "stream name")?;
    let stream = StreamName::new(name)
        .map_err(|e| failure(format_args!("stored stream name does not decode: {e}")))?;
    let times = |i| {
        row.get::<_, i64>(i)
            .context("read stream times")
            .and_then(|t| {
                time(t).ok_or_else(|| failure(format_args!("stream {stream}: time out of range")))
            })
    };
    Ok(StreamInfo {
        version: unsigned(row, 1, "stream version")?,
        count: unsigned(row, 2, "stream count")?,
        first_recorded_at: times(3)?,
        last_recorded_at: times(4)?,
        stream,
    })
}

/// The event id in column `i`: 16 bytes.
pub(crate) fn id(row: &Row<'_>, i: usize) -> Result<EventId, StoreError> {
    let bytes = row.get_ref(i).context("read event id")?;
    match bytes {
        ValueRef::Blob(b) => uuid::Uuid::from_slice(b)
            .map(EventId::from_uuid)
            .map_err(|e| failure(format_args!("stored event id does not decode: {e}"))),
        _ => Err(failure("stored event id is not a blob")),
    }
}

/// The UUID in column `i`: 16 bytes.
pub(crate) fn uuid(row: &Row<'_>, i: usize, what: &str) -> Result<uuid::Uuid, StoreError> {
    match row.get_ref(i).context(format_args!("read {what}"))? {
        ValueRef::Blob(b) => uuid::Uuid::from_slice(b)
            .map_err(|e| failure(format_args!("stored {what} does not decode: {e}"))),
        _ => Err(failure(format_args!("stored {what} is not a blob"))),
    }
}

/// The text of column `i`.
pub(crate) fn text<'r>(row: &'r Row<'_>, i: usize, what: &str) -> Result<&'r str, StoreError> {
    match row.get_ref(i).context(format_args!("read {what}"))? {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map_err(|e| failure(format_args!("stored {what} is not utf-8: {e}"))),
        _ => Err(failure(format_args!("stored {what} is not text"))),
    }
}

/// The bytes of text column `i`.
pub(crate) fn bytes<'r>(row: &'r Row<'_>, i: usize, what: &str) -> Result<&'r [u8], StoreError> {
    match row.get_ref(i).context(format_args!("read {what}"))? {
        ValueRef::Text(t) | ValueRef::Blob(t) => Ok(t),
        _ => Err(failure(format_args!("stored {what} is not text"))),
    }
}

/// A non-negative integer column.
pub(crate) fn unsigned(row: &Row<'_>, i: usize, what: &str) -> Result<u64, StoreError> {
    let n: i64 = row.get(i).context(format_args!("read {what}"))?;
    u64::try_from(n).map_err(|_| failure(format_args!("stored {what} is negative: {n}")))
}

fn corrupt(position: u64, what: impl std::fmt::Display) -> StoreError {
    failure(format_args!(
        "stored event at position {position} does not decode: {what}"
    ))
}

/// Microseconds since the epoch as a time.
pub(crate) fn time(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
}

/// A time as microseconds since the epoch, rounded up, so that for a stored
/// time `t` (whole microseconds) `t >= micros_ceil(x)` exactly when `t >= x`,
/// and `t < micros_ceil(x)` exactly when `t < x`.
pub(crate) fn micros_ceil(time: DateTime<Utc>) -> i64 {
    let floor = time.timestamp_micros();
    if time.timestamp_subsec_nanos() % 1_000 == 0 {
        floor
    } else {
        floor.saturating_add(1)
    }
}

/// A count or version as SQLite's integer, saturating.
pub(crate) fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored integer as a version or position (the store never writes a
/// negative one).
pub(crate) fn uint(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_up_keeps_comparisons_exact() {
        let whole = time(1_700_000_000_123_456).unwrap();
        assert_eq!(micros_ceil(whole), 1_700_000_000_123_456);
        let between = whole + chrono::Duration::nanoseconds(1);
        assert_eq!(micros_ceil(between), 1_700_000_000_123_457);
        let before = whole - chrono::Duration::nanoseconds(1);
        assert_eq!(micros_ceil(before), 1_700_000_000_123_456);
    }
}
