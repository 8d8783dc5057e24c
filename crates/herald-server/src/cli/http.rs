//! The commands over HTTP, against a running `herald serve`.

use std::collections::VecDeque;

use futures_util::StreamExt;
use herald::store::{Direction, ExpectedVersion, StreamInfo};
use herald::{DeadLetter, EventId, RecordedEvent};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use super::client::{
    CliError, Client, DeadLetterFilter, EventFeed, LogQuery, PublishRequest, Published,
    ReplayStart, Retried, StreamQuery, Subscription,
};

/// The header carrying the expected version of an append.
const EXPECTED_VERSION: &str = "Herald-Expected-Version";

/// A client of a running server's `/api`.
pub(crate) struct HttpClient {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl HttpClient {
    /// A client of the server at `base` (`http://127.0.0.1:7171`, say),
    /// sending `token` as a bearer token when given.
    pub(crate) fn new(base: &str, token: Option<String>) -> Result<Self, CliError> {
        let mut base = Url::parse(base)
            .map_err(|e| CliError::invalid("server URL", format!("{base:?}: {e}")))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(CliError::invalid(
                "server URL",
                format!("{base} is not an http:// URL"),
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("herald-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::invalid("HTTP client", e))?;
        Ok(Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The URL of `/api/<segments...>`, each segment escaped.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("checked to be a base URL in new");
            path.pop_if_empty().push("api");
            path.extend(segments);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends, and turns a failure status into [`CliError::Api`] with the
    /// problem's title and detail.
    async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let request = request
            .build()
            .map_err(|e| CliError::invalid("request", e))?;
        let url = request.url().clone();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| CliError::Unreachable {
                url: url.to_string(),
                reason: error_chain(&e),
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(problem(response).await)
    }

    /// Sends and reads a JSON answer.
    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, CliError> {
        let (value, _) = self.json_at(request).await?;
        Ok(value)
    }

    /// Sends and reads a JSON answer; also the URL asked, for errors.
    async fn json_at<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<(T, String), CliError> {
        let response = self.send(request).await?;
        let url = response.url().to_string();
        let bytes = response.bytes().await.map_err(|e| CliError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok((value, url)),
            Err(e) => Err(CliError::UnexpectedResponse {
                url,
                reason: e.to_string(),
            }),
        }
    }

    /// A list that the server may send bare or inside `{"<key>": [...]}`.
    async fn list<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        key: &str,
    ) -> Result<Vec<T>, CliError> {
        let (value, url): (Value, String) = self.json_at(request).await?;
        let items = match value {
            Value::Object(mut map) => map.remove(key).unwrap_or(Value::Null),
            other => other,
        };
        serde_json::from_value(items).map_err(|e| CliError::UnexpectedResponse {
            url,
            reason: format!("expected a list of {key}: {e}"),
        })
    }

    /// Reads one resource; a 404 becomes [`CliError::NotFound`] as in
    /// [`not_found_as`](Self::not_found_as).
    async fn one<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        what: impl FnOnce() -> String,
    ) -> Result<T, CliError> {
        let response = self.not_found_as(request, what).await?;
        let url = response.url().to_string();
        response
            .json()
            .await
            .map_err(|e| CliError::UnexpectedResponse {
                url,
                reason: error_chain(&e),
            })
    }

    /// Sends; a 404 becomes [`CliError::NotFound`] with the server's
    /// detail, or `what()` when it gave none.
    async fn not_found_as(
        &self,
        request: RequestBuilder,
        what: impl FnOnce() -> String,
    ) -> Result<Response, CliError> {
        match self.send(request).await {
            Err(CliError::Api {
                status: 404,
                title,
                detail,
            }) => Err(CliError::NotFound(if title == "No such endpoint" {
                format!(
                    "{}: the server does not have this endpoint ({detail})",
                    what()
                )
            } else if detail.is_empty() || detail == "the server has no such resource" {
                what()
            } else {
                detail
            })),
            other => other,
        }
    }
}

/// An error's deepest cause, which says what happened ("connection
/// refused"), after its own message when that adds to it.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut deepest = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        deepest = cause.to_string();
        source = cause.source();
    }
    deepest
}

/// The error a failed response stands for: its problem+json title and
/// detail, or its status and body.
async fn problem(response: Response) -> CliError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Option<Value> = serde_json::from_str(&text).ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let title =
        field("title").unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let detail = field("detail").unwrap_or_else(|| {
        let text = text.trim();
        if text.is_empty() {
            match status {
                StatusCode::UNAUTHORIZED => "no valid token: set HERALD_TOKEN".to_owned(),
                StatusCode::NOT_FOUND => "the server has no such resource".to_owned(),
                _ => "no detail given".to_owned(),
            }
        } else {
            text.chars().take(500).collect()
        }
    });
    CliError::Api {
        status: status.as_u16(),
        title,
        detail,
    }
}

fn expected_header(expected: ExpectedVersion) -> String {
    match expected {
        ExpectedVersion::Any => "any".to_owned(),
        ExpectedVersion::NoStream => "no_stream".to_owned(),
        ExpectedVersion::StreamExists => "exists".to_owned(),
        ExpectedVersion::Exact(v) => v.to_string(),
    }
}

#[async_trait::async_trait]
impl Client for HttpClient {
    async fn publish(&self, request: PublishRequest) -> Result<Published, CliError> {
        let body = json!({ "events": request.events });
        let http = match &request.stream {
            Some(stream) => self
                .request(Method::POST, self.url(&["streams", stream, "events"]))
                .header(EXPECTED_VERSION, expected_header(request.expected)),
            None => self.request(Method::POST, self.url(&["events"])),
        };
        let mut published: Published = self.json(http.json(&body)).await?;
        if published.stream.is_none() {
            published.stream = request.stream;
        }
        Ok(published)
    }

    async fn read_stream(
        &self,
        stream: &str,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>, CliError> {
        let direction = match query.direction {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        };
        let mut params = vec![
            ("limit", query.limit.to_string()),
            ("direction", direction.to_owned()),
        ];
        if let Some(from) = query.from {
            params.push(("from", from.to_string()));
        }
        let request = self
            .request(Method::GET, self.url(&["streams", stream, "events"]))
            .query(&params);
        self.list(request, "events").await
    }

    async fn read_log(&self, query: &LogQuery) -> Result<Vec<RecordedEvent>, CliError> {
        let mut params = vec![
            ("after", query.after.to_string()),
            ("limit", query.limit.to_string()),
        ];
        if !query.topics.is_empty() {
            params.push(("types", query.topics.join(",")));
        }
        let request = self
            .request(Method::GET, self.url(&["events"]))
            .query(&params);
        self.list(request, "events").await
    }

    async fn event(&self, id: EventId) -> Result<RecordedEvent, CliError> {
        let id_text = id.to_string();
        let request = self.request(Method::GET, self.url(&["events", &id_text]));
        self.one(request, || format!("no event with id {id}")).await
    }

    async fn follow(
        &self,
        topics: Vec<String>,
        after: Option<u64>,
    ) -> Result<EventFeed<'_>, CliError> {
        let body = self.subscribe(&topics, after).await?;
        let state = Sse {
            client: self,
            topics,
            last_id: after,
            body,
            parser: SseParser::default(),
            ready: VecDeque::new(),
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut state| async move {
                loop {
                    if let Some(message) = state.ready.pop_front() {
                        match state.event(message) {
                            Some(item) => return Some((item, state)),
                            None => continue,
                        }
                    }
                    match state.body.next().await {
                        Some(Ok(chunk)) => {
                            let messages = state.parser.push(&chunk);
                            state.ready.extend(messages);
                        }
                        // The feed ended or broke (a store failure, a
                        // restart): resume after the last event seen, or
                        // end with the reason.
                        Some(Err(_)) | None => {
                            match state.client.subscribe(&state.topics, state.last_id).await {
                                Ok(body) => {
                                    state.body = body;
                                    state.parser = SseParser::default();
                                }
                                Err(err) => return Some((Err(err), state)),
                            }
                        }
                    }
                }
            },
        )))
    }

    async fn streams(
        &self,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, CliError> {
        let mut params = vec![("limit", limit.to_string())];
        if let Some(prefix) = prefix {
            params.push(("prefix", prefix.to_owned()));
        }
        let request = self
            .request(Method::GET, self.url(&["streams"]))
            .query(&params);
        self.list(request, "streams").await
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, CliError> {
        let request = self.request(Method::GET, self.url(&["subscriptions"]));
        self.list(request, "subscriptions").await
    }

    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), CliError> {
        let action = if enabled { "enable" } else { "disable" };
        let request = self.request(Method::POST, self.url(&["subscriptions", name, action]));
        self.not_found_as(request, || format!("no subscriber named {name}"))
            .await
            .map(drop)
    }

    async fn replay(&self, name: &str, from: ReplayStart) -> Result<Value, CliError> {
        let body = match from {
            ReplayStart::Start => json!({ "from": "start" }),
            ReplayStart::Position(position) => json!({ "position": position }),
            ReplayStart::Time(time) => json!({ "time": time.to_rfc3339() }),
        };
        let request = self
            .request(Method::POST, self.url(&["subscriptions", name, "replay"]))
            .json(&body);
        let response = self
            .not_found_as(request, || format!("no subscriber named {name}"))
            .await?;
        let text = response.text().await.unwrap_or_default();
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, CliError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &filter.subscriber {
            params.push(("subscriber", s.clone()));
        }
        if let Some(t) = &filter.event_type {
            params.push(("type", t.clone()));
        }
        if let Some(e) = &filter.error {
            params.push(("error", e.clone()));
        }
        if let Some(t) = filter.since {
            params.push(("since", t.to_rfc3339()));
        }
        if let Some(t) = filter.until {
            params.push(("until", t.to_rfc3339()));
        }
        if let Some(l) = filter.limit {
            params.push(("limit", l.to_string()));
        }
        let request = self
            .request(Method::GET, self.url(&["dead-letters"]))
            .query(&params);
        self.list(request, "dead_letters").await
    }

    async fn dead_letter(&self, id: Uuid) -> Result<DeadLetter, CliError> {
        let id_text = id.to_string();
        let request = self.request(Method::GET, self.url(&["dead-letters", &id_text]));
        self.one(request, || format!("no dead letter with id {id}"))
            .await
    }

    async fn retry_dead_letter(&self, id: Uuid) -> Result<Retried, CliError> {
        let id_text = id.to_string();
        let request = self.request(Method::POST, self.url(&["dead-letters", &id_text, "retry"]));
        let response = self
            .not_found_as(request, || format!("no dead letter with id {id}"))
            .await?;
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(retried_from(id, &body))
    }

    async fn discard_dead_letter(&self, id: Uuid) -> Result<(), CliError> {
        let id_text = id.to_string();
        let request = self.request(Method::DELETE, self.url(&["dead-letters", &id_text]));
        self.not_found_as(request, || format!("no dead letter with id {id}"))
            .await
            .map(drop)
    }

    async fn migrate(&self) -> Result<String, CliError> {
        Err(CliError::NeedsStore("migrate"))
    }
}

/// Reads a retry's answer: a failure names an error; anything else is a
/// success.
fn retried_from(id: Uuid, body: &Value) -> Retried {
    let failed = ["outcome", "status", "result"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_str))
        .any(|s| s.eq_ignore_ascii_case("failed"));
    let error = body.get("error").and_then(Value::as_str).map(str::to_owned);
    match (failed, error) {
        (_, Some(error)) => Retried::Failed { id, error },
        (true, None) => Retried::Failed {
            id,
            error: "the subscriber failed again".to_owned(),
        },
        (false, None) => Retried::Handled { id },
    }
}

impl HttpClient {
    /// Opens `/api/subscribe` after `after` (`None`: after the head).
    async fn subscribe(&self, topics: &[String], after: Option<u64>) -> Result<Body, CliError> {
        let after = after.map_or_else(|| "now".to_owned(), |a| a.to_string());
        let mut params = vec![("after", after)];
        if !topics.is_empty() {
            params.push(("topics", topics.join(",")));
        }
        let request = self
            .request(Method::GET, self.url(&["subscribe"]))
            .query(&params)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let response = self.send(request).await?;
        Ok(Box::pin(response.bytes_stream()))
    }
}

/// A response body as it arrives.
type Body = futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>;

/// The state of a live feed over server-sent events.
struct Sse<'a> {
    client: &'a HttpClient,
    topics: Vec<String>,
    /// The position of the last event received: where a reconnection
    /// resumes (`None`: none yet, and the feed started at the head, so a
    /// reconnection starts at the head again).
    last_id: Option<u64>,
    body: Body,
    parser: SseParser,
    ready: VecDeque<SseMessage>,
}

impl Sse<'_> {
    /// The item a message stands for: an event, an error, or nothing
    /// (a message of another kind).
    fn event(&mut self, message: SseMessage) -> Option<Result<RecordedEvent, CliError>> {
        let url = self.client.url(&["subscribe"]).to_string();
        match message.event.as_deref() {
            None | Some("message") => {}
            Some("error") => {
                return Some(Err(CliError::UnexpectedResponse {
                    url,
                    reason: format!("the server ended the live feed: {}", message.data),
                }));
            }
            Some(_) => return None,
        }
        if let Some(id) = message.id.as_deref().and_then(|id| id.parse().ok()) {
            self.last_id = Some(id);
        }
        Some(
            serde_json::from_str::<RecordedEvent>(&message.data).map_err(|e| {
                CliError::UnexpectedResponse {
                    url,
                    reason: format!("a server-sent event is not an event: {e}"),
                }
            }),
        )
    }
}

/// One server-sent message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SseMessage {
    /// Its `event:` name, if any.
    pub(crate) event: Option<String>,
    /// Its `id:`, if any.
    pub(crate) id: Option<String>,
    /// Its `data:` lines, joined by newlines.
    pub(crate) data: String,
}

/// A `text/event-stream` parser: bytes in, whole messages out.
#[derive(Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    message: SseMessage,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; every message they complete.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        let mut messages = Vec::new();
        for &byte in chunk {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            if line.is_empty() {
                let message = std::mem::take(&mut self.message);
                if std::mem::take(&mut self.has_data) {
                    messages.push(message);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            match field {
                "data" => {
                    if self.has_data {
                        self.message.data.push('\n');
                    }
                    self.message.data.push_str(value);
                    self.has_data = true;
                }
                "id" => self.message.id = Some(value.to_owned()),
                "event" => self.message.event = Some(value.to_owned()),
                _ => {}
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_are_split_on_blank_lines_across_chunks() {
        let mut parser = SseParser::default();
        assert!(
            parser
                .push(b": keep-alive\n\nid: 1\ndata: {\"a\"")
                .is_empty()
        );
        let out = parser.push(b":1}\r\n\r\nevent: error\ndata: x\ndata: y\n\n");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id.as_deref(), Some("1"));
        assert_eq!(out[0].data, "{\"a\":1}");
        assert_eq!(out[0].event, None);
        assert_eq!(out[1].event.as_deref(), Some("error"));
        assert_eq!(out[1].data, "x\ny");
    }

    #[test]
    fn a_retry_answer_with_an_error_is_a_failure() {
        let id = Uuid::nil();
        assert_eq!(
            retried_from(id, &json!({"outcome": "handled"})),
            Retried::Handled { id }
        );
        assert_eq!(
            retried_from(id, &json!({"outcome": "failed", "error": "boom"})),
            Retried::Failed {
                id,
                error: "boom".to_owned()
            }
        );
    }
}
