//! Topic names, subscription patterns and the message format.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use herald::transport::TransportError;
use herald::{AttemptError, EventId, EventType, Metadata, Payload, RecordedEvent, TopicPattern};
use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::NAME;
use crate::config::TopicMapping;

/// Kafka's limit on topic names.
const MAX_TOPIC: usize = 249;

pub(crate) const ID: &str = "herald-id";
pub(crate) const TYPE: &str = "herald-type";
pub(crate) const STREAM: &str = "herald-stream";
pub(crate) const VERSION: &str = "herald-version";
pub(crate) const POSITION: &str = "herald-position";
pub(crate) const RECORDED_AT: &str = "herald-recorded-at";
pub(crate) const CORRELATION: &str = "herald-correlation-id";
pub(crate) const CAUSATION: &str = "herald-causation-id";
pub(crate) const ORIGIN: &str = "herald-origin";
/// Prefix of the event's own metadata headers.
pub(crate) const META: &str = "herald-meta-";
pub(crate) const ATTEMPT: &str = "herald-attempt";
pub(crate) const NOT_BEFORE: &str = "herald-not-before";
pub(crate) const ERRORS: &str = "herald-errors";
pub(crate) const SUBSCRIBER: &str = "herald-subscriber";
pub(crate) const ATTEMPTS: &str = "herald-attempts";
pub(crate) const LAST_ERROR: &str = "herald-last-error";

/// The names a transport gives to its topics and groups.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    pub(crate) prefix: String,
    pub(crate) mapping: TopicMapping,
}

impl Names {
    /// The topic that carries events of `event_type`.
    pub(crate) fn event_topic(&self, event_type: &str) -> String {
        match self.mapping {
            TopicMapping::PerType => format!("{}.{event_type}", self.prefix),
            TopicMapping::PerCategory => {
                let category = event_type.split('.').next().unwrap_or(event_type);
                format!("{}.{category}", self.prefix)
            }
            TopicMapping::Single => format!("{}.events", self.prefix),
        }
    }

    /// The retry topic of a subscriber. Outside `<prefix>.`, so that no
    /// event pattern (`#` included) ever matches it.
    pub(crate) fn retry_topic(&self, subscriber: &str) -> Result<String, TransportError> {
        check_name(subscriber)?;
        let topic = format!("{}-retry.{subscriber}", self.prefix);
        if topic.len() > MAX_TOPIC {
            return Err(invalid(
                subscriber,
                "the retry topic name would be too long",
            ));
        }
        Ok(topic)
    }

    /// The dead-letter topic.
    pub(crate) fn dead_letter_topic(&self) -> String {
        format!("{}-dlq", self.prefix)
    }

    /// The consumer group of a subscriber.
    pub(crate) fn group(&self, subscriber: &str) -> String {
        format!("{}.{subscriber}", self.prefix)
    }

    /// The regular expressions (librdkafka's `^…` subscriptions) of the
    /// topics that carry events matching `pattern`.
    pub(crate) fn pattern_regex(&self, pattern: &TopicPattern) -> String {
        let text = pattern.to_string();
        let mut regex = format!("^{}", escape(&self.prefix));
        match self.mapping {
            TopicMapping::PerType => {
                for segment in text.split('.') {
                    match segment {
                        "#" => regex.push_str(r"(\.[^.]+)*"),
                        "*" => regex.push_str(r"\.[^.]+"),
                        literal => {
                            regex.push_str(r"\.");
                            regex.push_str(&escape(literal));
                        }
                    }
                }
            }
            TopicMapping::Single => regex.push_str(r"\.events"),
            TopicMapping::PerCategory => match text.split('.').next().unwrap_or("#") {
                "#" | "*" => regex.push_str(r"\.[^.]+"),
                literal => {
                    regex.push_str(r"\.");
                    regex.push_str(&escape(literal));
                }
            },
        }
        regex.push('$');
        regex
    }

    /// The exact regular expression of one topic.
    pub(crate) fn exact_regex(topic: &str) -> String {
        format!("^{}$", escape(topic))
    }
}

fn escape(literal: &str) -> String {
    literal.replace('.', r"\.")
}

fn invalid(name: &str, reason: &str) -> TransportError {
    TransportError::InvalidName {
        transport: NAME,
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Subscriber names become parts of topic and group names.
pub(crate) fn check_name(subscriber: &str) -> Result<(), TransportError> {
    if subscriber.is_empty() {
        return Err(invalid(subscriber, "a consumer group needs a name"));
    }
    if !subscriber
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            subscriber,
            "Kafka names take ASCII letters, digits, '.', '_' and '-' only",
        ));
    }
    Ok(())
}

/// The message key: the stream, so that one stream's events share a
/// partition and keep their order; the event id when there is none.
pub(crate) fn key(event: &RecordedEvent) -> String {
    match event.stream() {
        Some(stream) => stream.to_owned(),
        None => event.id().to_string(),
    }
}

/// The headers that carry everything of an event but its payload.
pub(crate) fn event_headers(event: &RecordedEvent) -> OwnedHeaders {
    let mut pairs: Vec<(String, String)> = vec![
        (ID.into(), event.id().to_string()),
        (TYPE.into(), event.event_type().to_owned()),
        (
            RECORDED_AT.into(),
            event.recorded_at().timestamp_micros().to_string(),
        ),
    ];
    if let Some(stream) = event.stream() {
        pairs.push((STREAM.into(), stream.to_owned()));
    }
    if let Some(version) = event.version() {
        pairs.push((VERSION.into(), version.to_string()));
    }
    if let Some(position) = event.position() {
        pairs.push((POSITION.into(), position.to_string()));
    }
    let metadata = event.metadata();
    if let Some(id) = metadata.correlation_id {
        pairs.push((CORRELATION.into(), id.to_string()));
    }
    if let Some(id) = metadata.causation_id {
        pairs.push((CAUSATION.into(), id.to_string()));
    }
    for (key, value) in &metadata.headers {
        pairs.push((format!("{META}{key}"), value.clone()));
    }
    let parts = event.clone().into_parts();
    if let Some(origin) = &parts.origin {
        if let Ok(json) = serde_json::to_string(origin) {
            pairs.push((ORIGIN.into(), json));
        }
    }
    append(OwnedHeaders::new_with_capacity(pairs.len() + 4), &pairs)
}

/// Adds string headers.
pub(crate) fn append(mut headers: OwnedHeaders, pairs: &[(String, String)]) -> OwnedHeaders {
    for (key, value) in pairs {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    headers
}

/// The headers of a received message, as text (the last of duplicates).
pub(crate) fn header_map<H: Headers>(headers: Option<&H>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if let Some(headers) = headers {
        for header in headers.iter() {
            if let Some(value) = header.value {
                map.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                );
            }
        }
    }
    map
}

/// What a message carries besides its event.
#[derive(Debug, Default)]
pub(crate) struct Envelope {
    pub(crate) attempt: u32,
    pub(crate) errors: Vec<AttemptError>,
    /// For a retry: not to be handed out before this time.
    pub(crate) not_before: Option<DateTime<Utc>>,
}

fn malformed(reason: impl Into<String>) -> TransportError {
    TransportError::Malformed {
        transport: NAME,
        reason: reason.into(),
    }
}

fn parse<T: std::str::FromStr>(
    headers: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<T>, TransportError> {
    headers
        .get(name)
        .map(|v| {
            v.parse()
                .map_err(|_| malformed(format!("header {name} has a bad value {v:?}")))
        })
        .transpose()
}

/// Decodes a message into the event, its attempt and its errors.
pub(crate) fn decode(
    headers: &BTreeMap<String, String>,
    payload: Option<&[u8]>,
) -> Result<(RecordedEvent, Envelope), TransportError> {
    let id: EventId = parse(headers, ID)?.ok_or_else(|| malformed("no herald-id header"))?;
    let event_type = headers
        .get(TYPE)
        .ok_or_else(|| malformed(format!("event {id} has no herald-type header")))?;
    let event_type = EventType::new(event_type)
        .map_err(|e| malformed(format!("event {id} has a bad type: {e}")))?;
    let micros: i64 = parse(headers, RECORDED_AT)?
        .ok_or_else(|| malformed(format!("event {id} has no herald-recorded-at header")))?;
    let recorded_at = DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| malformed(format!("event {id} has a time out of range")))?;
    let data = match payload {
        None => Payload::null(),
        Some(bytes) => Payload::from_json(bytes.to_vec())
            .map_err(|e| malformed(format!("event {id} carries no JSON: {e}")))?,
    };
    let metadata = Metadata {
        correlation_id: parse(headers, CORRELATION)?,
        causation_id: parse(headers, CAUSATION)?,
        headers: headers
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(META).map(|k| (k.to_owned(), v.clone())))
            .collect(),
    };
    let origin = headers
        .get(ORIGIN)
        .map(|json| serde_json::from_str(json))
        .transpose()
        .map_err(|e| malformed(format!("event {id} has a bad origin: {e}")))?;
    let event = RecordedEvent::from_parts(herald::RecordedParts {
        id,
        event_type,
        stream: headers.get(STREAM).map(|s| Arc::from(s.as_str())),
        version: parse(headers, VERSION)?,
        position: parse(headers, POSITION)?,
        recorded_at,
        data,
        metadata,
        origin,
    });
    let errors = headers
        .get(ERRORS)
        .map(|json| serde_json::from_str(json))
        .transpose()
        .map_err(|e| malformed(format!("event {id} has bad errors: {e}")))?
        .unwrap_or_default();
    let not_before = parse::<i64>(headers, NOT_BEFORE)?
        .map(|ms| {
            DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| malformed(format!("event {id} has a not-before out of range")))
        })
        .transpose()?;
    let envelope = Envelope {
        attempt: parse(headers, ATTEMPT)?.unwrap_or(1),
        errors,
        not_before,
    };
    Ok((event, envelope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::OwnedHeaders;

    fn names(mapping: TopicMapping) -> Names {
        Names {
            prefix: "app".into(),
            mapping,
        }
    }

    fn pattern(p: &str) -> TopicPattern {
        TopicPattern::parse(p).unwrap()
    }

    #[test]
    fn maps_each_type_to_its_own_topic_or_its_categorys() {
        let per_type = names(TopicMapping::PerType);
        assert_eq!(
            per_type.event_topic("order.line.added"),
            "app.order.line.added"
        );
        let per_category = names(TopicMapping::PerCategory);
        assert_eq!(per_category.event_topic("order.line.added"), "app.order");
        assert_eq!(per_category.event_topic("order"), "app.order");
        assert_eq!(
            per_type.retry_topic("billing").unwrap(),
            "app-retry.billing"
        );
        assert_eq!(per_type.dead_letter_topic(), "app-dlq");
        assert_eq!(per_type.group("billing"), "app.billing");
    }

    #[test]
    fn turns_patterns_into_topic_regexes() {
        let per_type = names(TopicMapping::PerType);
        assert_eq!(
            per_type.pattern_regex(&pattern("order.*")),
            r"^app\.order\.[^.]+$"
        );
        assert_eq!(
            per_type.pattern_regex(&pattern("order.#")),
            r"^app\.order(\.[^.]+)*$"
        );
        assert_eq!(per_type.pattern_regex(&pattern("#")), r"^app(\.[^.]+)*$");
        assert_eq!(
            per_type.pattern_regex(&pattern("order.created")),
            r"^app\.order\.created$"
        );
        let per_category = names(TopicMapping::PerCategory);
        assert_eq!(
            per_category.pattern_regex(&pattern("order.*")),
            r"^app\.order$"
        );
        assert_eq!(per_category.pattern_regex(&pattern("#")), r"^app\.[^.]+$");
        assert_eq!(Names::exact_regex("app-retry.x.y"), r"^app-retry\.x\.y$");
        let single = names(TopicMapping::Single);
        assert_eq!(single.event_topic("order.line.added"), "app.events");
        assert_eq!(single.pattern_regex(&pattern("order.*")), r"^app\.events$");
    }

    #[test]
    fn refuses_subscriber_names_kafka_cannot_take() {
        let n = names(TopicMapping::PerType);
        assert!(matches!(
            n.retry_topic("billing team"),
            Err(TransportError::InvalidName { .. })
        ));
        assert!(n.retry_topic("").is_err());
        assert!(n.retry_topic(&"x".repeat(300)).is_err());
    }

    fn to_map(headers: &OwnedHeaders) -> BTreeMap<String, String> {
        header_map(Some(headers))
    }

    #[test]
    fn round_trips_every_field_through_headers() {
        let event = RecordedEvent::from_parts(herald::RecordedParts {
            id: EventId::new(),
            event_type: EventType::new("order.created").unwrap(),
            stream: Some("order-1".into()),
            version: Some(4),
            position: Some(99),
            recorded_at: Utc::now(),
            data: Payload::from(serde_json::json!({"a": "ü"})),
            metadata: Metadata {
                correlation_id: Some(uuid::Uuid::from_u128(7)),
                causation_id: Some(uuid::Uuid::from_u128(8)),
                headers: BTreeMap::from([("tenant".into(), "acme".into())]),
            },
            origin: Some(herald::Origin {
                stream: "cart-1".into(),
                version: 2,
            }),
        });
        let headers = to_map(&event_headers(&event));
        let (back, envelope) = decode(&headers, Some(event.data().as_bytes())).unwrap();
        assert_eq!(back.id(), event.id());
        assert_eq!(back.event_type(), "order.created");
        assert_eq!(back.stream(), Some("order-1"));
        assert_eq!(back.version(), Some(4));
        assert_eq!(back.position(), Some(99));
        assert_eq!(
            back.recorded_at().timestamp_micros(),
            event.recorded_at().timestamp_micros()
        );
        assert_eq!(back.metadata(), event.metadata());
        assert_eq!(back.data().to_value(), event.data().to_value());
        assert_eq!(
            back.clone().into_parts().origin,
            event.clone().into_parts().origin
        );
        assert_eq!(envelope.attempt, 1);
        assert!(envelope.errors.is_empty() && envelope.not_before.is_none());
        assert_eq!(key(&event), "order-1");
    }

    #[test]
    fn reports_what_is_wrong_with_a_foreign_message() {
        let err = decode(&BTreeMap::new(), Some(b"{}")).unwrap_err();
        assert!(err.to_string().contains("herald-id"), "{err}");
        let mut headers = BTreeMap::new();
        headers.insert(ID.to_owned(), EventId::new().to_string());
        headers.insert(TYPE.to_owned(), "a.b".to_owned());
        headers.insert(RECORDED_AT.to_owned(), "soon".to_owned());
        let err = decode(&headers, None).unwrap_err();
        assert!(matches!(err, TransportError::Malformed { .. }), "{err}");
    }
}
