//! Dead letters: list, show, retry (one or every one selected), discard,
//! through the bus so that a retry runs the subscriber's whole stack.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use herald::{DeadLetter, DeadLetterQuery, RetryOutcome, TopicPattern};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::events::{DEFAULT_LIMIT, MAX_LIMIT};
use super::{ApiError, Query};
use crate::app::AppState;
use crate::problem::Problem;

/// The filters of `GET /api/dead-letters` and `POST /api/dead-letters/retry`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Filters {
    subscriber: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    error: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<usize>,
    /// A page's `next`: where the listing goes on.
    after: Option<String>,
}

impl Filters {
    fn query(self) -> Result<DeadLetterQuery, Problem> {
        let mut query = DeadLetterQuery::default().failed_between(self.since, self.until);
        if let Some(subscriber) = self.subscriber.filter(|s| !s.is_empty()) {
            query = query.subscriber(subscriber);
        }
        if let Some(pattern) = self.event_type.filter(|s| !s.is_empty()) {
            let pattern = TopicPattern::parse(&pattern)
                .map_err(|err| Problem::bad_request(format!("type: {err}")))?;
            query = query.event_type(pattern);
        }
        if let Some(error) = self.error.filter(|s| !s.is_empty()) {
            query = query.error(error);
        }
        if let Some(cursor) = self.after.filter(|s| !s.is_empty()) {
            query.after = Some(parse_cursor(&cursor)?);
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Problem::bad_request(format!(
                "limit {limit} is out of range: use 1 to {MAX_LIMIT}"
            )));
        }
        Ok(query.limit(limit))
    }
}

/// A page's cursor: its last dead letter's first failure (microseconds)
/// and id, the key dead letters are listed by.
fn cursor(letter: &DeadLetter) -> String {
    format!(
        "{}_{}",
        letter.first_failed_at.timestamp_micros(),
        letter.id
    )
}

fn parse_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), Problem> {
    let bad = || {
        Problem::bad_request(format!(
            "after {raw:?} is not a cursor: pass the `next` of the page before"
        ))
    };
    let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

fn letter_id(raw: &str) -> Result<Uuid, Problem> {
    raw.parse()
        .map_err(|_| Problem::bad_request(format!("dead letter id {raw:?} is not a UUID")))
}

/// `GET /api/dead-letters`: oldest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(filters): Query<Filters>,
) -> Result<impl IntoResponse, ApiError> {
    let query = filters.query()?;
    let letters = state.bus.dead_letters(&query).await?;
    // A full page may have a next one; a short page is the last.
    let next = match (letters.last(), query.limit) {
        (Some(last), Some(limit)) if letters.len() >= limit => Some(cursor(last)),
        _ => None,
    };
    Ok(Json(json!({ "dead_letters": letters, "next": next })))
}

/// `GET /api/dead-letters/{id}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.bus.dead_letter(letter_id(&id)?).await?))
}

fn outcome(outcome: RetryOutcome) -> Value {
    match outcome {
        RetryOutcome::Handled => json!({ "outcome": "handled" }),
        RetryOutcome::Failed { error, dead_letter } => {
            json!({ "outcome": "failed", "error": error, "dead_letter": dead_letter })
        }
        RetryOutcome::Redelivered => json!({ "outcome": "redelivered" }),
        other => json!({ "outcome": format!("{other:?}").to_lowercase() }),
    }
}

/// `POST /api/dead-letters/{id}/retry`: delivers the event again to its
/// subscriber; 200 whether it was handled or failed again (the body says
/// which).
pub(crate) async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let result = state.bus.retry_dead_letter(letter_id(&id)?).await?;
    Ok(Json(outcome(result)))
}

/// `POST /api/dead-letters/retry`: retries every dead letter the filters
/// select, one after the other.
pub(crate) async fn retry_all(
    State(state): State<AppState>,
    Query(filters): Query<Filters>,
) -> Result<impl IntoResponse, ApiError> {
    let results = state.bus.retry_dead_letters(&filters.query()?).await?;
    let results: Vec<Value> = results
        .into_iter()
        .map(|(id, result)| {
            let mut body = match result {
                Ok(o) => outcome(o),
                Err(err) => json!({ "outcome": "error", "error": err.to_string() }),
            };
            body["id"] = json!(id);
            body
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

/// `DELETE /api/dead-letters/{id}`: discards it; answers with the dead
/// letter as it was.
pub(crate) async fn discard(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.bus.discard_dead_letter(letter_id(&id)?).await?))
}
