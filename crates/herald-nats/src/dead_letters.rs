//! [`NatsDeadLetters`]: dead letters in a JetStream stream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use futures_util::StreamExt;
use herald::{
    BoxError, DeadLetter, DeadLetterError, DeadLetterQuery, DeadLetterStore, EventId, NewDeadLetter,
};
use uuid::Uuid;

use crate::codec;
use crate::names::{self, Names};
use crate::payloads::Payloads;

/// The dead letter's id.
pub const DEAD_LETTER_ID: &str = "Herald-Dead-Letter-Id";
/// The subscriber that gave up.
pub const SUBSCRIBER: &str = "Herald-Subscriber";
/// How many attempts were made, over every time the event was tried.
pub const ATTEMPTS: &str = "Herald-Attempts";
/// The last error's message.
pub const LAST_ERROR: &str = "Herald-Last-Error";
/// Every error, as a JSON array of attempt errors.
pub const ERRORS: &str = "Herald-Errors";
/// When the first attempt failed (RFC 3339).
pub const FIRST_FAILED_AT: &str = "Herald-First-Failed-At";

/// How many times [`record`](DeadLetterStore::record) tries again when
/// another process updated the same dead letter in between.
const RECORD_TRIES: usize = 8;

/// Dead letters kept in the stream `<PREFIX>_DLQ`, one message per
/// subscriber and event on `<prefix>.dlq.<subscriber token>.<event id>`.
///
/// The stream keeps one message per subject, so recording the same event
/// failing again for the same subscriber replaces the message: the new one
/// adds the attempts, appends the errors, and keeps the id and first
/// failure time of the one it replaces (read first, and written only if no
/// one wrote in between: `Nats-Expected-Last-Subject-Sequence`).
///
/// Listing reads the stream (or one subscriber's subjects) through a
/// short-lived consumer and sorts on the client, so it costs a pass over
/// the dead letters listed; `get` and `remove` by id pass over them all.
/// Dead letters are meant to be few.
pub struct NatsDeadLetters {
    js: jetstream::Context,
    names: Names,
    /// Where a dead letter too large for a message goes (its event's
    /// payload was, say).
    payloads: Arc<Payloads>,
}

impl NatsDeadLetters {
    pub(crate) fn new(js: jetstream::Context, names: Names, payloads: Arc<Payloads>) -> Self {
        Self {
            js,
            names,
            payloads,
        }
    }

    /// The dead letter a message holds, fetched from the object store when
    /// it was too large for the message.
    async fn letter_of(
        &self,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Result<DeadLetter, DeadLetterError> {
        match object_of(headers) {
            Some(name) => decode(
                &self
                    .payloads
                    .get(&name)
                    .await
                    .map_err(DeadLetterError::Store)?,
            ),
            None => decode(payload),
        }
    }

    async fn stream(&self) -> Result<stream::Stream<()>, DeadLetterError> {
        self.js
            .get_stream_no_info(self.names.dlq_stream())
            .await
            .map_err(store_error)
    }

    /// Records `letter` as `attempts` attempts (a broker counts attempts
    /// the letter's errors do not show: earlier errors do not ride on a
    /// redelivered message).
    pub(crate) async fn record_attempts(
        &self,
        letter: NewDeadLetter,
        attempts: u32,
    ) -> Result<DeadLetter, DeadLetterError> {
        let token = names::subscriber_token(&letter.subscriber)
            .map_err(|e| DeadLetterError::Store(Box::new(e)))?;
        let subject = self
            .names
            .dlq_subject(&token, &letter.event.id().to_string());
        let stream = self.stream().await?;
        let attempts = attempts.max(1);
        let now = letter.errors.last().map(|e| e.at).unwrap_or_else(Utc::now);
        for _ in 0..RECORD_TRIES {
            let previous = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => Some((
                    message.sequence,
                    self.letter_of(Some(&message.headers), &message.payload)
                        .await?,
                    object_of(Some(&message.headers)),
                )),
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    None
                }
                Err(e) => return Err(store_error(e)),
            };
            let replaced_object = previous.as_ref().and_then(|p| p.2.clone());
            let (sequence, letter) = match previous.map(|p| (p.0, p.1)) {
                Some((sequence, mut existing)) => {
                    existing.attempts = existing.attempts.saturating_add(attempts);
                    existing.errors.extend(letter.errors.iter().cloned());
                    existing.reason.clone_from(&letter.reason);
                    existing.last_failed_at = now;
                    existing.event = letter.event.clone();
                    (sequence, existing)
                }
                None => {
                    let first = letter.errors.first().map(|e| e.at).unwrap_or(now);
                    let dead = DeadLetter {
                        id: *EventId::new().as_uuid(),
                        subscriber: letter.subscriber.clone(),
                        event: letter.event.clone(),
                        attempts,
                        reason: letter.reason.clone(),
                        errors: letter.errors.clone(),
                        first_failed_at: first,
                        last_failed_at: now,
                    };
                    (0, dead)
                }
            };
            let mut payload: bytes::Bytes =
                serde_json::to_vec(&letter).map_err(store_error)?.into();
            let mut headers = headers(&letter);
            let max = self.js.client().server_info().max_payload;
            let mut object = None;
            if max > 0
                && payload.len() + crate::transport::header_size(&headers) + subject.len() + 128
                    > max
            {
                // Too large for a message: the letter goes to the object
                // store under a name of this write's own, so that a write
                // that loses the race below leaves the winner's alone.
                let name = format!("dlq-{token}-{}-{}", letter.event.id(), EventId::new());
                self.payloads
                    .put(&name, &payload)
                    .await
                    .map_err(DeadLetterError::Store)?;
                headers.insert(codec::PAYLOAD_OBJECT, name.as_str());
                payload = bytes::Bytes::new();
                object = Some(name);
            }
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload)
                .headers(headers)
                .expected_last_subject_sequence(sequence);
            let ack = self
                .js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(store_error)?;
            match ack.await {
                Ok(_) => {
                    if let Some(old) = replaced_object {
                        let _ = self.payloads.delete(&old).await;
                    }
                    return Ok(letter);
                }
                Err(e)
                    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
                        || e.to_string().contains("wrong last") =>
                {
                    // Another process recorded it in between: read again.
                    if let Some(name) = object {
                        let _ = self.payloads.delete(&name).await;
                    }
                    continue;
                }
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(DeadLetterError::Store(
            format!("dead letter {subject} kept changing while being recorded").into(),
        ))
    }

    /// Every dead letter under `filter`, with its stream sequence.
    async fn scan(&self, filter: String) -> Result<Vec<(u64, DeadLetter)>, DeadLetterError> {
        let stream = self.stream().await?;
        let config = consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            filter_subject: filter,
            inactive_threshold: Duration::from_secs(60),
            memory_storage: true,
            ..Default::default()
        };
        let reader: consumer::PullConsumer =
            stream.create_consumer(config).await.map_err(store_error)?;
        let result = self.read_all(&reader).await;
        let name = reader.cached_info().name.clone();
        // It would go away by itself after the inactive threshold.
        let _ = stream.delete_consumer(&name).await;
        result
    }

    async fn read_all(
        &self,
        reader: &consumer::PullConsumer,
    ) -> Result<Vec<(u64, DeadLetter)>, DeadLetterError> {
        let pending = usize::try_from(reader.cached_info().num_pending).unwrap_or(usize::MAX);
        let mut letters = Vec::with_capacity(pending.min(10_000));
        while letters.len() < pending {
            let want = (pending - letters.len()).min(1_000);
            let mut batch = reader
                .fetch()
                .max_messages(want)
                .messages()
                .await
                .map_err(store_error)?;
            let before = letters.len();
            while let Some(message) = batch.next().await {
                let message = message.map_err(store_error)?;
                let sequence = message.info().map_err(store_error)?.stream_sequence;
                letters.push((
                    sequence,
                    self.letter_of(message.headers.as_ref(), &message.payload)
                        .await?,
                ));
            }
            if letters.len() == before {
                // Removed while being read.
                break;
            }
        }
        Ok(letters)
    }

    async fn find(&self, id: Uuid) -> Result<Option<(u64, DeadLetter)>, DeadLetterError> {
        Ok(self
            .scan(self.names.dlq_wildcard())
            .await?
            .into_iter()
            .find(|(_, l)| l.id == id))
    }
}

fn headers(letter: &DeadLetter) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DEAD_LETTER_ID, letter.id.to_string());
    codec::put_text(&mut headers, SUBSCRIBER, &letter.subscriber);
    headers.insert(ATTEMPTS, letter.attempts.to_string());
    codec::put_text(&mut headers, LAST_ERROR, &letter.reason);
    // JSON escapes line breaks, so the array is one line.
    headers.insert(
        ERRORS,
        serde_json::to_string(&letter.errors).unwrap_or_default(),
    );
    headers.insert(
        FIRST_FAILED_AT,
        letter
            .first_failed_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    headers
}

fn object_of(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(codec::PAYLOAD_OBJECT))
        .map(|v| v.as_str().to_owned())
}

fn decode(payload: &[u8]) -> Result<DeadLetter, DeadLetterError> {
    serde_json::from_slice(payload).map_err(|e| {
        DeadLetterError::Store(format!("a dead letter on the server is not readable: {e}").into())
    })
}

fn store_error(error: impl Into<BoxError>) -> DeadLetterError {
    DeadLetterError::Store(error.into())
}

#[async_trait]
impl DeadLetterStore for NatsDeadLetters {
    async fn record(&self, letter: NewDeadLetter) -> Result<DeadLetter, DeadLetterError> {
        let attempts = u32::try_from(letter.errors.len()).unwrap_or(u32::MAX);
        self.record_attempts(letter, attempts).await
    }

    async fn list(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let filter = match &query.subscriber {
            Some(subscriber) => {
                let token = names::subscriber_token(subscriber)
                    .map_err(|e| DeadLetterError::Store(Box::new(e)))?;
                self.names.dlq_subscriber_wildcard(&token)
            }
            None => self.names.dlq_wildcard(),
        };
        let mut letters: Vec<DeadLetter> = self
            .scan(filter)
            .await?
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| query.matches(l))
            .collect();
        letters.sort_by_key(|l| (l.first_failed_at, l.id));
        letters.truncate(query.limit.unwrap_or(usize::MAX));
        Ok(letters)
    }

    async fn get(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        Ok(self.find(id).await?.map(|(_, l)| l))
    }

    async fn remove(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        let Some((sequence, letter)) = self.find(id).await? else {
            return Ok(None);
        };
        let stream = self.stream().await?;
        let object = stream
            .get_raw_message(sequence)
            .await
            .ok()
            .and_then(|m| object_of(Some(&m.headers)));
        match stream.delete_message(sequence).await {
            Ok(true) => {
                if let Some(name) = object {
                    let _ = self.payloads.delete(&name).await;
                }
                Ok(Some(letter))
            }
            Ok(false) => Ok(None),
            // Removed by another caller in between.
            Err(e) if e.to_string().contains("no message found") => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }
}
