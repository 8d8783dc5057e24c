//! The transport: publishing, subscribing, redelivering, closing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use herald::transport::{Consumer, ConsumerSpec, Transport, TransportError};
use herald::{AttemptError, DeadLetterStore, RecordedEvent};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::NAME;
use crate::codec::{self, Names};
use crate::config::{KafkaConfig, TopicMapping};
use crate::consumer::{self, ConsumerShared};
use crate::dead_letters::KafkaDeadLetters;
use crate::topics::{Producers, Topics};

/// A Herald [`Transport`] on a Kafka cluster; see the [crate docs](crate).
///
/// Clones share the producer and the dead-letter store.
#[derive(Clone)]
pub struct KafkaTransport {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    pub(crate) names: Names,
    pub(crate) producer: Arc<Producers>,
    pub(crate) topics: Arc<Topics>,
    closed: AtomicBool,
    consumers: Mutex<Vec<Weak<ConsumerShared>>>,
    dead_letters: KafkaDeadLetters,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("brokers", &self.inner.config.brokers)
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

/// How long `subscribe` waits for the member's first partitions.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// How long [`KafkaTransport::connect`] waits for the cluster's metadata.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaTransport {
    /// Connects to the cluster of `config`, checking that it answers.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidName`] for bad settings,
    /// [`TransportError::Connection`] when no broker answers in 10 s.
    pub async fn connect(config: KafkaConfig) -> Result<Self, TransportError> {
        config.validate()?;
        let producer = Arc::new(Producers::new(&config)?);
        let probe = producer.get();
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, CONNECT_TIMEOUT))
            .await
            .map_err(|e| TransportError::connection(NAME, e))?
            .map_err(|e| TransportError::connection(NAME, e))?;
        let names = Names {
            prefix: config.prefix.clone(),
            mapping: config.mapping,
        };
        let topics = Arc::new(Topics::new(&config)?);
        let dead_letters = KafkaDeadLetters::new(
            &config,
            names.dead_letter_topic(),
            Arc::clone(&producer),
            Arc::clone(&topics),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                names,
                producer,
                topics,
                closed: AtomicBool::new(false),
                consumers: Mutex::default(),
                dead_letters,
            }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// The topic that carries events of `event_type`.
    pub fn topic_of(&self, event_type: &str) -> String {
        self.inner.names.event_topic(event_type)
    }

    /// The consumer group of subscriber `subscriber`.
    pub fn group_of(&self, subscriber: &str) -> String {
        self.inner.names.group(subscriber)
    }

    /// The retry topic of subscriber `subscriber`.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidName`] for a name Kafka cannot take.
    pub fn retry_topic_of(&self, subscriber: &str) -> Result<String, TransportError> {
        self.inner.names.retry_topic(subscriber)
    }

    /// The dead letters on the dead-letter topic, as their concrete type.
    pub fn dead_letter_store(&self) -> KafkaDeadLetters {
        self.inner.dead_letters.clone()
    }

    fn check_open(&self) -> Result<(), TransportError> {
        self.inner.check_open()
    }
}

/// A record to send: its topic, its event and headers beyond the event's.
pub(crate) type Outgoing<'a> = (String, &'a RecordedEvent, Vec<(String, String)>);

impl Inner {
    /// Fails once the transport was closed: a delivery settled after that
    /// goes back to the broker as if the process had crashed.
    pub(crate) fn check_open(&self) -> Result<(), TransportError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Closed(NAME));
        }
        Ok(())
    }

    pub(crate) fn dead_letter_store_ref(&self) -> &KafkaDeadLetters {
        &self.dead_letters
    }

    /// Sends `(topic, event, extra headers)` records and waits for the
    /// broker to acknowledge every one: all are handed to the producer
    /// first, so that they travel in batches, then all are awaited.
    pub(crate) async fn send(&self, records: Vec<Outgoing<'_>>) -> Result<(), TransportError> {
        let producer = self.producer.get();
        let mut pending = Vec::with_capacity(records.len());
        for (topic, event, extra) in &records {
            let key = codec::key(event);
            let headers: OwnedHeaders = codec::append(codec::event_headers(event), extra);
            let mut record = FutureRecord::to(topic)
                .key(key.as_bytes())
                .payload(event.data().as_bytes())
                .headers(headers);
            let future = loop {
                match producer.send_result(record) {
                    Ok(future) => break future,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for deliveries to
                        // make room rather than failing the publish.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((err, _)) => {
                        return Err(TransportError::NotConfirmed {
                            transport: NAME,
                            event_id: event.id(),
                            reason: err.to_string(),
                        });
                    }
                }
            };
            pending.push((topic, event.id(), future));
        }
        let mut first_error = None;
        for (topic, event_id, future) in pending {
            let reason = match future.await {
                Ok(Ok(_)) => continue,
                Ok(Err((err, _))) => {
                    // The broker may have lost the topic (a restarted
                    // in-memory broker times messages out rather than
                    // saying so): the next publish makes sure it exists.
                    self.topics.forget(topic);
                    err.to_string()
                }
                Err(_) => "the producer was dropped".to_owned(),
            };
            first_error.get_or_insert(TransportError::NotConfirmed {
                transport: NAME,
                event_id,
                reason,
            });
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends `event` to subscriber's retry topic as attempt `attempt`, not
    /// to be handed out before `delay` has passed.
    pub(crate) async fn send_retry(
        &self,
        subscriber: &str,
        event: &RecordedEvent,
        delay: Duration,
        attempt: u32,
        errors: &[AttemptError],
    ) -> Result<(), TransportError> {
        let topic = self.names.retry_topic(subscriber)?;
        self.topics
            .ensure(std::slice::from_ref(&topic), None, &[])
            .await?;
        let mut extra = vec![(codec::ATTEMPT.to_owned(), attempt.to_string())];
        if !delay.is_zero() {
            let not_before =
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            extra.push((
                codec::NOT_BEFORE.to_owned(),
                not_before.timestamp_millis().to_string(),
            ));
        }
        if !errors.is_empty() {
            let json =
                serde_json::to_string(errors).map_err(|e| TransportError::broker(NAME, e))?;
            extra.push((codec::ERRORS.to_owned(), json));
        }
        let result = self.send(vec![(topic.clone(), event, extra)]).await;
        if result.is_err() {
            self.topics.forget(&topic);
        }
        result
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError> {
        self.check_open()?;
        let names = &self.inner.names;
        let topics: BTreeSet<String> = events
            .iter()
            .map(|e| names.event_topic(e.event_type()))
            .collect();
        let topics: Vec<String> = topics.into_iter().collect();
        self.inner.topics.ensure(&topics, None, &[]).await?;
        let records = events
            .iter()
            .map(|e| (names.event_topic(e.event_type()), e, Vec::new()))
            .collect();
        self.inner.send(records).await
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, TransportError> {
        self.check_open()?;
        let retry_topic = self.inner.names.retry_topic(&spec.name)?;
        if spec.topics.is_empty() {
            return Err(TransportError::InvalidName {
                transport: NAME,
                name: spec.name.clone(),
                reason: "a consumer group needs at least one topic pattern".into(),
            });
        }
        // The retry topic, and the topics named without wildcards, are
        // created now, so that the group is assigned them at once.
        let mut create = vec![retry_topic.clone()];
        for pattern in &spec.topics {
            let text = pattern.to_string();
            let first = text.split('.').next().unwrap_or_default();
            let known = match self.inner.config.mapping {
                TopicMapping::PerType => !text.split('.').any(|s| s == "*" || s == "#"),
                TopicMapping::PerCategory => first != "*" && first != "#",
                TopicMapping::Single => true,
            };
            if known {
                create.push(self.inner.names.event_topic(&text));
            }
        }
        create.dedup();
        self.inner.topics.ensure(&create, None, &[]).await?;
        let mut regexes: Vec<String> = spec
            .topics
            .iter()
            .map(|p| self.inner.names.pattern_regex(p))
            .collect();
        regexes.push(Names::exact_regex(&retry_topic));
        regexes.sort();
        regexes.dedup();
        let consumer = consumer::open(Arc::clone(&self.inner), spec, retry_topic, &regexes)?;
        // Returning once the member holds partitions makes `Bus::ready`
        // mean "consuming": a second member is then given its share before
        // its application goes on. A member may get none (more members than
        // partitions): past the wait it is returned all the same.
        if !consumer.shared_ref().wait_joined(JOIN_WAIT).await {
            tracing::debug!(subscriber = %spec.name, "no partitions assigned yet; consuming as they come");
        }
        let mut registered = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        registered.retain(|w| w.strong_count() > 0);
        registered.push(consumer.shared());
        Ok(Box::new(consumer))
    }

    async fn redeliver(
        &self,
        subscriber: &str,
        event: &RecordedEvent,
    ) -> Result<(), TransportError> {
        self.check_open()?;
        self.inner
            .send_retry(subscriber, event, Duration::ZERO, 1, &[])
            .await
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(self.inner.dead_letters.clone())
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let consumers: Vec<Arc<ConsumerShared>> = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .filter_map(|w| w.upgrade())
            .collect();
        for consumer in &consumers {
            consumer.stop(true);
        }
        // Each consumer leaves its group on its own thread; waiting here
        // means that once `close` returns, the group has moved on.
        for consumer in consumers {
            consumer.wait_stopped(Duration::from_secs(30)).await;
        }
        let producer = self.inner.producer.get();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        Ok(())
    }
}
