//! Shared helpers: a tracing capture and counting handlers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use herald::{Context, Handler, HandlerResult, RecordedEvent};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

/// One captured log event: level, message and fields.
#[derive(Clone, Debug)]
pub(crate) struct Captured {
    pub(crate) level: tracing::Level,
    pub(crate) fields: BTreeMap<String, String>,
}

impl Captured {
    pub(crate) fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }
}

#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<Captured>>>);

impl Logs {
    pub(crate) fn all(&self) -> Vec<Captured> {
        self.0.lock().unwrap().clone()
    }

    pub(crate) fn with_message(&self, needle: &str) -> Vec<Captured> {
        self.all()
            .into_iter()
            .filter(|c| c.message().contains(needle))
            .collect()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Logs {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            fields,
        });
    }
}

/// Captures the log events of the current thread until the guard drops.
/// Tests using it run on a current-thread runtime.
pub(crate) fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::registry().with(logs.clone());
    let guard = tracing::subscriber::set_default(subscriber);
    (logs, guard)
}

/// A handler that records the events it saw.
#[derive(Clone, Default)]
pub(crate) struct Seen(pub(crate) Arc<Mutex<Vec<RecordedEvent>>>);

impl Seen {
    pub(crate) fn events(&self) -> Vec<RecordedEvent> {
        self.0.lock().unwrap().clone()
    }

    pub(crate) fn types(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e.event_type().to_owned())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Handler for Seen {
    async fn handle(&self, event: &RecordedEvent, _ctx: &Context) -> HandlerResult {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// A shared log of strings, to check call order.
#[derive(Clone, Default)]
pub(crate) struct Trail(pub(crate) Arc<Mutex<Vec<String>>>);

impl Trail {
    pub(crate) fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }

    pub(crate) fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The value a debugging recorder holds for the metric `name` with all of
/// `labels`, if any.
pub(crate) fn metric(
    snapshotter: &metrics_util::debugging::Snapshotter,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<metrics_util::debugging::DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, _, _, _)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, _, _, value)| value)
}
