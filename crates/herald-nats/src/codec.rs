//! Events as NATS messages: the fields in headers, the data as the payload.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use herald::transport::TransportError;
use herald::{EventId, EventType, Metadata, Payload, RecordedEvent, RecordedParts};
use uuid::Uuid;

use crate::NAME;

/// The event id, on a message that is not deduplicated (a redelivery);
/// other messages carry the id as `Nats-Msg-Id` only, which the server
/// uses for its duplicate window.
pub const ID: &str = "Herald-Id";
/// The server's deduplication header: the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The event type.
pub const TYPE: &str = "Herald-Type";
/// The event's stream.
pub const STREAM: &str = "Herald-Stream";
/// The event's version in its stream.
pub const VERSION: &str = "Herald-Version";
/// The event's global position.
pub const POSITION: &str = "Herald-Position";
/// When it was recorded: RFC 3339 with microseconds, in UTC.
pub const RECORDED_AT: &str = "Herald-Recorded-At";
/// The correlation id.
pub const CORRELATION_ID: &str = "Herald-Correlation-Id";
/// The causation id.
pub const CAUSATION_ID: &str = "Herald-Causation-Id";
/// The free metadata headers, as one JSON object: their keys and values
/// may hold characters that NATS header names and values cannot.
pub const HEADERS: &str = "Herald-Headers";
/// For an event read through a link: its original stream.
pub const ORIGIN_STREAM: &str = "Herald-Origin-Stream";
/// For an event read through a link: its original version.
pub const ORIGIN_VERSION: &str = "Herald-Origin-Version";

/// On a message whose payload was too large for it: the name of the
/// object in `<PREFIX>_PAYLOADS` holding the event's data.
pub const PAYLOAD_OBJECT: &str = "Herald-Payload-Object";

/// Suffix of a header whose text holds a line break: its value is then the
/// JSON string of the text (NATS header values cannot hold line breaks).
const JSON_SUFFIX: &str = "-Json";

/// The value of header `name`, found without building a header name (which
/// allocates): a message has about ten headers, so a scan is cheap.
pub(crate) fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| AsRef::<str>::as_ref(*n) == name)
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str())
}

/// A message's headers, read once.
struct View<'a>(Vec<(&'a str, &'a str)>);

impl<'a> View<'a> {
    fn new(headers: &'a HeaderMap) -> Self {
        Self(
            headers
                .iter()
                .filter_map(|(n, values)| Some((AsRef::<str>::as_ref(n), values.first()?.as_str())))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// What [`put_text`] wrote under `name`.
    fn text(&self, name: &str) -> Option<String> {
        if let Some(v) = self.get(name) {
            return Some(v.to_owned());
        }
        let quoted = self.0.iter().find(|(n, _)| {
            n.len() == name.len() + JSON_SUFFIX.len()
                && n.starts_with(name)
                && n.ends_with(JSON_SUFFIX)
        })?;
        serde_json::from_str::<String>(quoted.1).ok()
    }
}

/// Puts `value` under `name`, or JSON-quoted under `<name>-Json` when it has
/// a line break.
pub(crate) fn put_text(headers: &mut HeaderMap, name: &str, value: &str) {
    if value.contains(['\r', '\n']) {
        let quoted = serde_json::Value::String(value.to_owned()).to_string();
        headers.insert(format!("{name}{JSON_SUFFIX}"), quoted);
    } else {
        headers.insert(name, value);
    }
}

/// The headers of `event`, with its id as `Nats-Msg-Id`.
pub fn event_headers(event: &RecordedEvent) -> HeaderMap {
    headers_of(event, true)
}

/// The headers of `event`; with `dedupe`, its id goes in `Nats-Msg-Id`
/// (one header less on every message), else in `Herald-Id`.
pub(crate) fn headers_of(event: &RecordedEvent, dedupe: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let id = event.id().to_string();
    headers.insert(if dedupe { MSG_ID } else { ID }, id);
    headers.insert(TYPE, event.event_type());
    if let Some(stream) = event.stream() {
        put_text(&mut headers, STREAM, stream);
    }
    if let Some(version) = event.version() {
        headers.insert(VERSION, version.to_string());
    }
    if let Some(position) = event.position() {
        headers.insert(POSITION, position.to_string());
    }
    headers.insert(
        RECORDED_AT,
        event
            .recorded_at()
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    let metadata = event.metadata();
    if let Some(id) = metadata.correlation_id {
        headers.insert(CORRELATION_ID, id.to_string());
    }
    if let Some(id) = metadata.causation_id {
        headers.insert(CAUSATION_ID, id.to_string());
    }
    if !metadata.headers.is_empty() {
        // A map of strings always serializes, on one line.
        let json = serde_json::to_string(&metadata.headers).unwrap_or_default();
        headers.insert(HEADERS, json);
    }
    if let Some(origin) = &event.clone().into_parts().origin {
        put_text(&mut headers, ORIGIN_STREAM, &origin.stream);
        headers.insert(ORIGIN_VERSION, origin.version.to_string());
    }
    headers
}

fn malformed(reason: impl Into<String>) -> TransportError {
    TransportError::Malformed {
        transport: NAME,
        reason: reason.into(),
    }
}

fn required<'a>(headers: &View<'a>, name: &str) -> Result<&'a str, TransportError> {
    headers
        .get(name)
        .ok_or_else(|| malformed(format!("header {name} is missing")))
}

fn number(headers: &View<'_>, name: &str) -> Result<Option<u64>, TransportError> {
    headers
        .get(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|e| malformed(format!("header {name} is not a number: {e}")))
        })
        .transpose()
}

fn uuid(headers: &View<'_>, name: &str) -> Result<Option<Uuid>, TransportError> {
    headers
        .get(name)
        .map(|v| {
            v.parse::<Uuid>()
                .map_err(|e| malformed(format!("header {name} is not a UUID: {e}")))
        })
        .transpose()
}

/// The event a message carries.
///
/// # Errors
///
/// [`TransportError::Malformed`] when a header is missing or wrong, or the
/// payload is not JSON.
pub fn decode_event(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<RecordedEvent, TransportError> {
    let headers = View::new(headers.ok_or_else(|| malformed("the message has no headers"))?);
    let headers = &headers;
    let (name, id) = match headers.get(ID) {
        Some(id) => (ID, id),
        None => (MSG_ID, required(headers, MSG_ID)?),
    };
    let id: EventId = id
        .parse::<Uuid>()
        .map_err(|e| malformed(format!("header {name} is not a UUID: {e}")))?
        .into();
    let event_type = EventType::new(required(headers, TYPE)?)
        .map_err(|e| malformed(format!("header {TYPE}: {e}")))?;
    let recorded_at = DateTime::parse_from_rfc3339(required(headers, RECORDED_AT)?)
        .map_err(|e| malformed(format!("header {RECORDED_AT} is not an RFC 3339 time: {e}")))?
        .with_timezone(&Utc);
    let stream: Option<Arc<str>> = headers.text(STREAM).map(Into::into);
    let free: BTreeMap<String, String> = match headers.get(HEADERS) {
        Some(json) => serde_json::from_str(json).map_err(|e| {
            malformed(format!(
                "header {HEADERS} is not a JSON object of strings: {e}"
            ))
        })?,
        None => BTreeMap::new(),
    };
    let origin = match (
        headers.text(ORIGIN_STREAM),
        number(headers, ORIGIN_VERSION)?,
    ) {
        (Some(stream), Some(version)) => Some(herald::Origin {
            stream: stream.into(),
            version,
        }),
        _ => None,
    };
    let data = Payload::from_json(payload.clone())
        .map_err(|e| malformed(format!("the payload is not JSON: {e}")))?;
    Ok(RecordedEvent::from_parts(RecordedParts {
        id,
        event_type,
        stream,
        version: number(headers, VERSION)?,
        position: number(headers, POSITION)?,
        recorded_at,
        data,
        metadata: Metadata {
            correlation_id: uuid(headers, CORRELATION_ID)?,
            causation_id: uuid(headers, CAUSATION_ID)?,
            headers: free,
        },
        origin,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(stream: &str, headers: BTreeMap<String, String>) -> RecordedEvent {
        RecordedEvent::from_parts(RecordedParts {
            id: EventId::new(),
            event_type: EventType::new("order.line.added").unwrap(),
            stream: Some(stream.into()),
            version: Some(7),
            position: Some(123_456_789),
            recorded_at: Utc::now(),
            data: Payload::from(json!({"sku": "ä-1", "qty": 2, "nested": {"a": [1, null]}})),
            metadata: Metadata {
                correlation_id: Some(Uuid::from_u128(1)),
                causation_id: Some(Uuid::from_u128(2)),
                headers,
            },
            origin: Some(herald::Origin {
                stream: "all-orders".into(),
                version: 3,
            }),
        })
    }

    #[test]
    fn every_field_survives_the_headers() {
        let sent = event(
            "Order-42",
            BTreeMap::from([
                ("tenant".to_owned(), "acme".to_owned()),
                ("odd key: ü".to_owned(), "line\nbreak\r\n".to_owned()),
            ]),
        );
        let headers = event_headers(&sent);
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()),
            Some(sent.id().to_string())
        );
        let got = decode_event(Some(&headers), &sent.data().to_bytes()).unwrap();
        assert_eq!(got.id(), sent.id());
        assert_eq!(got.event_type(), sent.event_type());
        assert_eq!(got.stream(), sent.stream());
        assert_eq!(got.version(), sent.version());
        assert_eq!(got.position(), sent.position());
        assert_eq!(
            got.recorded_at().timestamp_micros(),
            sent.recorded_at().timestamp_micros()
        );
        assert_eq!(got.data().to_value(), sent.data().to_value());
        assert_eq!(got.metadata(), sent.metadata());
        assert_eq!(got.into_parts().origin, sent.into_parts().origin);
    }

    #[test]
    fn a_message_without_deduplication_carries_its_id_in_its_own_header() {
        let sent = event("s", BTreeMap::new());
        let headers = headers_of(&sent, false);
        assert!(headers.get(MSG_ID).is_none());
        let got = decode_event(Some(&headers), &sent.data().to_bytes()).unwrap();
        assert_eq!(got.id(), sent.id());
    }

    #[test]
    fn a_stream_name_with_a_line_break_is_quoted() {
        let sent = event("two\nlines", BTreeMap::new());
        let headers = event_headers(&sent);
        assert!(headers.get(STREAM).is_none());
        let got = decode_event(Some(&headers), &sent.data().to_bytes()).unwrap();
        assert_eq!(got.stream(), Some("two\nlines"));
    }

    #[test]
    fn a_message_that_is_not_an_event_is_malformed() {
        let err = decode_event(None, &Bytes::from_static(b"{}")).unwrap_err();
        assert!(err.to_string().contains("no headers"), "{err}");
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, "not-a-uuid");
        let err = decode_event(Some(&headers), &Bytes::from_static(b"{}")).unwrap_err();
        assert!(matches!(err, TransportError::Malformed { .. }));
        assert!(err.to_string().contains(MSG_ID), "{err}");
        let sent = event("s", BTreeMap::new());
        let err =
            decode_event(Some(&event_headers(&sent)), &Bytes::from_static(b"{nope")).unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
    }
}
