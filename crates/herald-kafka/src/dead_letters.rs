//! Dead letters on a topic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald::{
    DeadLetter, DeadLetterError, DeadLetterQuery, DeadLetterStore, EventId, NewDeadLetter,
};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::codec;
use crate::config::KafkaConfig;
use crate::topics::{self, Producers, Topics};

/// How long reading the topic up to its end may take.
const CATCH_UP: Duration = Duration::from_secs(15);

/// The dead letters of a [`KafkaTransport`](crate::KafkaTransport), kept on
/// its dead-letter topic `<prefix>-dlq`.
///
/// A topic is append-only: each record is the whole current state of one
/// dead letter, keyed by its id, and removing one appends a tombstone (a
/// record with the key and no value). The topic is created with
/// `cleanup.policy=compact`, so that a broker that compacts keeps only the
/// latest record of each dead letter. Every operation first reads the topic
/// up to its end into memory, so that every process of an application sees
/// what the others recorded or removed; the first one reads it all.
///
/// Two processes recording the same subscriber's failure of the same event
/// at the same moment may both create a dead letter for it (nothing on the
/// broker serialises them); everything else is consistent.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    inner: Arc<Inner>,
}

struct Inner {
    topic: String,
    config: KafkaConfig,
    producer: Arc<Producers>,
    topics: Arc<Topics>,
    /// One operation at a time, so that a read-then-write is not
    /// interleaved with another of this process.
    ops: tokio::sync::Mutex<()>,
    reader: Arc<Mutex<Option<Reader>>>,
}

struct Reader {
    consumer: BaseConsumer,
    next: i64,
    letters: Letters,
}

#[derive(Default, Clone)]
struct Letters {
    by_id: HashMap<Uuid, DeadLetter>,
    by_key: HashMap<(String, EventId), Uuid>,
    order: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Letters {
    fn put(&mut self, letter: DeadLetter) {
        self.remove(letter.id);
        self.by_key
            .insert((letter.subscriber.clone(), letter.event.id()), letter.id);
        self.order.insert((letter.first_failed_at, letter.id));
        self.by_id.insert(letter.id, letter);
    }

    fn remove(&mut self, id: Uuid) -> Option<DeadLetter> {
        let letter = self.by_id.remove(&id)?;
        self.by_key
            .remove(&(letter.subscriber.clone(), letter.event.id()));
        self.order.remove(&(letter.first_failed_at, id));
        Some(letter)
    }
}

fn store_error(e: impl Into<herald::BoxError>) -> DeadLetterError {
    DeadLetterError::Store(e.into())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl KafkaDeadLetters {
    pub(crate) fn new(
        config: &KafkaConfig,
        topic: String,
        producer: Arc<Producers>,
        topics: Arc<Topics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                topic,
                config: config.clone(),
                producer,
                topics,
                ops: tokio::sync::Mutex::new(()),
                reader: Arc::default(),
            }),
        }
    }

    /// The topic it keeps dead letters on.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Reads the topic up to its current end; returns the state.
    async fn catch_up(&self) -> Result<Letters, DeadLetterError> {
        let inner = &self.inner;
        // One partition: one order for every update of every dead letter.
        inner
            .topics
            .ensure(
                std::slice::from_ref(&inner.topic),
                Some(1),
                &[("cleanup.policy", "compact")],
            )
            .await
            .map_err(store_error)?;
        let reader = Arc::clone(&inner.reader);
        let topic = inner.topic.clone();
        let config = inner.config.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = lock(&reader);
            if guard.is_none() {
                *guard = Some(Reader::open(&config, &topic)?);
            }
            let reader = guard.as_mut().expect("opened above");
            reader.read_to_end(&topic)?;
            Ok(reader.letters.clone())
        })
        .await
        .map_err(store_error)?
    }

    fn apply(&self, f: impl FnOnce(&mut Letters)) {
        if let Some(reader) = lock(&self.inner.reader).as_mut() {
            f(&mut reader.letters);
        }
    }

    /// Appends `letter`'s state (or, for `None`, the tombstone of `id`) and
    /// waits for the broker's acknowledgement.
    async fn write(&self, id: Uuid, letter: Option<&DeadLetter>) -> Result<(), DeadLetterError> {
        let key = id.to_string();
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.inner.topic).key(key.as_bytes());
        let payload;
        if let Some(letter) = letter {
            payload = serde_json::to_vec(letter).map_err(store_error)?;
            let errors = serde_json::to_string(&letter.errors).map_err(store_error)?;
            let headers = codec::append(
                rdkafka::message::OwnedHeaders::new(),
                &[
                    (codec::SUBSCRIBER.to_owned(), letter.subscriber.clone()),
                    (codec::ID.to_owned(), letter.event.id().to_string()),
                    (codec::TYPE.to_owned(), letter.event.event_type().to_owned()),
                    (codec::ATTEMPTS.to_owned(), letter.attempts.to_string()),
                    (codec::LAST_ERROR.to_owned(), letter.reason.clone()),
                    (codec::ERRORS.to_owned(), errors),
                ],
            );
            record = record.payload(&payload[..]).headers(headers);
        }
        let delivery = self
            .inner
            .producer
            .get()
            .send_result(record)
            .map_err(|(e, _)| store_error(e))?;
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => {
                self.inner.topics.forget(&self.inner.topic);
                Err(store_error(e))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// Records a failure that took `attempts` attempts this time (the
    /// transport's dead-letter path; [`DeadLetterStore::record`] counts the
    /// letter's errors instead).
    pub(crate) async fn record_attempts(
        &self,
        letter: NewDeadLetter,
        attempts: u32,
    ) -> Result<DeadLetter, DeadLetterError> {
        self.record_inner(letter, Some(attempts)).await
    }

    async fn record_inner(
        &self,
        letter: NewDeadLetter,
        attempts: Option<u32>,
    ) -> Result<DeadLetter, DeadLetterError> {
        let _op = self.inner.ops.lock().await;
        let letters = self.catch_up().await?;
        let now = letter.errors.last().map(|e| e.at).unwrap_or_else(Utc::now);
        let attempts = attempts
            .unwrap_or_else(|| u32::try_from(letter.errors.len()).unwrap_or(u32::MAX))
            .max(1);
        let key = (letter.subscriber.clone(), letter.event.id());
        let updated = match letters
            .by_key
            .get(&key)
            .and_then(|id| letters.by_id.get(id))
        {
            Some(existing) => {
                let mut updated = existing.clone();
                updated.attempts = updated.attempts.saturating_add(attempts);
                updated.errors.extend(letter.errors);
                updated.reason = letter.reason;
                updated.last_failed_at = now;
                updated
            }
            None => DeadLetter {
                id: *EventId::new().as_uuid(),
                subscriber: letter.subscriber,
                event: letter.event,
                attempts,
                reason: letter.reason,
                first_failed_at: letter.errors.first().map(|e| e.at).unwrap_or(now),
                errors: letter.errors,
                last_failed_at: now,
            },
        };
        self.write(updated.id, Some(&updated)).await?;
        let stored = updated.clone();
        self.apply(move |letters| letters.put(stored));
        Ok(updated)
    }
}

impl Reader {
    fn open(config: &KafkaConfig, topic: &str) -> Result<Self, DeadLetterError> {
        // The reader assigns itself the one partition and reads it from the
        // start; it never joins its group nor commits (librdkafka wants a
        // group id for `assign` all the same).
        let group = format!("{topic}-reader-{}", EventId::new());
        let consumer: BaseConsumer = topics::base_config(config)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(store_error)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(store_error)?;
        consumer.assign(&tpl).map_err(store_error)?;
        Ok(Self {
            consumer,
            next: 0,
            letters: Letters::default(),
        })
    }

    fn read_to_end(&mut self, topic: &str) -> Result<(), DeadLetterError> {
        let deadline = Instant::now() + CATCH_UP;
        let (_, high) = self
            .consumer
            .fetch_watermarks(topic, 0, CATCH_UP)
            .map_err(store_error)?;
        while self.next < high {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(store_error(format!(
                    "could not read dead-letter topic {topic} to offset {high} within {CATCH_UP:?}"
                )));
            }
            match self.consumer.poll(left.min(Duration::from_millis(200))) {
                None => {}
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "kafka dead-letter reader error; retrying");
                }
                Some(Ok(message)) => {
                    self.next = message.offset() + 1;
                    let Some(key) = message.key() else { continue };
                    let Ok(id) = std::str::from_utf8(key)
                        .ok()
                        .and_then(|k| k.parse::<Uuid>().ok())
                        .ok_or(())
                    else {
                        continue;
                    };
                    match message.payload() {
                        None => {
                            self.letters.remove(id);
                        }
                        Some(json) => match serde_json::from_slice::<DeadLetter>(json) {
                            Ok(letter) => self.letters.put(letter),
                            Err(err) => {
                                tracing::warn!(topic, offset = message.offset(), error = %err, "skipping a dead-letter record that does not parse");
                            }
                        },
                    }
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl DeadLetterStore for KafkaDeadLetters {
    async fn record(&self, letter: NewDeadLetter) -> Result<DeadLetter, DeadLetterError> {
        self.record_inner(letter, None).await
    }

    async fn list(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let _op = self.inner.ops.lock().await;
        let letters = self.catch_up().await?;
        Ok(letters
            .order
            .iter()
            .filter_map(|(_, id)| letters.by_id.get(id))
            .filter(|l| query.matches(l))
            .take(query.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn get(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        let _op = self.inner.ops.lock().await;
        Ok(self.catch_up().await?.by_id.get(&id).cloned())
    }

    async fn remove(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        let _op = self.inner.ops.lock().await;
        let letters = self.catch_up().await?;
        let Some(letter) = letters.by_id.get(&id).cloned() else {
            return Ok(None);
        };
        self.write(id, None).await?;
        self.apply(|letters| {
            letters.remove(id);
        });
        Ok(Some(letter))
    }

    async fn counts(&self) -> Result<BTreeMap<String, u64>, DeadLetterError> {
        let _op = self.inner.ops.lock().await;
        let letters = self.catch_up().await?;
        let mut counts = BTreeMap::new();
        for (subscriber, _) in letters.by_key.keys() {
            *counts.entry(subscriber.clone()).or_insert(0) += 1;
        }
        Ok(counts)
    }
}
