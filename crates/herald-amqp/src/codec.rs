//! Events as AMQP messages: the body is the event's JSON data, the rest is
//! in the message properties and headers.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use herald::{
    AttemptError, DeadLetter, EventId, EventType, Metadata, Origin, Payload, RecordedEvent,
    RecordedParts,
};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use uuid::Uuid;

/// Header names. Kept short and prefixed so that they never collide with
/// an application's own headers or the broker's `x-` headers.
pub(crate) mod header {
    pub(crate) const STREAM: &str = "herald-stream";
    pub(crate) const VERSION: &str = "herald-version";
    pub(crate) const POSITION: &str = "herald-position";
    pub(crate) const RECORDED_AT: &str = "herald-recorded-at";
    pub(crate) const CORRELATION_ID: &str = "herald-correlation-id";
    pub(crate) const CAUSATION_ID: &str = "herald-causation-id";
    /// The metadata's free headers, as a nested table so that their names
    /// cannot clash with the ones above.
    pub(crate) const HEADERS: &str = "herald-headers";
    pub(crate) const ORIGIN_STREAM: &str = "herald-origin-stream";
    pub(crate) const ORIGIN_VERSION: &str = "herald-origin-version";
    pub(crate) const ATTEMPT: &str = "herald-attempt";
    pub(crate) const ERRORS: &str = "herald-errors";
    pub(crate) const DEAD_LETTER_ID: &str = "herald-dead-letter-id";
    pub(crate) const SUBSCRIBER: &str = "herald-subscriber";
    pub(crate) const ATTEMPTS: &str = "herald-attempts";
    pub(crate) const REASON: &str = "herald-reason";
    pub(crate) const FIRST_FAILED_AT: &str = "herald-first-failed-at";
    pub(crate) const LAST_FAILED_AT: &str = "herald-last-failed-at";
}

const CONTENT_TYPE: &str = "application/json";
/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The properties of `event`'s message: id, type, time, persistence, and
/// every other field in headers.
pub(crate) fn properties(event: &RecordedEvent) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(event.id().to_string().into())
        .with_type(short(event.event_type()))
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(u64::try_from(event.recorded_at().timestamp()).unwrap_or(0))
        .with_headers(event_headers(event))
}

/// `properties` with extra headers.
pub(crate) fn properties_with(
    event: &RecordedEvent,
    extra: impl IntoIterator<Item = (&'static str, AMQPValue)>,
) -> BasicProperties {
    let mut headers = event_headers(event);
    for (k, v) in extra {
        headers.insert(k.into(), v);
    }
    properties(event).with_headers(headers)
}

fn event_headers(event: &RecordedEvent) -> FieldTable {
    let mut h = FieldTable::default();
    if let Some(stream) = event.stream() {
        h.insert(header::STREAM.into(), text(stream));
    }
    if let Some(version) = event.version() {
        h.insert(header::VERSION.into(), number(version));
    }
    if let Some(position) = event.position() {
        h.insert(header::POSITION.into(), number(position));
    }
    h.insert(header::RECORDED_AT.into(), time(event.recorded_at()));
    let metadata = event.metadata();
    if let Some(id) = metadata.correlation_id {
        h.insert(header::CORRELATION_ID.into(), text(&id.to_string()));
    }
    if let Some(id) = metadata.causation_id {
        h.insert(header::CAUSATION_ID.into(), text(&id.to_string()));
    }
    if !metadata.headers.is_empty() {
        let mut free = FieldTable::default();
        for (k, v) in &metadata.headers {
            free.insert(short(k), text(v));
        }
        h.insert(header::HEADERS.into(), AMQPValue::FieldTable(free));
    }
    if let Some(origin) = &event.origin {
        h.insert(header::ORIGIN_STREAM.into(), text(&origin.stream));
        h.insert(header::ORIGIN_VERSION.into(), number(origin.version));
    }
    h
}

/// Whether every name `event` puts in a short string fits (255 bytes).
pub(crate) fn check_short_strings(event: &RecordedEvent) -> Result<(), String> {
    if event.event_type().len() > 255 {
        return Err(format!(
            "event type {:?} is longer than 255 bytes",
            event.event_type()
        ));
    }
    if let Some(k) = event.metadata().headers.keys().find(|k| k.len() > 255) {
        return Err(format!("header name {k:?} is longer than 255 bytes"));
    }
    Ok(())
}

/// A short string; callers checked the length (see
/// [`check_short_strings`]), and an over-long one is cut rather than
/// panicking.
fn short(s: &str) -> ShortString {
    ShortString::try_new(s).unwrap_or_else(|_| {
        let mut end = 255;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        ShortString::from(&s[..end])
    })
}

pub(crate) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Versions and positions are `u64`; AMQP's signed 64-bit integer holds
/// every value a store hands out, and the text form the rest.
pub(crate) fn number(n: u64) -> AMQPValue {
    match i64::try_from(n) {
        Ok(n) => AMQPValue::LongLongInt(n),
        Err(_) => text(&n.to_string()),
    }
}

/// RFC 3339 with as many fraction digits as the time has, so the round
/// trip is exact (microseconds and below).
pub(crate) fn time(t: DateTime<Utc>) -> AMQPValue {
    text(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Reading a message back.
pub(crate) struct Fields<'a> {
    headers: Option<&'a BTreeMap<ShortString, AMQPValue>>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(props: &'a BasicProperties) -> Self {
        Self {
            headers: props.headers().as_ref().map(FieldTable::inner),
        }
    }

    fn get(&self, name: &str) -> Option<&'a AMQPValue> {
        self.headers.and_then(|h| h.get(name))
    }

    pub(crate) fn text(&self, name: &str) -> Result<Option<String>, String> {
        match self.get(name) {
            None | Some(AMQPValue::Void) => Ok(None),
            Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec())
                .map(Some)
                .map_err(|_| format!("header {name} is not UTF-8")),
            Some(AMQPValue::ShortString(s)) => Ok(Some(s.as_str().to_owned())),
            Some(other) => Err(format!("header {name} is not text: {other:?}")),
        }
    }

    pub(crate) fn number(&self, name: &str) -> Result<Option<u64>, String> {
        let bad = || format!("header {name} is not a non-negative integer");
        let n = match self.get(name) {
            None | Some(AMQPValue::Void) => return Ok(None),
            Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).map_err(|_| bad())?,
            Some(AMQPValue::LongInt(n)) => u64::try_from(*n).map_err(|_| bad())?,
            Some(AMQPValue::LongUInt(n)) => u64::from(*n),
            Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).map_err(|_| bad())?,
            Some(AMQPValue::ShortUInt(n)) => u64::from(*n),
            Some(AMQPValue::ShortShortInt(n)) => u64::try_from(*n).map_err(|_| bad())?,
            Some(AMQPValue::ShortShortUInt(n)) => u64::from(*n),
            Some(AMQPValue::Timestamp(n)) => *n,
            Some(_) => self
                .text(name)?
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)?,
        };
        Ok(Some(n))
    }

    pub(crate) fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, String> {
        self.text(name)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("header {name} is not an RFC 3339 time: {e}"))
            })
            .transpose()
    }

    fn uuid(&self, name: &str) -> Result<Option<Uuid>, String> {
        self.text(name)?
            .map(|s| Uuid::parse_str(&s).map_err(|e| format!("header {name}: {e}")))
            .transpose()
    }

    /// The attempt a delivery is: 1 unless a retry said otherwise.
    pub(crate) fn attempt(&self) -> u32 {
        self.number(header::ATTEMPT)
            .ok()
            .flatten()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
            .max(1)
    }

    /// The errors of earlier attempts a message carries.
    pub(crate) fn errors(&self) -> Result<Vec<AttemptError>, String> {
        match self.text(header::ERRORS)? {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| format!("header {} is not a list of errors: {e}", header::ERRORS)),
        }
    }

    fn free_headers(&self) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        match self.get(header::HEADERS) {
            None | Some(AMQPValue::Void) => {}
            Some(AMQPValue::FieldTable(t)) => {
                for (k, v) in t.inner() {
                    let v = match v {
                        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec())
                            .map_err(|_| format!("header {k} is not UTF-8"))?,
                        AMQPValue::ShortString(s) => s.as_str().to_owned(),
                        other => return Err(format!("header {k} is not text: {other:?}")),
                    };
                    out.insert(k.as_str().to_owned(), v);
                }
            }
            Some(other) => {
                return Err(format!(
                    "header {} is not a table: {other:?}",
                    header::HEADERS
                ));
            }
        }
        Ok(out)
    }
}

/// The event a message carries.
pub(crate) fn decode(props: &BasicProperties, body: Vec<u8>) -> Result<RecordedEvent, String> {
    let fields = Fields::new(props);
    let id: EventId = props
        .message_id()
        .as_ref()
        .ok_or("no message_id")?
        .as_str()
        .parse()
        .map_err(|e| format!("message_id is not an event id: {e}"))?;
    let event_type = props.kind().as_ref().ok_or("no type")?;
    let event_type = EventType::new(event_type.as_str()).map_err(|e| e.to_string())?;
    let recorded_at = match fields.time(header::RECORDED_AT)? {
        Some(t) => t,
        None => props
            .timestamp()
            .and_then(|s| DateTime::from_timestamp(i64::try_from(s).ok()?, 0))
            .ok_or("no recording time")?,
    };
    let data = Payload::from_json(body).map_err(|e| e.to_string())?;
    let origin = match (
        fields.text(header::ORIGIN_STREAM)?,
        fields.number(header::ORIGIN_VERSION)?,
    ) {
        (Some(stream), Some(version)) => Some(Origin {
            stream: Arc::from(stream),
            version,
        }),
        _ => None,
    };
    Ok(RecordedEvent::from_parts(RecordedParts {
        id,
        event_type,
        stream: fields.text(header::STREAM)?.map(Arc::from),
        version: fields.number(header::VERSION)?,
        position: fields.number(header::POSITION)?,
        recorded_at,
        data,
        metadata: Metadata {
            correlation_id: fields.uuid(header::CORRELATION_ID)?,
            causation_id: fields.uuid(header::CAUSATION_ID)?,
            headers: fields.free_headers()?,
        },
        origin,
    }))
}

/// The headers a dead letter adds to its event's message.
pub(crate) fn dead_letter_headers(letter: &DeadLetter) -> Vec<(&'static str, AMQPValue)> {
    let errors = serde_json::to_string(&letter.errors).unwrap_or_else(|_| "[]".into());
    vec![
        (header::DEAD_LETTER_ID, text(&letter.id.to_string())),
        (header::SUBSCRIBER, text(&letter.subscriber)),
        (header::ATTEMPTS, number(u64::from(letter.attempts))),
        (header::REASON, text(&letter.reason)),
        (header::ERRORS, text(&errors)),
        (header::FIRST_FAILED_AT, time(letter.first_failed_at)),
        (header::LAST_FAILED_AT, time(letter.last_failed_at)),
    ]
}

/// The dead letter a message of the dead-letter queue holds.
pub(crate) fn decode_dead_letter(
    props: &BasicProperties,
    body: Vec<u8>,
) -> Result<DeadLetter, String> {
    let fields = Fields::new(props);
    let missing = |name: &str| format!("dead letter without header {name}");
    let id = fields
        .uuid(header::DEAD_LETTER_ID)?
        .ok_or_else(|| missing(header::DEAD_LETTER_ID))?;
    let subscriber = fields
        .text(header::SUBSCRIBER)?
        .ok_or_else(|| missing(header::SUBSCRIBER))?;
    let attempts = fields
        .number(header::ATTEMPTS)?
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| missing(header::ATTEMPTS))?;
    let reason = fields.text(header::REASON)?.unwrap_or_default();
    let errors = fields.errors()?;
    let first_failed_at = fields
        .time(header::FIRST_FAILED_AT)?
        .ok_or_else(|| missing(header::FIRST_FAILED_AT))?;
    let last_failed_at = fields
        .time(header::LAST_FAILED_AT)?
        .ok_or_else(|| missing(header::LAST_FAILED_AT))?;
    Ok(DeadLetter {
        id,
        subscriber,
        event: decode(props, body)?,
        attempts,
        reason,
        errors,
        first_failed_at,
        last_failed_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_every_field_of_an_event() {
        let event = RecordedEvent::from_parts(RecordedParts {
            id: EventId::new(),
            event_type: EventType::new("order.created").unwrap(),
            stream: Some("order-1".into()),
            version: Some(u64::MAX),
            position: Some(7),
            recorded_at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789Z")
                .unwrap()
                .with_timezone(&Utc),
            data: Payload::from(json!({"a": "é"})),
            metadata: Metadata {
                correlation_id: Some(Uuid::from_u128(1)),
                causation_id: Some(Uuid::from_u128(2)),
                headers: BTreeMap::from([("herald-stream".into(), "not ours".into())]),
            },
            origin: Some(Origin {
                stream: "orders".into(),
                version: 3,
            }),
        });
        let props = properties(&event);
        let back = decode(&props, event.data().as_bytes().to_vec()).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn reads_the_attempt_and_errors_of_a_retry() {
        let event = RecordedEvent::from_parts(RecordedParts {
            id: EventId::new(),
            event_type: EventType::new("a.b").unwrap(),
            stream: None,
            version: None,
            position: None,
            recorded_at: Utc::now(),
            data: Payload::null(),
            metadata: Metadata::default(),
            origin: None,
        });
        assert_eq!(Fields::new(&properties(&event)).attempt(), 1);
        let errors = vec![AttemptError {
            attempt: 1,
            message: "boom".into(),
            kind: herald::ErrorKind::Handler,
            at: Utc::now(),
        }];
        let props = properties_with(
            &event,
            [
                (header::ATTEMPT, number(2)),
                (
                    header::ERRORS,
                    text(&serde_json::to_string(&errors).unwrap()),
                ),
            ],
        );
        let fields = Fields::new(&props);
        assert_eq!(fields.attempt(), 2);
        assert_eq!(fields.errors().unwrap(), errors);
    }
}
