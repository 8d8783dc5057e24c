//! An in-process broker, for tests and examples.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Acker, Consumer, ConsumerSpec, Delivery, Transport, TransportError};
use crate::dead_letter::{DeadLetterStore, MemoryDeadLetterStore, NewDeadLetter};
use crate::error::AttemptError;
use crate::event::RecordedEvent;
use crate::topic::TopicPattern;

const NAME: &str = "memory";

/// A broker in memory: consumer groups with queues, delayed retries and
/// dead letters, all lost when the process ends.
///
/// It behaves as the real brokers do where a test can see it: a group
/// receives what is published after it was first subscribed, its consumers
/// share its events, a delivery dropped unsettled is delivered again, and a
/// retry comes back after its delay.
///
/// # Examples
///
/// ```
/// use herald::transport::MemoryTransport;
/// use herald::Bus;
/// use std::sync::Arc;
///
/// let bus = Bus::builder().transport(Arc::new(MemoryTransport::new())).build();
/// ```
#[derive(Clone, Default)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    groups: Mutex<HashMap<String, Arc<Group>>>,
    dead_letters: MemoryDeadLetterStore,
    /// Bumped by [`MemoryTransport::disconnect`]; a consumer opened under an
    /// older one fails once, as after a dropped connection.
    connection: AtomicU64,
    closed: AtomicBool,
}

struct Group {
    topics: Mutex<Vec<TopicPattern>>,
    ready: Mutex<VecDeque<Message>>,
    arrived: Notify,
}

struct Message {
    event: RecordedEvent,
    attempt: u32,
    errors: Vec<AttemptError>,
}

impl Group {
    fn push(&self, message: Message, front: bool) {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if front {
            ready.push_front(message);
        } else {
            ready.push_back(message);
        }
        drop(ready);
        self.arrived.notify_one();
    }
}

impl MemoryTransport {
    /// A broker with no groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many deliveries wait in group `name` (not counting those
    /// delivered and not yet settled, nor retries still waiting out their
    /// delay).
    pub fn queued(&self, name: &str) -> usize {
        self.group(name).map_or(0, |g| {
            g.ready.lock().unwrap_or_else(|p| p.into_inner()).len()
        })
    }

    /// Drops every consumer's connection, as a broker restart would: each
    /// open consumer fails its next call, and the bus opens a new one.
    pub fn disconnect(&self) {
        self.inner.connection.fetch_add(1, Ordering::SeqCst);
        let groups: Vec<Arc<Group>> = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for group in groups {
            group.arrived.notify_waiters();
        }
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Closed(NAME));
        }
        Ok(())
    }

    fn group(&self, name: &str) -> Option<Arc<Group>> {
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError> {
        self.check_open()?;
        let groups: Vec<Arc<Group>> = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for event in events {
            for group in &groups {
                let matches = group
                    .topics
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .any(|p| p.matches(event.event_type()));
                if matches {
                    group.push(
                        Message {
                            event: event.clone(),
                            attempt: 1,
                            errors: Vec::new(),
                        },
                        false,
                    );
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, TransportError> {
        self.check_open()?;
        if spec.name.is_empty() {
            return Err(TransportError::InvalidName {
                transport: NAME,
                name: spec.name.clone(),
                reason: "a consumer group needs a name".into(),
            });
        }
        let group = {
            let mut groups = self.inner.groups.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(groups.entry(spec.name.clone()).or_insert_with(|| {
                Arc::new(Group {
                    topics: Mutex::new(Vec::new()),
                    ready: Mutex::new(VecDeque::new()),
                    arrived: Notify::new(),
                })
            }))
        };
        // As a broker's bindings: the group keeps the patterns it was
        // declared with, plus the new ones.
        {
            let mut topics = group.topics.lock().unwrap_or_else(|p| p.into_inner());
            for pattern in &spec.topics {
                if !topics.contains(pattern) {
                    topics.push(pattern.clone());
                }
            }
        }
        Ok(Box::new(MemoryConsumer {
            group,
            dead_letters: self.inner.dead_letters.clone(),
            connection: self.inner.connection.load(Ordering::SeqCst),
            inner: Arc::clone(&self.inner),
        }))
    }

    async fn redeliver(
        &self,
        subscriber: &str,
        event: &RecordedEvent,
    ) -> Result<(), TransportError> {
        self.check_open()?;
        let group = self
            .group(subscriber)
            .ok_or_else(|| TransportError::InvalidName {
                transport: NAME,
                name: subscriber.to_owned(),
                reason: "no consumer group has this name".into(),
            })?;
        group.push(
            Message {
                event: event.clone(),
                attempt: 1,
                errors: Vec::new(),
            },
            false,
        );
        Ok(())
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(self.inner.dead_letters.clone())
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.disconnect();
        Ok(())
    }
}

struct MemoryConsumer {
    group: Arc<Group>,
    dead_letters: MemoryDeadLetterStore,
    /// The connection it was opened on.
    connection: u64,
    inner: Arc<Inner>,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            // Registered before looking, so a push in between still wakes us.
            let arrived = self.group.arrived.notified();
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(TransportError::Closed(NAME));
            }
            if self.inner.connection.load(Ordering::SeqCst) != self.connection {
                return Err(TransportError::connection(
                    NAME,
                    "the connection was dropped",
                ));
            }
            let message = self
                .group
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            if let Some(message) = message {
                // Another consumer may be waiting for what is left.
                if !self
                    .group
                    .ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                {
                    self.group.arrived.notify_one();
                }
                let event = message.event.clone();
                let (attempt, errors) = (message.attempt, message.errors.clone());
                let acker = MemoryAcker {
                    group: Arc::clone(&self.group),
                    message: Some(message),
                    dead_letters: self.dead_letters.clone(),
                };
                return Ok(Delivery::new(event, attempt, errors, acker));
            }
            arrived.await;
        }
    }
}

struct MemoryAcker {
    group: Arc<Group>,
    /// `Some` until settled; dropped unsettled, it goes back to the group.
    message: Option<Message>,
    dead_letters: MemoryDeadLetterStore,
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.group.push(message, true);
        }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.message = None;
        Ok(())
    }

    async fn retry(
        mut self: Box<Self>,
        delay: Duration,
        attempt: u32,
        errors: Vec<AttemptError>,
    ) -> Result<(), TransportError> {
        let Some(mut message) = self.message.take() else {
            return Ok(());
        };
        message.attempt = attempt;
        message.errors = errors;
        let group = Arc::clone(&self.group);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            group.push(message, false);
        });
        Ok(())
    }

    async fn dead_letter(
        mut self: Box<Self>,
        letter: NewDeadLetter,
        _attempts: u32,
    ) -> Result<(), TransportError> {
        self.dead_letters
            .record(letter)
            .await
            .map_err(|e| TransportError::broker(NAME, e))?;
        self.message = None;
        Ok(())
    }

    async fn release(self: Box<Self>) -> Result<(), TransportError> {
        // Drop puts it back.
        Ok(())
    }
}
