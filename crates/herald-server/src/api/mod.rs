//! The JSON API under `/api`.
//!
//! Every endpoint is described in the OpenAPI document served at
//! `/api/openapi.json` ([`openapi`]); a test checks that the two agree.
//!
//! # Errors
//!
//! Every error is `application/problem+json` ([`Problem`]): bodies that are
//! not JSON or not of the expected shape, bad query strings and path
//! segments are 400 with a detail naming the field; a body over the limit is
//! 413; an unknown endpoint is 404 and a known one with the wrong method
//! 405. Requests are validated whole before anything is written.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use herald::store::{StoreError, StoreErrorKind};
use herald::{DeadLetterError, PublishError};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::problem::{PROBLEM_JSON, Problem};

mod dead_letters;
mod events;
pub(crate) use events::topic_patterns;
pub(crate) mod openapi;

/// The title of the problem for a path no endpoint serves; the OpenAPI
/// conformance test tells "no such endpoint" from "no such resource" by it.
pub(crate) const NO_ENDPOINT: &str = "No such endpoint";

/// The API's own endpoints, path (relative to `/api`) and handlers: the
/// router is built from this table, and a test checks every path in it is in
/// the OpenAPI document.
fn endpoints() -> Vec<(&'static str, MethodRouter<AppState>)> {
    use axum::routing::{get, post};
    vec![
        ("/streams", get(events::list_streams)),
        (
            "/streams/{stream}/events",
            get(events::read_stream).post(events::append),
        ),
        ("/events", get(events::read_log).post(events::publish)),
        ("/events/{id}", get(events::get_event)),
        ("/subscribe", get(crate::sse::subscribe)),
        ("/dead-letters", get(dead_letters::list)),
        ("/dead-letters/retry", post(dead_letters::retry_all)),
        (
            "/dead-letters/{id}",
            get(dead_letters::get).delete(dead_letters::discard),
        ),
        ("/dead-letters/{id}/retry", post(dead_letters::retry)),
        ("/openapi.json", get(openapi::document)),
    ]
}

/// The paths of [`endpoints`], relative to `/api`.
#[cfg(test)]
pub(crate) fn endpoint_paths() -> Vec<&'static str> {
    endpoints().into_iter().map(|(path, _)| path).collect()
}

/// The API's routes.
pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for (path, handler) in endpoints() {
        router = router.route(path, handler);
    }
    router
        .merge(crate::webhooks::routes())
        .fallback(no_endpoint)
        .layer(axum::middleware::map_response(routing_problems))
        .layer(axum::middleware::from_fn(crate::metrics::track_latency))
}

async fn no_endpoint(method: Method, OriginalUri(uri): OriginalUri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        NO_ENDPOINT,
        format!(
            "no endpoint serves {method} {}; see /api/openapi.json",
            uri.path()
        ),
    )
}

/// Gives axum's own error answers (a bare 405, a plain-text rejection of a
/// path segment) a problem body. (axum adds the 405's `Allow` header after
/// this runs.)
async fn routing_problems(method: Method, response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        return Problem::new(
            status,
            "Method not allowed",
            format!(
                "this endpoint does not accept {method}; the Allow header lists the methods it does"
            ),
        )
        .into_response();
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let title = status.canonical_reason().unwrap_or("Error");
    let detail = if text.is_empty() {
        title.to_owned()
    } else {
        text
    };
    Problem::new(status, title, detail).into_response()
}

/// A problem with extension members (RFC 9457 §3.2) next to the standard
/// ones, such as the stream and versions of a conflict.
pub(crate) fn problem_with(problem: Problem, extensions: Value) -> Response {
    let mut body = json!({
        "type": "about:blank",
        "title": problem.title,
        "status": problem.status.as_u16(),
        "detail": problem.detail,
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extensions) {
        body.extend(extra);
    }
    (
        problem.status,
        [(header::CONTENT_TYPE, PROBLEM_JSON)],
        body.to_string(),
    )
        .into_response()
}

/// An error of an API handler: a problem, possibly with extension members.
pub(crate) enum ApiError {
    /// A plain problem.
    Problem(Problem),
    /// A prepared answer (a problem with extensions).
    Response(Response),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Problem(p) => p.into_response(),
            Self::Response(r) => r,
        }
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => Self::Response(problem_with(
                Problem::new(
                    StatusCode::CONFLICT,
                    "Wrong expected version",
                    err.to_string(),
                ),
                json!({
                    "stream": stream.as_str(),
                    "expected": expected_word(*expected),
                    "actual": actual,
                }),
            )),
            StoreError::DuplicateEvent { .. } => Problem::conflict(err.to_string()).into(),
            _ => match err.kind() {
                StoreErrorKind::InvalidInput => Problem::bad_request(err.to_string()).into(),
                StoreErrorKind::NotFound => Problem::not_found(err.to_string()).into(),
                _ => Problem::unavailable(err.to_string()).into(),
            },
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(err: PublishError) -> Self {
        match err {
            PublishError::Store(err) => err.into(),
            PublishError::InvalidEventType(_) | PublishError::Payload(_) => {
                Problem::bad_request(err.to_string()).into()
            }
            PublishError::ShutDown => Problem::unavailable(err.to_string()).into(),
            other => Problem::internal(other.to_string()).into(),
        }
    }
}

impl From<DeadLetterError> for ApiError {
    fn from(err: DeadLetterError) -> Self {
        match err {
            DeadLetterError::NotFound(_) => Problem::not_found(err.to_string()).into(),
            DeadLetterError::SubscriberGone { .. } => Problem::conflict(err.to_string()).into(),
            other => Problem::unavailable(other.to_string()).into(),
        }
    }
}

/// How an expected version is written in the `Herald-Expected-Version`
/// header (and in a conflict's problem).
pub(crate) fn expected_word(expected: herald::store::ExpectedVersion) -> Value {
    use herald::store::ExpectedVersion;
    match expected {
        ExpectedVersion::Any => json!("any"),
        ExpectedVersion::NoStream => json!("no_stream"),
        ExpectedVersion::StreamExists => json!("exists"),
        ExpectedVersion::Exact(v) => json!(v),
    }
}

/// A JSON body, read whatever its content type (clients that forget the
/// header are common), parsed with the path of the field that did not fit
/// in the error: `events[0].type: missing field`.
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Problem> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::too_large(state.config.body_limit)
                } else {
                    Problem::bad_request(format!("cannot read the body: {}", rejection.body_text()))
                }
            })?;
        parse_json(&bytes).map(Body)
    }
}

/// Parses JSON, naming the field that did not fit.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() {
            "the body is not valid JSON"
        } else {
            "the body does not have the expected shape"
        };
        if path == "." || inner.is_syntax() || inner.is_eof() {
            Problem::bad_request(format!("{what}: {inner}"))
        } else {
            Problem::bad_request(format!("{what}: {path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|err| Problem::bad_request(format!("the body is not valid JSON: {err}")))?;
    Ok(value)
}

/// A query string, with a problem naming the parameter that did not parse.
pub(crate) struct Query<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        // The token of clients that cannot send headers is the auth
        // layer's business, not a parameter of the endpoint.
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
                    .filter(|(k, _)| k != "access_token"),
            )
            .finish();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|err| {
                let path = err.path().to_string();
                let inner = err.into_inner();
                if path == "." {
                    Problem::bad_request(format!("invalid query string: {inner}"))
                } else {
                    Problem::bad_request(format!("invalid query parameter {path}: {inner}"))
                }
            })
    }
}
