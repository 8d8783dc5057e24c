//! [`NatsTransport`]: publishing, topology and consumers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use herald::transport::{Acker, Consumer, ConsumerSpec, Delivery, Transport, TransportError};
use herald::{AttemptError, DeadLetterStore, NewDeadLetter, RecordedEvent};

use crate::codec;
use crate::dead_letters::NatsDeadLetters;
use crate::names::{self, Names};
use crate::payloads::Payloads;
use crate::{NAME, NatsConfig};

/// An event whose headers alone are above the server's `max_payload`
/// (its payload, however large, goes to the object store).
#[derive(Debug, thiserror::Error)]
#[error(
    "event {event_id} has {size} bytes of headers, more than the server's max_payload of {max} bytes"
)]
pub struct PayloadTooLarge {
    /// The event.
    pub event_id: herald::EventId,
    /// Its headers and subject, in bytes.
    pub size: usize,
    /// The server's limit.
    pub max: usize,
}

/// A [`Transport`] on NATS JetStream.
///
/// See the [crate docs](crate) for the mapping onto streams, subjects and
/// consumers, and for the guarantees.
#[derive(Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    config: NatsConfig,
    closed: AtomicBool,
    dead_letters: Arc<NatsDeadLetters>,
    payloads: Arc<Payloads>,
}

impl NatsTransport {
    /// Connects to the server at `config.url` and declares the streams
    /// (`<PREFIX>_EVENTS`, `<PREFIX>_DLQ`) if they are missing.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidName`] for a bad prefix,
    /// [`TransportError::Connection`] when the server cannot be reached,
    /// [`TransportError::Broker`] when JetStream refuses the streams (it is
    /// not enabled, say).
    pub async fn connect(config: NatsConfig) -> Result<Self, TransportError> {
        config.validate()?;
        let names = Names::new(&config.prefix)?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("herald-{}", config.prefix))
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .connect(config.url.as_str())
            .await
            .map_err(|e| {
                TransportError::connection(
                    NAME,
                    format!("cannot connect to NATS at {}: {e}", config.url),
                )
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let payloads = Arc::new(Payloads::new(
            js.clone(),
            names.payloads_bucket(),
            config.max_age.unwrap_or_default(),
        ));
        let dead_letters = Arc::new(NatsDeadLetters::new(
            js.clone(),
            names.clone(),
            Arc::clone(&payloads),
        ));
        let transport = Self {
            inner: Arc::new(Inner {
                client,
                js,
                names,
                config,
                closed: AtomicBool::new(false),
                dead_letters,
                payloads,
            }),
        };
        transport.declare_streams().await?;
        Ok(transport)
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The NATS client, for what Herald does not wrap (its connection
    /// state, say).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Whether [`close`](Transport::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// The JetStream context, for what Herald does not wrap (stream
    /// statistics, say).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The name of the events stream, `<PREFIX>_EVENTS`.
    pub fn events_stream(&self) -> String {
        self.inner.names.events_stream()
    }

    /// The name of the dead-letter stream, `<PREFIX>_DLQ`.
    pub fn dead_letter_stream(&self) -> String {
        self.inner.names.dlq_stream()
    }

    /// The dead letters on the server, as their concrete type.
    pub fn nats_dead_letters(&self) -> Arc<NatsDeadLetters> {
        Arc::clone(&self.inner.dead_letters)
    }

    /// Deletes this prefix's streams, with their consumers, events, dead
    /// letters and large payloads. For tests and tear-downs; a later call to
    /// [`connect`](Self::connect) declares them anew.
    ///
    /// # Errors
    ///
    /// [`TransportError::Broker`] when the server refuses.
    pub async fn delete_streams(&self) -> Result<(), TransportError> {
        for name in [
            self.inner.names.events_stream(),
            self.inner.names.dlq_stream(),
            self.inner.payloads.stream_name(),
        ] {
            match self.inner.js.delete_stream(&name).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(TransportError::broker(NAME, e)),
            }
        }
        Ok(())
    }

    /// Creates the streams, or finds them. An existing stream is reused as
    /// it is; only a duplicate window or age limit that differs from the
    /// configuration is updated, so that processes started with a new
    /// configuration apply it.
    async fn declare_streams(&self) -> Result<(), TransportError> {
        let names = &self.inner.names;
        let config = &self.inner.config;
        let events = stream::Config {
            name: names.events_stream(),
            subjects: vec![names.events_wildcard(), names.redeliveries_wildcard()],
            duplicate_window: config.duplicate_window,
            max_age: config.max_age.unwrap_or_default(),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let dlq = stream::Config {
            name: names.dlq_stream(),
            subjects: vec![names.dlq_wildcard()],
            // One dead letter per subscriber and event: a new one replaces it.
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        for wanted in [events, dlq] {
            let mut tries = 0;
            let mut found = loop {
                tries += 1;
                match self.inner.js.get_or_create_stream(wanted.clone()).await {
                    Ok(found) => break found,
                    // A server error (code 500) can be passing: nats-server
                    // 2.9 fails a stream created while the account's last
                    // one is being deleted.
                    Err(e) if tries < 3 && e.to_string().contains("code 500") => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(TransportError::broker(
                            NAME,
                            format!("cannot declare stream {}: {e}", wanted.name),
                        ));
                    }
                }
            };
            let info = found
                .info()
                .await
                .map_err(|e| TransportError::broker(NAME, e))?;
            let have = &info.config;
            if have.subjects != wanted.subjects
                || have.max_messages_per_subject.max(0) != wanted.max_messages_per_subject.max(0)
            {
                return Err(TransportError::broker(
                    NAME,
                    format!(
                        "stream {} exists with subjects {:?} and {} messages per subject, not {:?} and {}",
                        wanted.name,
                        have.subjects,
                        have.max_messages_per_subject,
                        wanted.subjects,
                        wanted.max_messages_per_subject
                    ),
                ));
            }
            if have.duplicate_window != wanted.duplicate_window || have.max_age != wanted.max_age {
                let mut update = have.clone();
                update.duplicate_window = wanted.duplicate_window;
                update.max_age = wanted.max_age;
                self.inner.js.update_stream(update).await.map_err(|e| {
                    TransportError::broker(
                        NAME,
                        format!("cannot update stream {}: {e}", wanted.name),
                    )
                })?;
            }
        }
        Ok(())
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Closed(NAME));
        }
        Ok(())
    }

    /// Publishes messages, all sent before any ack is awaited.
    async fn publish_messages(
        &self,
        messages: Vec<(
            herald::EventId,
            async_nats::Subject,
            async_nats::HeaderMap,
            bytes::Bytes,
        )>,
    ) -> Result<(), TransportError> {
        let max = self.inner.client.server_info().max_payload;
        // Checked before anything is sent, so a batch with one event whose
        // headers alone are too large writes nothing; a payload too large
        // goes to the object store, and the message carries its name.
        let mut messages = messages;
        if max > 0 {
            for (event_id, subject, headers, _) in &messages {
                let size = header_size(headers) + subject.len() + 64;
                if size > max {
                    return Err(TransportError::broker(
                        NAME,
                        PayloadTooLarge {
                            event_id: *event_id,
                            size,
                            max,
                        },
                    ));
                }
            }
            for (event_id, subject, headers, payload) in &mut messages {
                let size = payload.len() + header_size(headers) + subject.len();
                if size > max {
                    let name = event_id.to_string();
                    self.inner
                        .payloads
                        .put(&name, payload)
                        .await
                        .map_err(|e| not_confirmed(*event_id, &e))?;
                    codec::set_payload_object(headers, &name);
                    *payload = bytes::Bytes::new();
                }
            }
        }
        let mut acks = Vec::with_capacity(messages.len());
        for (event_id, subject, headers, payload) in messages {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload)
                .headers(headers);
            let ack = self
                .inner
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|e| not_confirmed(event_id, &e))?;
            acks.push((event_id, ack));
        }
        for (event_id, ack) in acks {
            ack.await.map_err(|e| not_confirmed(event_id, &e))?;
        }
        Ok(())
    }
}

/// The bytes headers take on the wire, roughly (`Name: value\r\n` each plus
/// the version line), to check the size limit before sending.
pub(crate) fn header_size(headers: &async_nats::HeaderMap) -> usize {
    let mut size = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        for value in values {
            size += AsRef::<str>::as_ref(name).len() + value.as_str().len() + 4;
        }
    }
    size
}

fn not_confirmed(event_id: herald::EventId, error: &dyn std::fmt::Display) -> TransportError {
    TransportError::NotConfirmed {
        transport: NAME,
        event_id,
        reason: error.to_string(),
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError> {
        self.check_open()?;
        // A batch mostly holds a few event types: a subject is built once
        // per run of one type, and shared (a subject clones by reference).
        let mut last: Option<(&str, async_nats::Subject)> = None;
        let messages = events
            .iter()
            .map(|event| {
                let subject = match &last {
                    Some((event_type, subject)) if *event_type == event.event_type() => {
                        subject.clone()
                    }
                    _ => {
                        let subject = async_nats::Subject::from(
                            self.inner.names.event_subject(event.event_type()),
                        );
                        last = Some((event.event_type(), subject.clone()));
                        subject
                    }
                };
                (
                    event.id(),
                    subject,
                    codec::event_headers(event),
                    event.data().to_bytes(),
                )
            })
            .collect();
        self.publish_messages(messages).await
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, TransportError> {
        self.check_open()?;
        let token = names::subscriber_token(&spec.name)?;
        let filters = names::subscriber_filters(&spec.topics);
        let stream = self
            .inner
            .js
            .get_stream_no_info(self.inner.names.events_stream())
            .await
            .map_err(|e| TransportError::broker(NAME, e))?;
        let root = self.inner.names.event_root();
        let max_ack_pending = i64::try_from(spec.prefetch.max(1)).unwrap_or(i64::MAX);
        let batch = spec.prefetch.clamp(1, 512);
        let mut streams: SelectAll<BoxStream<'static, (Source, Pulled)>> = SelectAll::new();
        for (index, filter) in filters.iter().enumerate() {
            let config = consumer::pull::Config {
                durable_name: Some(names::filter_consumer(&token, filter)),
                description: Some(format!("herald subscriber {:?}: {filter}", spec.name)),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: self.inner.config.ack_wait,
                max_ack_pending,
                filter_subject: format!("{root}{filter}"),
                ..Default::default()
            };
            let messages = self.open(&stream, config, batch).await?;
            streams.push(messages.map(move |m| (Source::Filter(index), m)).boxed());
        }
        // Redeliveries from the dead letters reach this group only, on a
        // subject of its own; they are kept from before the consumer
        // existed, so a retry sent while no process runs is not lost.
        let redeliveries = consumer::pull::Config {
            durable_name: Some(names::redelivery_consumer(&token)),
            description: Some(format!("herald subscriber {:?}: redeliveries", spec.name)),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.inner.config.ack_wait,
            max_ack_pending,
            filter_subject: self.inner.names.redelivery_subject(&token),
            ..Default::default()
        };
        let messages = self.open(&stream, redeliveries, batch).await?;
        streams.push(messages.map(|m| (Source::Redelivery, m)).boxed());
        Ok(Box::new(NatsConsumer {
            transport: self.clone(),
            spec: spec.clone(),
            root,
            filters,
            streams,
            pending: None,
            missed: 0,
            types: None,
        }))
    }

    async fn redeliver(
        &self,
        subscriber: &str,
        event: &RecordedEvent,
    ) -> Result<(), TransportError> {
        self.check_open()?;
        let token = names::subscriber_token(subscriber)?;
        // The event id is in the duplicate window from its first publish;
        // a redelivery is a new message, not deduplicated.
        let headers = codec::headers_of(event, codec::Route::Redelivery);
        let subject = self.inner.names.redelivery_subject(&token);
        self.publish_messages(vec![(
            event.id(),
            subject.into(),
            headers,
            event.data().to_bytes(),
        )])
        .await
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        self.inner.dead_letters.clone()
    }

    async fn close(&self) -> Result<(), TransportError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // Unsettled deliveries go back to the server after the ack wait, as
        // after a crash; what was sent (acks, publishes) is flushed first.
        self.inner
            .client
            .drain()
            .await
            .map_err(|e| TransportError::connection(NAME, e))
    }
}

impl NatsTransport {
    /// Finds or creates a durable pull consumer and starts pulling from it.
    async fn open(
        &self,
        stream: &jetstream::stream::Stream<()>,
        config: consumer::pull::Config,
        batch: usize,
    ) -> Result<consumer::pull::Stream, TransportError> {
        let name = config.durable_name.clone().unwrap_or_default();
        let mut found: consumer::PullConsumer = stream
            .get_or_create_consumer(&name, config.clone())
            .await
            .map_err(|e| {
                TransportError::broker(NAME, format!("cannot declare consumer {name}: {e}"))
            })?;
        let info = found
            .info()
            .await
            .map_err(|e| TransportError::broker(NAME, e))?
            .config
            .clone();
        if info.filter_subject != config.filter_subject {
            return Err(TransportError::broker(
                NAME,
                format!(
                    "consumer {name} exists with filter subject {:?}, not {:?}",
                    info.filter_subject, config.filter_subject
                ),
            ));
        }
        // The last process to start decides the limits every process of the
        // group shares.
        if info.ack_wait != config.ack_wait || info.max_ack_pending != config.max_ack_pending {
            let mut update = config.clone();
            update.deliver_policy = info.deliver_policy;
            found = stream.create_consumer(update).await.map_err(|e| {
                TransportError::broker(NAME, format!("cannot update consumer {name}: {e}"))
            })?;
        }
        found
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| TransportError::broker(NAME, e))
    }
}

#[derive(Clone, Copy, Debug)]
enum Source {
    /// The consumer of the subscriber's `n`th filter subject.
    Filter(usize),
    /// The consumer of its redeliveries.
    Redelivery,
}

type Pulled = Result<jetstream::Message, consumer::pull::MessagesError>;

/// A consumer of one subscriber: its filter consumers and its redelivery
/// consumer merged.
struct NatsConsumer {
    transport: NatsTransport,
    spec: ConsumerSpec,
    root: String,
    filters: Vec<String>,
    streams: SelectAll<BoxStream<'static, (Source, Pulled)>>,
    /// A message taken from the streams whose large payload is being
    /// fetched: kept here, so that a cancelled `next` resumes with it.
    pending: Option<(Source, jetstream::Message)>,
    /// Heartbeats missed in a row.
    missed: u32,
    /// The event type decoded last, reused for the next message of that
    /// type.
    types: Option<herald::EventType>,
}

/// Missed heartbeats in a row (five seconds apart) after which a consumer
/// is opened anew.
const MAX_MISSED_HEARTBEATS: u32 = 3;

impl NatsConsumer {
    /// The delivery of a message whose event was decoded (or not); `None`
    /// for a message this consumer settles itself (not an event, or not
    /// for it).
    async fn deliver(
        &mut self,
        source: Source,
        message: jetstream::Message,
        decoded: Result<RecordedEvent, TransportError>,
    ) -> Option<Delivery> {
        let event = match decoded {
            Ok(event) => event,
            Err(err) => {
                // Not a Herald event: delivering it again would fail the
                // same way.
                tracing::warn!(
                    subscriber = %self.spec.name,
                    subject = %message.subject,
                    error = %err,
                    "dropping a message that is not a Herald event"
                );
                let _ = message.ack_with(jetstream::AckKind::Term).await;
                return None;
            }
        };
        let attempt = message
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(1))
            .unwrap_or(1);
        if let Source::Filter(index) = source {
            debug_assert!(message.subject.as_str().starts_with(&self.root));
            if !self.takes(index, &event) {
                // Under the filter but not the patterns (`a.#.z` filters
                // on `a.>`), or another filter's consumer handles it.
                let _ = message.ack().await;
                return None;
            }
        }
        let acker = NatsAcker {
            message: Some(message),
            dead_letters: Arc::clone(&self.transport.inner.dead_letters),
            pause: self.transport.inner.config.ack_wait,
        };
        Some(Delivery::new(event, attempt, Vec::new(), acker))
    }

    /// Whether the consumer of filter `index` hands the message on: the
    /// event's type matches a pattern, and no filter before this one (in
    /// the order every process agrees on) matches its subject, so that an
    /// event under two filters is handled once.
    fn takes(&self, index: usize, event: &RecordedEvent) -> bool {
        if !self.spec.matches(event.event_type()) {
            return false;
        }
        let first = self
            .filters
            .iter()
            .position(|f| names::subject_matches(f, event.event_type()));
        first == Some(index)
    }
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            if self.transport.inner.closed.load(Ordering::SeqCst) {
                return Err(TransportError::Closed(NAME));
            }
            let (source, message) = match self.pending.take() {
                Some(pending) => pending,
                None => {
                    // Polling a stream is cancel-safe: a message stays
                    // buffered in it until it is returned here.
                    let Some((source, pulled)) = self.streams.next().await else {
                        return Err(TransportError::connection(
                            NAME,
                            "the message streams ended",
                        ));
                    };
                    match pulled {
                        Ok(message) => {
                            self.missed = 0;
                            (source, message)
                        }
                        // The pull loop goes on after a missed heartbeat
                        // (a reconnect re-issues its request), and what it
                        // buffered stays deliverable; only a run of them
                        // means it is stuck.
                        Err(e)
                            if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat
                                && self.missed < MAX_MISSED_HEARTBEATS =>
                        {
                            self.missed += 1;
                            tracing::debug!(subscriber = %self.spec.name, "missed a heartbeat");
                            continue;
                        }
                        // Any other error (a deleted consumer, no
                        // responders) ends this consumer; the bus opens a
                        // new one, which finds or recreates the consumers.
                        Err(e) => return Err(TransportError::connection(NAME, e)),
                    }
                }
            };
            // Most messages carry their payload: decoded at once, from
            // the envelope borrowed from the message. One whose payload is
            // in the object store is kept in `pending` while it is fetched.
            let (decoded, object) = match codec::Envelope::parse(message.headers.as_ref()) {
                Ok(envelope) => match envelope.payload_object() {
                    None => (
                        Some(envelope.into_event(
                            message.subject.as_str(),
                            &message.payload,
                            &mut self.types,
                        )),
                        None,
                    ),
                    Some(name) => (None, Some(name.to_owned())),
                },
                Err(err) => (Some(Err(err)), None),
            };
            if let Some(decoded) = decoded {
                if let Some(delivery) = self.deliver(source, message, decoded).await {
                    return Ok(delivery);
                }
                continue;
            }
            let Some(name) = object else { continue };
            self.pending = Some((source, message));
            let fetched = self.transport.inner.payloads.get(&name).await;
            let Some((_, message)) = self.pending.take() else {
                continue;
            };
            let payload = match fetched {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::warn!(
                        subscriber = %self.spec.name,
                        object = %name,
                        error = %err,
                        "could not fetch a large payload; the event comes back after the ack wait"
                    );
                    let pause = self.transport.inner.config.ack_wait;
                    let _ = message.ack_with(jetstream::AckKind::Nak(Some(pause))).await;
                    continue;
                }
            };
            let decoded = codec::Envelope::parse(message.headers.as_ref()).and_then(|envelope| {
                envelope.into_event(message.subject.as_str(), &payload, &mut self.types)
            });
            if let Some(delivery) = self.deliver(source, message, decoded).await {
                return Ok(delivery);
            }
        }
    }
}

/// Settles one message with the server.
struct NatsAcker {
    /// `Some` until settled.
    message: Option<jetstream::Message>,
    dead_letters: Arc<NatsDeadLetters>,
    /// How long a message whose dead letter could not be written waits
    /// before it comes back: the ack wait.
    pause: Duration,
}

impl NatsAcker {
    async fn send(&mut self, kind: jetstream::AckKind) -> Result<(), TransportError> {
        let Some(message) = self.message.take() else {
            return Ok(());
        };
        message
            .ack_with(kind)
            .await
            .map_err(|e| TransportError::connection(NAME, e))
    }
}

impl Drop for NatsAcker {
    fn drop(&mut self) {
        // Dropped unsettled (the handler's task was cancelled, say): give it
        // back now rather than after the ack wait.
        if let Some(message) = self.message.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
            });
        }
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        // An empty reply is an ack, as `+ACK` is, in fewer bytes.
        let Some(message) = self.message.take() else {
            return Ok(());
        };
        message
            .ack()
            .await
            .map_err(|e| TransportError::connection(NAME, e))
    }

    async fn retry(
        mut self: Box<Self>,
        delay: Duration,
        _attempt: u32,
        _errors: Vec<AttemptError>,
    ) -> Result<(), TransportError> {
        // A nak cannot carry the errors; JetStream counts the attempts.
        self.send(jetstream::AckKind::Nak(Some(delay))).await
    }

    async fn dead_letter(
        mut self: Box<Self>,
        letter: NewDeadLetter,
        attempts: u32,
    ) -> Result<(), TransportError> {
        if let Err(err) = self.dead_letters.record_attempts(letter, attempts).await {
            // Not acked, so not lost; but given back after a pause, not at
            // once: the same failure would otherwise spin.
            let _ = self.send(jetstream::AckKind::Nak(Some(self.pause))).await;
            return Err(TransportError::broker(NAME, err));
        }
        self.send(jetstream::AckKind::Ack).await
    }

    async fn release(mut self: Box<Self>) -> Result<(), TransportError> {
        self.send(jetstream::AckKind::Nak(None)).await
    }
}
