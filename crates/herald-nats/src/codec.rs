//! Events as NATS messages: the data as the payload, the rest of the event
//! (its envelope) in one compact header.
//!
//! # The `Herald` header, version 1
//!
//! One line of fields separated by single spaces. The first is the format
//! version, `1`; each other one is a one-letter key, `=`, and a value:
//!
//! | key | value | when |
//! |---|---|---|
//! | `t` | recorded-at, in whole microseconds since the Unix epoch (UTC) | always |
//! | `s` | the stream, escaped | when it has one |
//! | `v`, `p` | its version in the stream, its global position | when it has them |
//! | `c` | the correlation id; `-` for none | unless it is the event id |
//! | `k` | the causation id | when it has one |
//! | `h` | one free metadata header, `key:value`, both escaped | once per header |
//! | `o` | where a linked event was first appended: `stream:version`, the stream escaped | for an event read through a link |
//! | `i` | the event id | when there is no `Nats-Msg-Id` (redeliveries) |
//! | `y` | the event type | when the subject does not hold it (redeliveries) |
//! | `x` | the name of the object holding the payload, escaped | for a payload too large for a message |
//!
//! Escaped means percent-encoded: `%`, `:`, space and every byte outside
//! printable ASCII become `%` and two upper-case hex digits, so a stream
//! name may hold anything (spaces, line breaks, unicode) and the header
//! stays printable ASCII. The event id is the `Nats-Msg-Id` header, which
//! the server deduplicates on; the event type is the subject's tail after
//! `<prefix>.ev.`.
//!
//! Decoding is strict: a missing or unknown version, an unknown or repeated
//! key, a bad number, UUID or escape is [`TransportError::Malformed`]
//! naming what is wrong.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald::transport::TransportError;
use herald::{EventId, EventType, Metadata, Payload, RecordedEvent, RecordedParts};
use uuid::Uuid;

use crate::NAME;

/// The server's deduplication header: the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The event's envelope, every field but the id, the type and the data,
/// in one line (see the crate docs).
pub const ENVELOPE: &str = "Herald";
/// The version of the envelope format this build writes and reads.
pub const ENVELOPE_VERSION: &str = "1";

/// On a dead letter whose JSON was too large for a message: the name of
/// the object in `<PREFIX>_PAYLOADS` holding it. (An event's payload
/// object travels in its envelope, key `x`.)
pub const PAYLOAD_OBJECT: &str = "Herald-Payload-Object";

/// The envelope's header name, built once: a name from a `&str` is copied
/// into a new buffer on every insert or lookup.
const ENVELOPE_NAME: HeaderName = HeaderName::from_static(ENVELOPE);
const MSG_ID_NAME: HeaderName = HeaderName::from_static(MSG_ID);

/// Suffix of a dead-letter header whose text holds a line break: its value
/// is then the JSON string of the text (header values cannot hold line
/// breaks).
const JSON_SUFFIX: &str = "-Json";

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

/// Where a message goes, which decides how its id and type travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `<prefix>.ev.<type>`: the type in the subject, the id in
    /// `Nats-Msg-Id` for the server's duplicate window.
    Events,
    /// A subscriber's redelivery subject: not deduplicated (the id is in
    /// the window from its first publish), so id and type go in the
    /// envelope.
    Redelivery,
}

/// The headers of `event` published under its type's subject: its id as
/// `Nats-Msg-Id`, the rest in the `Herald` header.
pub fn event_headers(event: &RecordedEvent) -> HeaderMap {
    headers_of(event, Route::Events)
}

/// The headers of `event` sent by `route`.
pub(crate) fn headers_of(event: &RecordedEvent, route: Route) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if route == Route::Events {
        let mut buffer = Uuid::encode_buffer();
        let id = event.id().as_uuid().hyphenated().encode_lower(&mut buffer);
        headers.insert(MSG_ID_NAME, &*id);
    }
    headers.insert(ENVELOPE_NAME, envelope(event, route));
    headers
}

/// Adds the name of the object holding the payload to a message's
/// envelope (a payload too large for a message).
pub(crate) fn set_payload_object(headers: &mut HeaderMap, name: &str) {
    let mut value = headers
        .get(ENVELOPE_NAME)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    value.push_str(" x=");
    push_escaped(&mut value, name);
    headers.insert(ENVELOPE_NAME, value);
}

/// The envelope line of `event`.
pub(crate) fn envelope(event: &RecordedEvent, route: Route) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(ENVELOPE_VERSION);
    let mut buffer = Uuid::encode_buffer();
    if route == Route::Redelivery {
        out.push_str(" i=");
        out.push_str(event.id().as_uuid().hyphenated().encode_lower(&mut buffer));
        out.push_str(" y=");
        out.push_str(event.event_type());
    }
    // Writing to a String cannot fail.
    let _ = write!(out, " t={}", event.recorded_at().timestamp_micros());
    if let Some(stream) = event.stream() {
        out.push_str(" s=");
        push_escaped(&mut out, stream);
    }
    if let Some(version) = event.version() {
        let _ = write!(out, " v={version}");
    }
    if let Some(position) = event.position() {
        let _ = write!(out, " p={position}");
    }
    let metadata = event.metadata();
    match metadata.correlation_id {
        Some(id) if id == *event.id().as_uuid() => {}
        Some(id) => {
            out.push_str(" c=");
            out.push_str(id.hyphenated().encode_lower(&mut buffer));
        }
        None => out.push_str(" c=-"),
    }
    if let Some(id) = metadata.causation_id {
        out.push_str(" k=");
        out.push_str(id.hyphenated().encode_lower(&mut buffer));
    }
    for (key, value) in &metadata.headers {
        out.push_str(" h=");
        push_escaped(&mut out, key);
        out.push(':');
        push_escaped(&mut out, value);
    }
    if let Some(origin) = &event.origin {
        out.push_str(" o=");
        push_escaped(&mut out, &origin.stream);
        let _ = write!(out, ":{}", origin.version);
    }
    out
}

/// Whether `byte` is written as `%XX`.
fn escaped(byte: u8) -> bool {
    !(0x21..=0x7e).contains(&byte) || byte == b'%' || byte == b':'
}

fn push_escaped(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if !text.bytes().any(escaped) {
        out.push_str(text);
        return;
    }
    for byte in text.bytes() {
        if escaped(byte) {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            // Printable ASCII: one byte, one char.
            out.push(char::from(byte));
        }
    }
}

fn malformed(reason: impl Into<String>) -> TransportError {
    TransportError::Malformed {
        transport: NAME,
        reason: reason.into(),
    }
}

fn field_error(key: char, what: impl std::fmt::Display) -> TransportError {
    malformed(format!("header {ENVELOPE}: field {key} {what}"))
}

fn unescape(key: char, text: &str) -> Result<Cow<'_, str>, TransportError> {
    if !text.contains('%') {
        return Ok(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| field_error(key, format!("has a bad escape at byte {i}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| field_error(key, "is not UTF-8 once unescaped"))
}

fn number(key: char, text: &str) -> Result<u64, TransportError> {
    text.parse()
        .map_err(|e| field_error(key, format_args!("is not a number: {e}")))
}

fn uuid(key: char, text: &str) -> Result<Uuid, TransportError> {
    Uuid::try_parse(text).map_err(|e| field_error(key, format_args!("is not a UUID: {e}")))
}

/// A message's envelope, read from its headers: borrowed from them, and
/// checked field by field.
pub(crate) struct Envelope<'a> {
    id: Option<&'a str>,
    msg_id: Option<&'a str>,
    event_type: Option<&'a str>,
    recorded_at: i64,
    stream: Option<Cow<'a, str>>,
    version: Option<u64>,
    position: Option<u64>,
    /// `None`: the event id; `Some(None)`: none.
    correlation: Option<Option<Uuid>>,
    causation: Option<Uuid>,
    headers: BTreeMap<String, String>,
    origin: Option<(Cow<'a, str>, u64)>,
    payload_object: Option<Cow<'a, str>>,
}

impl<'a> Envelope<'a> {
    /// Reads the envelope of a message.
    ///
    /// # Errors
    ///
    /// [`TransportError::Malformed`] when the message has no envelope or
    /// a wrong one.
    pub(crate) fn parse(headers: Option<&'a HeaderMap>) -> Result<Self, TransportError> {
        let headers = headers.ok_or_else(|| malformed("the message has no headers"))?;
        let line = headers
            .get(ENVELOPE_NAME)
            .ok_or_else(|| malformed(format!("header {ENVELOPE} is missing")))?
            .as_str();
        let msg_id = headers.get(MSG_ID_NAME).map(|v| v.as_str());
        let mut fields = line.split(' ');
        match fields.next() {
            Some(ENVELOPE_VERSION) => {}
            Some(other) => {
                return Err(malformed(format!(
                    "header {ENVELOPE} has format version {other:?}; this build reads {ENVELOPE_VERSION}"
                )));
            }
            None => unreachable!("split yields at least one item"),
        }
        let mut envelope = Envelope {
            id: None,
            msg_id,
            event_type: None,
            recorded_at: 0,
            stream: None,
            version: None,
            position: None,
            correlation: None,
            causation: None,
            headers: BTreeMap::new(),
            origin: None,
            payload_object: None,
        };
        let mut recorded_at = None;
        // Keys seen, as bits, to refuse a repeated one.
        let mut seen = 0u32;
        for field in fields {
            let (key, value) = match field.as_bytes() {
                [key @ b'a'..=b'z', b'=', ..] => (char::from(*key), &field[2..]),
                _ => {
                    return Err(malformed(format!(
                        "header {ENVELOPE} has a field that is not `key=value`: {field:?}"
                    )));
                }
            };
            let bit = 1 << (key as u32 - 'a' as u32);
            if key != 'h' && seen & bit != 0 {
                return Err(field_error(key, "is repeated"));
            }
            seen |= bit;
            match key {
                'i' => envelope.id = Some(value),
                'y' => envelope.event_type = Some(value),
                't' => {
                    recorded_at = Some(value.parse::<i64>().map_err(|e| {
                        field_error(key, format_args!("is not a number of microseconds: {e}"))
                    })?);
                }
                's' => envelope.stream = Some(unescape(key, value)?),
                'v' => envelope.version = Some(number(key, value)?),
                'p' => envelope.position = Some(number(key, value)?),
                'c' => {
                    envelope.correlation = Some(match value {
                        "-" => None,
                        id => Some(uuid(key, id)?),
                    });
                }
                'k' => envelope.causation = Some(uuid(key, value)?),
                'h' => {
                    let (name, text) = value
                        .split_once(':')
                        .ok_or_else(|| field_error(key, "is not `key:value`"))?;
                    let name = unescape(key, name)?.into_owned();
                    let text = unescape(key, text)?.into_owned();
                    if envelope.headers.contains_key(&name) {
                        return Err(field_error(key, format_args!("repeats header {name:?}")));
                    }
                    envelope.headers.insert(name, text);
                }
                'o' => {
                    let (stream, version) = value
                        .split_once(':')
                        .ok_or_else(|| field_error(key, "is not `stream:version`"))?;
                    envelope.origin = Some((unescape(key, stream)?, number(key, version)?));
                }
                'x' => envelope.payload_object = Some(unescape(key, value)?),
                _ => return Err(field_error(key, "is not a known field")),
            }
        }
        envelope.recorded_at = recorded_at.ok_or_else(|| field_error('t', "is missing"))?;
        Ok(envelope)
    }

    /// The name of the object holding the payload, when it was too large
    /// for the message.
    pub(crate) fn payload_object(&self) -> Option<&str> {
        self.payload_object.as_deref()
    }

    /// The event, with `payload` as its data and `subject` the message's.
    /// `types` holds the last event type decoded, reused when the next
    /// message has the same one (a name checked and allocated once).
    ///
    /// # Errors
    ///
    /// [`TransportError::Malformed`] when the id or type is missing or
    /// wrong, or the payload is not JSON.
    pub(crate) fn into_event(
        self,
        subject: &str,
        payload: &Bytes,
        types: &mut Option<EventType>,
    ) -> Result<RecordedEvent, TransportError> {
        let id: EventId = match (self.id, self.msg_id) {
            (Some(id), _) => uuid('i', id)?,
            (None, Some(id)) => Uuid::try_parse(id)
                .map_err(|e| malformed(format!("header {MSG_ID} is not a UUID: {e}")))?,
            (None, None) => {
                return Err(malformed(format!(
                    "the event id is missing: no header {MSG_ID}, no field i in header {ENVELOPE}"
                )));
            }
        }
        .into();
        let name = match self.event_type {
            Some(name) => name,
            None => type_of_subject(subject).ok_or_else(|| {
                malformed(format!(
                    "the event type is missing: subject {subject:?} is not an event subject, and header {ENVELOPE} has no field y"
                ))
            })?,
        };
        let event_type = match types {
            Some(last) if last.as_str() == name => last.clone(),
            _ => {
                let event_type = EventType::new(name)
                    .map_err(|e| malformed(format!("the event type {name:?}: {e}")))?;
                *types = Some(event_type.clone());
                event_type
            }
        };
        let recorded_at = DateTime::<Utc>::from_timestamp_micros(self.recorded_at)
            .ok_or_else(|| field_error('t', "is out of range"))?;
        let data = Payload::from_json(payload.clone())
            .map_err(|e| malformed(format!("the payload is not JSON: {e}")))?;
        Ok(RecordedEvent::from_parts(RecordedParts {
            id,
            event_type,
            stream: self.stream.map(|s| Arc::from(&*s)),
            version: self.version,
            position: self.position,
            recorded_at,
            data,
            metadata: Metadata {
                correlation_id: self.correlation.unwrap_or(Some(*id.as_uuid())),
                causation_id: self.causation,
                headers: self.headers,
            },
            origin: self.origin.map(|(stream, version)| herald::Origin {
                stream: Arc::from(&*stream),
                version,
            }),
        }))
    }
}

/// The event type in an event subject, `<prefix>.ev.<type>` (a prefix has
/// no dots).
fn type_of_subject(subject: &str) -> Option<&str> {
    let (_prefix, rest) = subject.split_once('.')?;
    rest.strip_prefix("ev.")
}

/// The event a message carries.
///
/// # Errors
///
/// [`TransportError::Malformed`] when the envelope is missing or wrong,
/// or the payload is not JSON.
pub fn decode_event(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<RecordedEvent, TransportError> {
    Envelope::parse(headers)?.into_event(subject, payload, &mut None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUBJECT: &str = "shop.ev.order.line.added";

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
                stream: "all orders: ü 1%".into(),
                version: 3,
            }),
        })
    }

    fn decode(subject: &str, headers: &HeaderMap, event: &RecordedEvent) -> RecordedEvent {
        decode_event(subject, Some(headers), &event.data().to_bytes()).unwrap()
    }

    fn assert_same(got: &RecordedEvent, sent: &RecordedEvent) {
        assert_eq!(got.id(), sent.id());
        assert_eq!(got.event_type(), sent.event_type());
        assert_eq!(got.stream(), sent.stream());
        assert_eq!(got.version(), sent.version());
        assert_eq!(got.position(), sent.position());
        assert_eq!(
            got.recorded_at().timestamp_micros(),
            sent.recorded_at().timestamp_micros()
        );
        assert_eq!(got.data().as_bytes(), sent.data().as_bytes());
        assert_eq!(got.metadata(), sent.metadata());
        assert_eq!(got.origin, sent.origin);
    }

    /// What travels over the wire: the header block as the server would
    /// hold it, parsed back as the client parses it.
    fn through_the_wire(headers: &HeaderMap) -> HeaderMap {
        let mut block = String::from("NATS/1.0\r\n");
        for (name, values) in headers.iter() {
            for value in values {
                let name: &str = name.as_ref();
                assert!(
                    value.as_str().bytes().all(|b| (0x20..0x7f).contains(&b)),
                    "{name}: {value} is not printable ASCII"
                );
                block.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        let mut back = HeaderMap::new();
        for line in block.lines().skip(1) {
            let (name, value) = line.split_once(':').unwrap();
            back.insert(name, value.trim());
        }
        back
    }

    #[test]
    fn every_field_survives_the_envelope_with_awkward_values() {
        let sent = event(
            "Order 42 | a:b %41 ü 日本\t\r\nend ",
            BTreeMap::from([
                ("tenant".to_owned(), "acme".to_owned()),
                ("odd key: ü=".to_owned(), "line\nbreak\r\n: %".to_owned()),
                (String::new(), String::new()),
                (" ".to_owned(), "-".to_owned()),
            ]),
        );
        let headers = through_the_wire(&event_headers(&sent));
        assert_eq!(
            headers.get(MSG_ID).map(|v| v.as_str().to_owned()),
            Some(sent.id().to_string())
        );
        assert_eq!(headers.iter().count(), 2, "Nats-Msg-Id and Herald only");
        assert_same(&decode(SUBJECT, &headers, &sent), &sent);
    }

    #[test]
    fn absent_optional_fields_stay_absent() {
        let sent = RecordedEvent::from_parts(RecordedParts {
            id: EventId::new(),
            event_type: EventType::new("ping").unwrap(),
            stream: None,
            version: None,
            position: None,
            recorded_at: DateTime::from_timestamp_micros(-1).unwrap(),
            data: Payload::null(),
            metadata: Metadata::default(),
            origin: None,
        });
        let headers = event_headers(&sent);
        let line = headers.get(ENVELOPE).unwrap().as_str().to_owned();
        assert_eq!(line, "1 t=-1 c=-");
        assert_same(&decode("p.ev.ping", &headers, &sent), &sent);
    }

    #[test]
    fn the_usual_event_takes_a_short_line() {
        let id = EventId::new();
        let sent = RecordedEvent::from_parts(RecordedParts {
            id,
            event_type: EventType::new("order.created").unwrap(),
            stream: Some("order-42".into()),
            version: Some(0),
            position: Some(1234),
            recorded_at: DateTime::from_timestamp_micros(1_764_430_000_123_456).unwrap(),
            data: Payload::null(),
            metadata: Metadata {
                // What the bus and the stores set: the event's own id.
                correlation_id: Some(*id.as_uuid()),
                ..Metadata::default()
            },
            origin: None,
        });
        let headers = event_headers(&sent);
        assert_eq!(
            headers.get(ENVELOPE).unwrap().as_str(),
            "1 t=1764430000123456 s=order-42 v=0 p=1234"
        );
        assert_same(&decode("shop.ev.order.created", &headers, &sent), &sent);
    }

    #[test]
    fn a_redelivery_carries_its_id_and_type_in_the_envelope() {
        let sent = event("s", BTreeMap::new());
        let headers = through_the_wire(&headers_of(&sent, Route::Redelivery));
        assert!(headers.get(MSG_ID).is_none());
        assert_same(&decode("shop.rd.billing", &headers, &sent), &sent);
    }

    #[test]
    fn a_payload_object_is_named_in_the_envelope() {
        let sent = event("s", BTreeMap::new());
        let mut headers = event_headers(&sent);
        set_payload_object(&mut headers, "big one: ü");
        let headers = through_the_wire(&headers);
        let envelope = Envelope::parse(Some(&headers)).unwrap();
        assert_eq!(envelope.payload_object(), Some("big one: ü"));
        let got = envelope
            .into_event(SUBJECT, &sent.data().to_bytes(), &mut None)
            .unwrap();
        assert_same(&got, &sent);
    }

    #[test]
    fn a_repeated_event_type_is_reused() {
        let (a, b) = (event("a", BTreeMap::new()), event("b", BTreeMap::new()));
        let mut types = None;
        let decode = |e: &RecordedEvent, types: &mut Option<EventType>| {
            Envelope::parse(Some(&event_headers(e)))
                .unwrap()
                .into_event(SUBJECT, &e.data().to_bytes(), types)
                .unwrap()
        };
        let first = decode(&a, &mut types);
        let second = decode(&b, &mut types);
        assert_eq!(second.event_type(), "order.line.added");
        assert_eq!(first.event_type(), second.event_type());
        let other = decode_event("shop.ev.x", Some(&event_headers(&a)), &a.data().to_bytes());
        assert_eq!(other.unwrap().event_type(), "x");
    }

    fn malformed_reason(subject: &str, envelope: Option<&str>, payload: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, Uuid::from_u128(9).to_string());
        if let Some(line) = envelope {
            headers.insert(ENVELOPE, line);
        }
        match decode_event(
            subject,
            Some(&headers),
            &Bytes::copy_from_slice(payload.as_bytes()),
        ) {
            Err(TransportError::Malformed { reason, .. }) => reason,
            Err(other) => panic!("expected malformed, got {other}"),
            Ok(event) => panic!("expected malformed, got {event:?}"),
        }
    }

    #[test]
    fn a_wrong_envelope_is_malformed_and_says_why() {
        let err = decode_event(SUBJECT, None, &Bytes::from_static(b"{}")).unwrap_err();
        assert!(err.to_string().contains("no headers"), "{err}");
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            (SUBJECT, None, "{}", "header Herald is missing"),
            (SUBJECT, Some("2 t=1"), "{}", "format version \"2\""),
            (SUBJECT, Some("1"), "{}", "field t is missing"),
            (SUBJECT, Some("1 t=x"), "{}", "field t is not a number"),
            (SUBJECT, Some("1 t=1 t=2"), "{}", "field t is repeated"),
            (SUBJECT, Some("1 t=1  v=2"), "{}", "not `key=value`"),
            (SUBJECT, Some("1 t=1 V=2"), "{}", "not `key=value`"),
            (SUBJECT, Some("1 t=1 v=-2"), "{}", "field v is not a number"),
            (
                SUBJECT,
                Some("1 t=1 q=2"),
                "{}",
                "field q is not a known field",
            ),
            (
                SUBJECT,
                Some("1 t=1 s=a%4"),
                "{}",
                "field s has a bad escape",
            ),
            (SUBJECT, Some("1 t=1 s=%C3"), "{}", "field s is not UTF-8"),
            (SUBJECT, Some("1 t=1 c=nope"), "{}", "field c is not a UUID"),
            (
                SUBJECT,
                Some("1 t=1 h=a"),
                "{}",
                "field h is not `key:value`",
            ),
            (
                SUBJECT,
                Some("1 t=1 h=a:1 h=a:2"),
                "{}",
                "repeats header \"a\"",
            ),
            (
                SUBJECT,
                Some("1 t=1 o=a"),
                "{}",
                "field o is not `stream:version`",
            ),
            (SUBJECT, Some("1 t=1 i=x"), "{}", "field i is not a UUID"),
            (
                "shop.rd.x",
                Some("1 t=1"),
                "{}",
                "the event type is missing",
            ),
            (
                SUBJECT,
                Some("1 t=1 y=a..b"),
                "{}",
                "the event type \"a..b\"",
            ),
            (SUBJECT, Some("1 t=1"), "{nope", "the payload is not JSON"),
        ];
        for (subject, line, payload, expected) in cases {
            let reason = malformed_reason(subject, *line, payload);
            assert!(
                reason.contains(expected),
                "{line:?}: {reason:?} does not say {expected:?}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, "not-a-uuid");
        headers.insert(ENVELOPE, "1 t=1");
        let err = decode_event(SUBJECT, Some(&headers), &Bytes::from_static(b"{}")).unwrap_err();
        assert!(err.to_string().contains(MSG_ID), "{err}");
    }
}
