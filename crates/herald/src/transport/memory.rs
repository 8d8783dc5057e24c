//! An in-process broker, for tests and examples.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
/// A `MemoryTransport` is one connection to its broker; clones share the
/// connection, [`connection`](Self::connection) opens another one to the
/// same broker (another "process"). It behaves as the real brokers do where
/// a test can see it: a group receives what is published after it was
/// first subscribed, its consumers share its events, a retry comes back
/// after its delay, and the deliveries a connection holds unsettled go back
/// to their group when it closes or when they are dropped.
///
/// # Examples
///
/// ```
/// use herald::transport::MemoryTransport;
/// use herald::Bus;
/// use std::sync::Arc;
///
/// let broker = MemoryTransport::new();
/// let orders = Bus::builder().transport(Arc::new(broker.clone())).build();
/// let billing = Bus::builder().transport(Arc::new(broker.connection())).build();
/// ```
#[derive(Clone, Default)]
pub struct MemoryTransport {
    broker: Arc<Broker>,
    connection: Arc<Connection>,
}

#[derive(Default)]
struct Broker {
    groups: Mutex<HashMap<String, Arc<Group>>>,
    dead_letters: MemoryDeadLetterStore,
    /// Bumped by [`MemoryTransport::disconnect`]; a consumer opened under an
    /// older one fails once, as after a dropped connection.
    generation: AtomicU64,
}

/// One connection: what it holds unsettled goes back when it closes.
#[derive(Default)]
struct Connection {
    closed: AtomicBool,
    next_tag: AtomicU64,
    unsettled: Mutex<HashMap<u64, (Arc<Group>, Message)>>,
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single insert or removal.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Group {
    fn push(&self, message: Message, front: bool) {
        let mut ready = lock(&self.ready);
        if front {
            ready.push_front(message);
        } else {
            ready.push_back(message);
        }
        drop(ready);
        self.arrived.notify_one();
    }

    fn matches(&self, event_type: &str) -> bool {
        lock(&self.topics).iter().any(|p| p.matches(event_type))
    }
}

impl Connection {
    fn take(&self, tag: u64) -> Option<(Arc<Group>, Message)> {
        lock(&self.unsettled).remove(&tag)
    }
}

impl MemoryTransport {
    /// A new broker, and a connection to it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another connection to the same broker.
    pub fn connection(&self) -> Self {
        Self {
            broker: Arc::clone(&self.broker),
            connection: Arc::default(),
        }
    }

    /// How many deliveries wait in group `name` (not counting those
    /// delivered and not yet settled, nor retries still waiting out their
    /// delay).
    pub fn queued(&self, name: &str) -> usize {
        self.group(name).map_or(0, |g| lock(&g.ready).len())
    }

    /// Drops every consumer's connection to the broker, as a broker restart
    /// would: each open consumer fails its next call, and the bus opens a
    /// new one.
    pub fn disconnect(&self) {
        self.broker.generation.fetch_add(1, Ordering::SeqCst);
        let groups: Vec<Arc<Group>> = lock(&self.broker.groups).values().cloned().collect();
        for group in groups {
            group.arrived.notify_waiters();
        }
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.connection.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Closed(NAME));
        }
        Ok(())
    }

    fn group(&self, name: &str) -> Option<Arc<Group>> {
        lock(&self.broker.groups).get(name).cloned()
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError> {
        self.check_open()?;
        let groups: Vec<Arc<Group>> = lock(&self.broker.groups).values().cloned().collect();
        for event in events {
            for group in groups.iter().filter(|g| g.matches(event.event_type())) {
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
        let group = Arc::clone(
            lock(&self.broker.groups)
                .entry(spec.name.clone())
                .or_insert_with(|| {
                    Arc::new(Group {
                        topics: Mutex::new(Vec::new()),
                        ready: Mutex::new(VecDeque::new()),
                        arrived: Notify::new(),
                    })
                }),
        );
        // As a broker's bindings: the group keeps the patterns it was
        // declared with, plus the new ones.
        {
            let mut topics = lock(&group.topics);
            for pattern in &spec.topics {
                if !topics.contains(pattern) {
                    topics.push(pattern.clone());
                }
            }
        }
        Ok(Box::new(MemoryConsumer {
            group,
            transport: self.clone(),
            generation: self.broker.generation.load(Ordering::SeqCst),
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
        Arc::new(self.broker.dead_letters.clone())
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.connection.closed.store(true, Ordering::SeqCst);
        let held: Vec<(Arc<Group>, Message)> = lock(&self.connection.unsettled)
            .drain()
            .map(|(_, held)| held)
            .collect();
        for (group, message) in held {
            group.push(message, true);
        }
        // Wakes this connection's consumers, which then see it closed.
        let groups: Vec<Arc<Group>> = lock(&self.broker.groups).values().cloned().collect();
        for group in groups {
            group.arrived.notify_waiters();
        }
        Ok(())
    }
}

struct MemoryConsumer {
    group: Arc<Group>,
    transport: MemoryTransport,
    /// The broker generation it was opened under.
    generation: u64,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            // Registered before looking, so a push in between still wakes us.
            let arrived = self.group.arrived.notified();
            self.transport.check_open()?;
            if self.transport.broker.generation.load(Ordering::SeqCst) != self.generation {
                return Err(TransportError::connection(
                    NAME,
                    "the connection was dropped",
                ));
            }
            let (message, more) = {
                let mut ready = lock(&self.group.ready);
                (ready.pop_front(), !ready.is_empty())
            };
            if let Some(message) = message {
                if more {
                    // Another consumer may be waiting for what is left.
                    self.group.arrived.notify_one();
                }
                let event = message.event.clone();
                let (attempt, errors) = (message.attempt, message.errors.clone());
                let connection = &self.transport.connection;
                let tag = connection.next_tag.fetch_add(1, Ordering::Relaxed);
                lock(&connection.unsettled).insert(tag, (Arc::clone(&self.group), message));
                let acker = MemoryAcker {
                    connection: Arc::clone(connection),
                    tag,
                    dead_letters: self.transport.broker.dead_letters.clone(),
                };
                return Ok(Delivery::new(event, attempt, errors, acker));
            }
            arrived.await;
        }
    }
}

struct MemoryAcker {
    connection: Arc<Connection>,
    tag: u64,
    dead_letters: MemoryDeadLetterStore,
}

impl MemoryAcker {
    /// The message, unless the connection closed and gave it back already.
    fn take(&self) -> Result<(Arc<Group>, Message), TransportError> {
        self.connection
            .take(self.tag)
            .ok_or(TransportError::Closed(NAME))
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some((group, message)) = self.connection.take(self.tag) {
            group.push(message, true);
        }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.take().map(drop)
    }

    async fn retry(
        self: Box<Self>,
        delay: Duration,
        attempt: u32,
        errors: Vec<AttemptError>,
    ) -> Result<(), TransportError> {
        let (group, mut message) = self.take()?;
        message.attempt = attempt;
        message.errors = errors;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            group.push(message, false);
        });
        Ok(())
    }

    async fn dead_letter(
        self: Box<Self>,
        letter: NewDeadLetter,
        _attempts: u32,
    ) -> Result<(), TransportError> {
        // Recorded before the message is let go: if recording fails, the
        // drop gives it back.
        self.dead_letters
            .record(letter)
            .await
            .map_err(|e| TransportError::broker(NAME, e))?;
        self.take().map(drop)
    }

    async fn release(self: Box<Self>) -> Result<(), TransportError> {
        let (group, message) = self.take()?;
        group.push(message, true);
        Ok(())
    }
}
