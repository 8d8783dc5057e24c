//! Events: payloads, metadata, events to publish and recorded events.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::id::EventId;
use crate::topic::EventType;

/// A typed event: a serde type with a fixed event type name.
///
/// Derive it with `#[derive(Event)]` and `#[event(name = "...")]`; the name is
/// checked at compile time.
///
/// # Examples
///
/// ```
/// use herald::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Event)]
/// #[event(name = "order.created")]
/// struct OrderCreated {
///     order_id: u64,
/// }
///
/// assert_eq!(OrderCreated::NAME, "order.created");
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The event type name, such as `order.created`.
    const NAME: &'static str;
}

/// An event payload: JSON text, validated once and shared.
///
/// A payload is serialized once, when it is made, and then shared by every
/// subscriber, store and transport (cloning it bumps a reference count).
/// Subscribers read it as a [`Value`] or deserialize it into their own type.
///
/// # Examples
///
/// ```
/// use herald::Payload;
/// use serde_json::json;
///
/// let payload = Payload::from(json!({"order_id": 42}));
/// assert_eq!(payload.as_str(), r#"{"order_id":42}"#);
/// assert_eq!(payload.to_value()["order_id"], 42);
///
/// let err = Payload::from_json(&b"{not json"[..]).unwrap_err();
/// assert!(err.to_string().contains("not valid json"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload(Bytes);

/// A payload that is not valid JSON, or could not be serialized.
#[derive(Debug, thiserror::Error)]
#[error("payload is not valid json: {source}")]
pub struct PayloadError {
    #[source]
    source: serde_json::Error,
}

impl Payload {
    /// The JSON `null` payload.
    pub fn null() -> Self {
        Self(Bytes::from_static(b"null"))
    }

    /// Takes JSON text, checking that it is valid JSON.
    ///
    /// # Errors
    ///
    /// [`PayloadError`] when the text is not one valid JSON value.
    pub fn from_json(json: impl Into<Bytes>) -> Result<Self, PayloadError> {
        let bytes = json.into();
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .map_err(|source| PayloadError { source })?;
        Ok(Self(bytes))
    }

    /// Serializes a value into a payload.
    ///
    /// # Errors
    ///
    /// [`PayloadError`] when the value cannot be serialized to JSON (a map
    /// with non-string keys, say).
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, PayloadError> {
        serde_json::to_vec(value)
            .map(|v| Self(Bytes::from(v)))
            .map_err(|source| PayloadError { source })
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Every constructor checks or produces valid JSON, which is UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The JSON text as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text as shared bytes, for stores and transports.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the JSON text is empty (never true for a valid payload).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the payload into a [`Value`].
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.0).unwrap_or(Value::Null)
    }

    /// Deserializes the payload into `T`.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] naming the target type and the path of the field that
    /// did not fit, such as `total: invalid type: string "x", expected u64`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let mut de = serde_json::Deserializer::from_slice(&self.0);
        serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            DecodeError {
                type_name: std::any::type_name::<T>(),
                path: if path == "." { None } else { Some(path) },
                source: err.into_inner(),
            }
        })
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::null()
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

impl From<&Value> for Payload {
    fn from(value: &Value) -> Self {
        // A `Value` always serializes: its map keys are strings.
        Self(Bytes::from(serde_json::to_vec(value).unwrap_or_default()))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue =
            serde_json::from_str(self.as_str()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Self(Bytes::from(String::from(Box::<str>::from(raw)))))
    }
}

/// A payload that did not deserialize into the type a handler asked for.
///
/// The message names the type and the field:
/// `cannot decode payload into app::OrderCreated at total: invalid type: ...`.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot decode payload into {type_name}{}: {source}",
    path.as_ref().map(|p| format!(" at {p}")).unwrap_or_default()
)]
pub struct DecodeError {
    type_name: &'static str,
    path: Option<String>,
    #[source]
    source: serde_json::Error,
}

impl DecodeError {
    /// The Rust type the payload was decoded into.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The path of the field that failed (`items[2].sku`), if any.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

/// Metadata that travels with an event.
///
/// `correlation_id` ties together every event caused, directly or not, by one
/// original event or request; `causation_id` is the id of the event that
/// directly caused this one. Herald fills both for follow-up events published
/// through a handler's [`Context`](crate::Context), and sets the correlation id
/// of an event published without one to the event's own id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Id shared by every event of one conversation or workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// Id of the event that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Free headers (tenant, user, trace context, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// An event to publish: a type name, a payload and optional metadata.
///
/// # Examples
///
/// ```
/// use herald::NewEvent;
/// use serde_json::json;
///
/// let event = NewEvent::new("order.created", json!({"order_id": 42}))
///     .with_header("tenant", "acme");
/// assert_eq!(event.event_type(), "order.created");
/// ```
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub(crate) id: Option<EventId>,
    pub(crate) stream: Option<String>,
    pub(crate) event_type: Cow<'static, str>,
    pub(crate) data: Payload,
    pub(crate) metadata: Metadata,
}

impl NewEvent {
    /// An event of type `event_type` with a payload.
    pub fn new(event_type: impl Into<Cow<'static, str>>, data: impl Into<Payload>) -> Self {
        Self {
            id: None,
            stream: None,
            event_type: event_type.into(),
            data: data.into(),
            metadata: Metadata::default(),
        }
    }

    /// An event from a typed [`Event`].
    ///
    /// # Errors
    ///
    /// [`PayloadError`] when the value does not serialize to JSON.
    pub fn from_event<E: Event>(event: &E) -> Result<Self, PayloadError> {
        Ok(Self::new(E::NAME, Payload::from_serialize(event)?))
    }

    /// Uses a given id instead of a new one (to make a re-publish
    /// recognisable as the same event).
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = Some(id);
        self
    }

    /// Publishes into this stream, on a bus built on a store (the bus
    /// otherwise uses the stream named after the event type).
    pub fn in_stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// The stream given with [`in_stream`](Self::in_stream), if any.
    pub fn stream(&self) -> Option<&str> {
        self.stream.as_deref()
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.metadata.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.metadata.causation_id = Some(id);
        self
    }

    /// Adds a free header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.headers.insert(key.into(), value.into());
        self
    }

    /// The event type name (not yet validated).
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The payload.
    pub fn data(&self) -> &Payload {
        &self.data
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The id given with [`with_id`](Self::with_id), if any.
    pub fn id(&self) -> Option<EventId> {
        self.id
    }
}

/// The fields of a [`RecordedEvent`], for stores and transports that build
/// recorded events from what they read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedParts {
    /// Event id.
    pub id: EventId,
    /// Event type name.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Stream the event belongs to; `None` for events that were only
    /// published in process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Arc<str>>,
    /// Version of the event in its stream (0 for the first event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Position in the store's global log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// When the event was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The payload.
    pub data: Payload,
    /// The metadata.
    #[serde(default)]
    pub metadata: Metadata,
    /// For an event read through a link: the stream and version it was
    /// first appended at (`stream` and `version` are then those of the
    /// stream read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Where a linked event was first appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Its original stream.
    pub stream: Arc<str>,
    /// Its version there.
    pub version: u64,
}

/// An event as recorded: id, type, stream, position, time, payload and
/// metadata.
///
/// Cloning is cheap (one reference count), so the same recorded event is
/// shared by every subscriber.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herald::Bus;
/// use serde_json::json;
///
/// let bus = Bus::new();
/// let event = bus.publish("order.created", json!({"order_id": 42})).await.unwrap();
/// assert_eq!(event.event_type(), "order.created");
/// assert_eq!(event.data().to_value()["order_id"], 42);
/// assert_eq!(event.correlation_id(), *event.id().as_uuid());
/// # }
/// ```
#[derive(Clone, PartialEq)]
pub struct RecordedEvent(Arc<RecordedParts>);

impl RecordedEvent {
    /// Builds a recorded event from its parts.
    pub fn from_parts(parts: RecordedParts) -> Self {
        Self(Arc::new(parts))
    }

    /// The parts, cloned if the event is shared.
    pub fn into_parts(self) -> RecordedParts {
        Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The event id.
    pub fn id(&self) -> EventId {
        self.0.id
    }

    /// The event type name.
    pub fn event_type(&self) -> &str {
        self.0.event_type.as_str()
    }

    /// The event type, validated.
    pub fn event_type_name(&self) -> &EventType {
        &self.0.event_type
    }

    /// The stream, if the event was stored in one.
    pub fn stream(&self) -> Option<&str> {
        self.0.stream.as_deref()
    }

    /// The version of the event in its stream.
    pub fn version(&self) -> Option<u64> {
        self.0.version
    }

    /// The position in the global log of the store.
    pub fn position(&self) -> Option<u64> {
        self.0.position
    }

    /// When the event was recorded.
    pub fn recorded_at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }

    /// The payload.
    pub fn data(&self) -> &Payload {
        &self.0.data
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.0.metadata
    }

    /// The correlation id: the metadata's, or the event's own id.
    pub fn correlation_id(&self) -> Uuid {
        self.0
            .metadata
            .correlation_id
            .unwrap_or(*self.0.id.as_uuid())
    }

    /// The causation id, if another event caused this one.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.0.metadata.causation_id
    }

    /// Deserializes the payload into `T`.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] naming the type and the field that did not fit.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        self.0.data.decode()
    }
}

impl Deref for RecordedEvent {
    type Target = RecordedParts;

    fn deref(&self) -> &RecordedParts {
        &self.0
    }
}

impl fmt::Debug for RecordedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for RecordedEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RecordedEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RecordedParts::deserialize(deserializer).map(Self::from_parts)
    }
}

/// A typed event together with the recorded event it was decoded from, as
/// given to [`typed`](crate::typed) handlers.
#[derive(Clone, Debug)]
pub struct Typed<E> {
    event: E,
    record: RecordedEvent,
}

impl<E> Typed<E> {
    pub(crate) fn new(event: E, record: RecordedEvent) -> Self {
        Self { event, record }
    }

    /// The recorded event (id, metadata, time, …).
    pub fn record(&self) -> &RecordedEvent {
        &self.record
    }

    /// The decoded event.
    pub fn into_inner(self) -> E {
        self.event
    }
}

impl<E> Deref for Typed<E> {
    type Target = E;

    fn deref(&self) -> &E {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Order {
        order_id: u64,
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        sku: String,
    }

    #[test]
    fn decode_error_names_type_and_field() {
        let p = Payload::from(json!({"order_id": 1, "items": [{"sku": "a"}, {"sku": 7}]}));
        let err = p.decode::<Order>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("Order"), "{msg}");
        assert!(msg.contains("items[1].sku"), "{msg}");
        assert_eq!(err.path(), Some("items[1].sku"));

        let err = Payload::from(json!({"items": []}))
            .decode::<Order>()
            .unwrap_err();
        assert!(
            err.to_string().contains("missing field `order_id`"),
            "{err}"
        );
    }

    #[test]
    fn payload_round_trips_through_serde_as_embedded_json() {
        let p = Payload::from(json!({"a": [1, 2]}));
        let s = serde_json::to_string(&json!({"x": 1})).unwrap();
        assert_eq!(s, r#"{"x":1}"#);
        let wrapped = serde_json::to_string(&vec![p.clone()]).unwrap();
        assert_eq!(wrapped, r#"[{"a":[1,2]}]"#);
        let back: Vec<Payload> = serde_json::from_str(&wrapped).unwrap();
        assert_eq!(back[0], p);
    }

    #[test]
    fn invalid_json_is_rejected() {
        assert!(Payload::from_json(&b"{\"a\":"[..]).is_err());
        assert!(Payload::from_json(&b"1 2"[..]).is_err());
        assert!(Payload::from_json(&b" [1] "[..]).is_ok());
    }
}
