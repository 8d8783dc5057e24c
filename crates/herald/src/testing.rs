//! Helpers for testing code that publishes events.
//!
//! A [`Recorder`] captures every event published on a bus, so a test can
//! assert that `order.created` was published once with a given payload, as
//! RailsEventStore's `have_published` matcher does.
//!
//! # Examples
//!
//! ```
//! use herald::testing::Recorder;
//! use herald::Bus;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bus = Bus::new();
//! let recorder = Recorder::attach(&bus);
//!
//! bus.publish("order.created", json!({"order_id": 42, "total": 10})).await.unwrap();
//!
//! recorder.assert_published("order.created").with_data(json!({"order_id": 42, "total": 10})).once();
//! recorder.assert_published("order.created").including(json!({"order_id": 42})).once();
//! recorder.assert_published("order.cancelled").never();
//! assert_eq!(recorder.events().len(), 1);
//! # }
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use uuid::Uuid;

use crate::event::{Event, RecordedEvent};
use crate::handler::{Context, Handler};
use crate::topic::TopicPattern;
use crate::{Bus, HandlerResult, Subscriber};

/// Captures the events published on a bus.
///
/// It is an inline subscriber to `#` named `herald.testing.recorder-N`, so
/// it sees each event before `publish` returns.
#[derive(Clone)]
pub struct Recorder {
    events: Arc<Mutex<Vec<RecordedEvent>>>,
    name: String,
}

struct Record(Arc<Mutex<Vec<RecordedEvent>>>);

impl Handler for Record {
    async fn handle(&self, event: &RecordedEvent, _ctx: &Context) -> HandlerResult {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
        Ok(())
    }
}

static RECORDERS: AtomicU64 = AtomicU64::new(0);

impl Recorder {
    /// Subscribes a new recorder to every event of `bus`.
    ///
    /// # Panics
    ///
    /// If the bus was shut down.
    pub fn attach(bus: &Bus) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let name = format!(
            "herald.testing.recorder-{}",
            RECORDERS.fetch_add(1, Ordering::Relaxed)
        );
        bus.subscribe(Subscriber::new(name.clone(), Record(Arc::clone(&events))).topic("#"))
            .expect("a recorder attaches to a running bus");
        Self { events, name }
    }

    /// The recorder's subscriber name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every event recorded, in publish order.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The events whose type matches `pattern` (`order.created`, `order.*`).
    ///
    /// # Panics
    ///
    /// If `pattern` is not a valid topic pattern.
    pub fn events_of(&self, pattern: &str) -> Vec<RecordedEvent> {
        let pattern = parse(pattern);
        self.events()
            .into_iter()
            .filter(|e| pattern.matches(e.event_type()))
            .collect()
    }

    /// The payloads of the recorded events of type `E`, decoded.
    ///
    /// # Panics
    ///
    /// If a payload of that type does not decode into `E`.
    pub fn published<E: Event>(&self) -> Vec<E> {
        self.events_of(E::NAME)
            .iter()
            .map(|e| {
                e.decode::<E>().unwrap_or_else(|err| {
                    panic!("recorded event {} does not decode: {err}", e.id())
                })
            })
            .collect()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Starts an assertion about events whose type matches `pattern`.
    ///
    /// # Panics
    ///
    /// If `pattern` is not a valid topic pattern.
    pub fn assert_published(&self, pattern: &str) -> Expectation<'_> {
        Expectation {
            recorder: self,
            pattern: parse(pattern),
            data: None,
            including: None,
            headers: Vec::new(),
            correlation_id: None,
            causation_id: None,
        }
    }
}

fn parse(pattern: &str) -> TopicPattern {
    TopicPattern::parse(pattern).unwrap_or_else(|e| panic!("{e}"))
}

/// An assertion about recorded events; finish it with [`once`](Self::once),
/// [`times`](Self::times), [`never`](Self::never) or
/// [`at_least_once`](Self::at_least_once). Failures panic with a list of what
/// was published.
#[must_use = "finish the assertion with once(), times(n), never() or at_least_once()"]
pub struct Expectation<'a> {
    recorder: &'a Recorder,
    pattern: TopicPattern,
    data: Option<Value>,
    including: Option<Value>,
    headers: Vec<(String, String)>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
}

impl Expectation<'_> {
    /// The payload must equal `data`.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The payload must contain `subset`: each key of an object, at any
    /// depth, with an equal value.
    pub fn including(mut self, subset: Value) -> Self {
        self.including = Some(subset);
        self
    }

    /// The metadata must have this header.
    pub fn with_header(mut self, key: &str, value: &str) -> Self {
        self.headers.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The correlation id must be `id`.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// The causation id must be `id`.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    fn matching(&self) -> Vec<RecordedEvent> {
        self.recorder
            .events()
            .into_iter()
            .filter(|e| self.matches(e))
            .collect()
    }

    fn matches(&self, e: &RecordedEvent) -> bool {
        if !self.pattern.matches(e.event_type()) {
            return false;
        }
        let value = e.data().to_value();
        self.data.as_ref().is_none_or(|d| *d == value)
            && self.including.as_ref().is_none_or(|s| contains(&value, s))
            && self
                .headers
                .iter()
                .all(|(k, v)| e.metadata().headers.get(k) == Some(v))
            && self.correlation_id.is_none_or(|c| e.correlation_id() == c)
            && self
                .causation_id
                .is_none_or(|c| e.causation_id() == Some(c))
    }

    fn check(self, ok: impl Fn(usize) -> bool, wanted: &str) -> Vec<RecordedEvent> {
        let found = self.matching();
        if !ok(found.len()) {
            let mut msg = format!(
                "expected {wanted} event(s) matching {}{}, found {}.\npublished:",
                self.pattern,
                self.describe(),
                found.len()
            );
            let all = self.recorder.events();
            if all.is_empty() {
                msg.push_str(" nothing");
            }
            for e in all {
                let _ = write!(msg, "\n  {} {} {}", e.event_type(), e.id(), e.data());
            }
            panic!("{msg}");
        }
        found
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.data {
            let _ = write!(s, " with data {d}");
        }
        if let Some(d) = &self.including {
            let _ = write!(s, " including {d}");
        }
        for (k, v) in &self.headers {
            let _ = write!(s, " with header {k}={v}");
        }
        if let Some(c) = self.correlation_id {
            let _ = write!(s, " with correlation id {c}");
        }
        if let Some(c) = self.causation_id {
            let _ = write!(s, " with causation id {c}");
        }
        s
    }

    /// Exactly one matching event; returns it.
    ///
    /// # Panics
    ///
    /// Otherwise, listing what was published.
    pub fn once(self) -> RecordedEvent {
        self.check(|n| n == 1, "exactly 1").remove(0)
    }

    /// Exactly `n` matching events; returns them.
    ///
    /// # Panics
    ///
    /// Otherwise, listing what was published.
    pub fn times(self, n: usize) -> Vec<RecordedEvent> {
        self.check(|m| m == n, &format!("exactly {n}"))
    }

    /// At least one matching event; returns them.
    ///
    /// # Panics
    ///
    /// Otherwise, listing what was published.
    pub fn at_least_once(self) -> Vec<RecordedEvent> {
        self.check(|n| n >= 1, "at least 1")
    }

    /// No matching event.
    ///
    /// # Panics
    ///
    /// Otherwise, listing what was published.
    pub fn never(self) {
        self.check(|n| n == 0, "no");
    }
}

fn contains(value: &Value, subset: &Value) -> bool {
    match (value, subset) {
        (Value::Object(v), Value::Object(s)) => s
            .iter()
            .all(|(k, sv)| v.get(k).is_some_and(|vv| contains(vv, sv))),
        _ => value == subset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_matching_recurses_into_objects_only() {
        let v = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        assert!(contains(&v, &json!({"b": {"c": 2}})));
        assert!(contains(&v, &json!({"e": [1, 2]})));
        assert!(!contains(&v, &json!({"e": [1]})));
        assert!(!contains(&v, &json!({"b": {"c": 3}})));
        assert!(!contains(&v, &json!({"z": null})));
    }
}
