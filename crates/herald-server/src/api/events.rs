//! Events and streams: append, publish, read a stream, read the global log,
//! one event, list streams.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use herald::store::{Direction, ExpectedVersion, ListStreams, ReadAll, ReadStream, StreamName};
use herald::{EventId, EventType, Metadata, NewEvent, Payload, RecordedEvent, TopicPattern};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{ApiError, Body, Query};
use crate::app::AppState;
use crate::problem::Problem;

/// The header that carries an append's expected version.
pub(crate) const EXPECTED_VERSION: &str = "herald-expected-version";

/// The most events a list answer holds.
pub(crate) const MAX_LIMIT: usize = 1000;

/// The number of events (or streams) a list answer holds when the request
/// names no limit.
pub(crate) const DEFAULT_LIMIT: usize = 100;

/// A batch of events to append or publish.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batch {
    events: Vec<EventIn>,
}

/// One event of a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Option<Payload>,
    #[serde(default)]
    metadata: Option<MetadataIn>,
    #[serde(default)]
    id: Option<EventId>,
    /// Publish only: the stream to append to (default: the event type).
    #[serde(default)]
    stream: Option<String>,
}

/// Metadata as the API takes it: the same fields as herald's [`Metadata`],
/// and no others (a misspelt key is an error, not silently dropped).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataIn {
    #[serde(default)]
    correlation_id: Option<Uuid>,
    #[serde(default)]
    causation_id: Option<Uuid>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

impl From<MetadataIn> for Metadata {
    fn from(m: MetadataIn) -> Self {
        Metadata {
            correlation_id: m.correlation_id,
            causation_id: m.causation_id,
            headers: m.headers,
        }
    }
}

/// Validates a whole batch; returns the events to write, or the first
/// problem, before anything is written.
fn validate(batch: Batch, streams_allowed: bool) -> Result<Vec<NewEvent>, Problem> {
    if batch.events.is_empty() {
        return Err(Problem::bad_request("events: the batch holds no event"));
    }
    batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let event_type = EventType::new(&e.event_type)
                .map_err(|err| Problem::bad_request(format!("events[{i}].type: {err}")))?;
            let mut new = NewEvent::new(event_type.as_str().to_owned(), e.data.unwrap_or_default());
            if let Some(metadata) = e.metadata {
                new = new.with_metadata(metadata.into());
            }
            if let Some(id) = e.id {
                new = new.with_id(id);
            }
            if let Some(stream) = e.stream {
                if !streams_allowed {
                    return Err(Problem::bad_request(format!(
                        "events[{i}].stream: the stream is named in the path; remove this field"
                    )));
                }
                StreamName::new(&stream)
                    .map_err(|err| Problem::bad_request(format!("events[{i}].stream: {err}")))?;
                new = new.in_stream(stream);
            }
            Ok(new)
        })
        .collect()
}

/// Parses `Herald-Expected-Version`: `any` (the default), `no_stream`,
/// `exists` or a version number.
pub(crate) fn expected_version(headers: &HeaderMap) -> Result<ExpectedVersion, Problem> {
    let Some(value) = headers.get(EXPECTED_VERSION) else {
        return Ok(ExpectedVersion::Any);
    };
    let text = value.to_str().unwrap_or("").trim();
    match text {
        "any" => Ok(ExpectedVersion::Any),
        "no_stream" => Ok(ExpectedVersion::NoStream),
        "exists" => Ok(ExpectedVersion::StreamExists),
        _ => text.parse::<u64>().map(ExpectedVersion::Exact).map_err(|_| {
            Problem::bad_request(format!(
                "Herald-Expected-Version {text:?} is not any, no_stream, exists or a version number"
            ))
        }),
    }
}

fn stream_name(raw: &str) -> Result<StreamName, Problem> {
    StreamName::new(raw).map_err(|err| Problem::bad_request(err.to_string()))
}

/// `POST /api/streams/{stream}/events`: appends a batch atomically.
pub(crate) async fn append(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    Body(batch): Body<Batch>,
) -> Result<impl IntoResponse, ApiError> {
    let stream = stream_name(&stream)?;
    let expected = expected_version(&headers)?;
    let events = validate(batch, false)?;
    let count = events.len() as u64;
    let appended = state
        .backend
        .events()
        .append(&stream, expected, events)
        .await?;
    crate::metrics::events_appended("append", count);
    Ok((StatusCode::CREATED, Json(appended)))
}

/// `POST /api/events`: publishes each event through the bus, so that
/// in-process subscribers see it too.
pub(crate) async fn publish(
    State(state): State<AppState>,
    Body(batch): Body<Batch>,
) -> Result<impl IntoResponse, ApiError> {
    let events = validate(batch, true)?;
    // All or nothing: a failure in any event stores none of them.
    let published = state.bus.publish_all(events).await?;
    crate::metrics::events_appended("publish", published.len() as u64);
    Ok((StatusCode::CREATED, Json(json!({ "events": published }))))
}

/// Query of `GET /api/streams`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamsQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

fn limit(limit: Option<usize>) -> Result<usize, Problem> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n),
        n => Err(Problem::bad_request(format!(
            "limit {n} is out of range: use 1 to {MAX_LIMIT}"
        ))),
    }
}

/// `GET /api/streams`: streams in name order, by prefix, paged by name.
pub(crate) async fn list_streams(
    State(state): State<AppState>,
    Query(query): Query<StreamsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = limit(query.limit)?;
    let mut list = ListStreams::default().limit(limit);
    if let Some(prefix) = query.prefix.filter(|p| !p.is_empty()) {
        list = list.prefix(prefix);
    }
    if let Some(after) = query.after.filter(|p| !p.is_empty()) {
        list = list.after(after);
    }
    let streams = state.backend.events().list_streams(list).await?;
    let next = (streams.len() == limit)
        .then(|| streams.last().map(|s| s.stream.to_string()))
        .flatten();
    Ok(Json(json!({ "streams": streams, "next": next })))
}

/// Query of `GET /api/streams/{stream}/events`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    from: Option<u64>,
    limit: Option<usize>,
    direction: Option<Direction>,
}

/// `GET /api/streams/{stream}/events`: one stream, forward or backward from
/// a version.
pub(crate) async fn read_stream(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(query): Query<StreamQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let stream = stream_name(&stream)?;
    let limit = limit(query.limit)?;
    let direction = query.direction.unwrap_or_default();
    let mut read = match direction {
        Direction::Backward => ReadStream::backward(),
        _ => ReadStream::forward(),
    }
    .limit(limit);
    if let Some(from) = query.from {
        read = read.from(from);
    }
    let events = state.backend.events().read_stream(&stream, read).await?;
    let next = if events.len() < limit {
        None
    } else {
        match (direction, events.last().and_then(RecordedEvent::version)) {
            (Direction::Backward, Some(v)) => v.checked_sub(1),
            (_, Some(v)) => Some(v + 1),
            _ => None,
        }
    };
    Ok(Json(json!({ "events": events, "next": next })))
}

/// Query of `GET /api/events`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    after: Option<u64>,
    limit: Option<usize>,
    types: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    correlation_id: Option<Uuid>,
}

/// Parses a comma-separated list of topic patterns (`order.*,payment.#`).
pub(crate) fn topic_patterns(list: Option<&str>) -> Result<Vec<TopicPattern>, Problem> {
    list.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| TopicPattern::parse(p).map_err(|err| Problem::bad_request(err.to_string())))
        .collect()
}

/// `GET /api/events`: the global log after a position, by type patterns,
/// time range and correlation id.
pub(crate) async fn read_log(
    State(state): State<AppState>,
    Query(query): Query<LogQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = limit(query.limit)?;
    let mut read = ReadAll::after(query.after.unwrap_or(0));
    read.topics = topic_patterns(query.types.as_deref())?;
    read.since = query.since;
    read.until = query.until;
    let store = state.backend.events();
    let events: Vec<RecordedEvent> = match query.correlation_id {
        // The store cannot filter by metadata: scan, stopping at the limit.
        Some(correlation) => {
            store
                .read_all(read.batch_size(MAX_LIMIT))
                .try_filter(|e| std::future::ready(e.correlation_id() == correlation))
                .take(limit)
                .try_collect()
                .await?
        }
        None => {
            store
                .read_all(read.limit(limit).batch_size(limit))
                .try_collect()
                .await?
        }
    };
    let next = (events.len() == limit)
        .then(|| events.last().and_then(RecordedEvent::position))
        .flatten();
    Ok(Json(json!({ "events": events, "next": next })))
}

/// `GET /api/events/{id}`: one event.
pub(crate) async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id: EventId = id
        .parse()
        .map_err(|_| Problem::bad_request(format!("event id {id:?} is not a UUID")))?;
    match state.backend.events().event(id).await? {
        Some(event) => Ok(Json(event)),
        None => Err(Problem::not_found(format!("no event with id {id}")).into()),
    }
}
