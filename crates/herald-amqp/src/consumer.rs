//! Consuming a subscriber's queue, and settling each delivery with the
//! broker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use herald::transport::{Acker, Consumer, ConsumerSpec, Delivery, TransportError};
use herald::{AttemptError, NewDeadLetter, RecordedEvent};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueBindOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, message};
use tokio::time::Instant;

use crate::NAME;
use crate::codec::{self, Fields, header};
use crate::config;
use crate::link::{Outgoing, classify, durable, millis};
use crate::transport::Shared;

/// A retry queue outlives its longest delay by this much, so that a
/// message waiting in it is never deleted with it.
const RETRY_QUEUE_SLACK: Duration = Duration::from_secs(600);
/// A retry queue is declared again (which renews its expiry) when this
/// process last declared it longer ago than this: less than the slack, so
/// a queue is never deleted between a declare and a publish relying on it.
const REDECLARE_AFTER: Duration = Duration::from_secs(300);

/// A channel consuming a subscriber's queue.
pub(crate) struct Opened {
    channel: Channel,
    consumer: lapin::Consumer,
}

/// Declares the subscriber's queue and bindings (idempotently), sets the
/// prefetch and starts consuming.
pub(crate) async fn open(
    shared: &Shared,
    spec: &ConsumerSpec,
    queue: &str,
) -> Result<Opened, TransportError> {
    let channel = shared.link.channel().await?;
    channel
        .queue_declare(queue.into(), durable(), shared.link.queue_arguments())
        .await
        .map_err(classify)?;
    for pattern in &spec.topics {
        channel
            .queue_bind(
                queue.into(),
                shared.link.names.exchange.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(classify)?;
    }
    let prefetch = u16::try_from(spec.prefetch).unwrap_or(u16::MAX).max(1);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(classify)?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(classify)?;
    Ok(Opened { channel, consumer })
}

/// One consumer of a subscriber's queue.
///
/// `next` reads the lapin consumer's stream, which is cancel-safe; when the
/// channel or connection is gone it opens a new one (declaring the queue
/// and bindings again) within `next`. Cancelled during that, the half-open
/// channel is dropped, which closes it: the broker gives back whatever it
/// had sent to it, so nothing is lost.
pub(crate) struct AmqpConsumer {
    shared: Arc<Shared>,
    spec: ConsumerSpec,
    subscriber: Arc<str>,
    queue: Arc<str>,
    current: Option<Opened>,
    pause: Duration,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl AmqpConsumer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        spec: ConsumerSpec,
        queue: String,
        opened: Opened,
    ) -> Self {
        let closing = shared.link.closing.subscribe();
        Self {
            pause: shared.link.config.reconnect_min,
            subscriber: Arc::from(spec.name.as_str()),
            queue: Arc::from(queue),
            current: Some(opened),
            spec,
            shared,
            closing,
        }
    }

    /// Opens the consumer again after its channel went away, waiting
    /// between failed attempts.
    async fn reopen(&mut self) -> Result<(), TransportError> {
        loop {
            match open(&self.shared, &self.spec, &self.queue).await {
                Ok(opened) => {
                    tracing::info!(subscriber = %self.subscriber, "broker consumer opened again");
                    self.current = Some(opened);
                    self.pause = self.shared.link.config.reconnect_min;
                    return Ok(());
                }
                Err(TransportError::Closed(_)) => return Err(TransportError::Closed(NAME)),
                Err(err) => {
                    tracing::warn!(
                        subscriber = %self.subscriber,
                        error = %err,
                        retry_in_ms = u64::try_from(self.pause.as_millis()).unwrap_or(u64::MAX),
                        "could not open the broker consumer; trying again"
                    );
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(self.shared.link.config.reconnect_max);
                }
            }
        }
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        // Closing the channel gives its unsettled deliveries back at once.
        if let Some(opened) = self.current.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = opened.channel.close(200, "consumer dropped".into()).await;
            });
        }
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            if self.shared.link.is_closed() {
                return Err(TransportError::Closed(NAME));
            }
            if self.current.is_none() {
                self.reopen().await?;
            }
            let Some(opened) = self.current.as_mut() else {
                continue;
            };
            let item = tokio::select! {
                () = crate::link::closed(&mut self.closing) => return Err(TransportError::Closed(NAME)),
                item = opened.consumer.next() => item,
            };
            match item {
                Some(Ok(delivery)) => {
                    if let Some(delivery) =
                        into_delivery(&self.shared, &self.subscriber, &self.queue, delivery).await
                    {
                        return Ok(delivery);
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(subscriber = %self.subscriber, error = %err, "broker consumer failed; opening it again");
                    self.current = None;
                }
                None => {
                    tracing::warn!(subscriber = %self.subscriber, "broker cancelled the consumer; opening it again");
                    self.current = None;
                }
            }
        }
    }
}

/// The bus's view of a message; a message that is not a Herald event is
/// rejected (dropped) with an error in the log, as no handler could take
/// it and requeueing it would loop for ever.
async fn into_delivery(
    shared: &Arc<Shared>,
    subscriber: &Arc<str>,
    queue: &Arc<str>,
    delivery: message::Delivery,
) -> Option<Delivery> {
    let message::Delivery {
        properties,
        data,
        acker,
        ..
    } = delivery;
    let fields = Fields::new(&properties);
    let decoded = codec::decode(&properties, data)
        .and_then(|event| Ok((event, fields.attempt(), fields.errors()?)));
    match decoded {
        Ok((event, attempt, errors)) => Some(Delivery::new(
            event.clone(),
            attempt,
            errors,
            AmqpAcker {
                shared: Arc::clone(shared),
                acker: Some(acker),
                subscriber: Arc::clone(subscriber),
                queue: Arc::clone(queue),
                event,
            },
        )),
        Err(reason) => {
            tracing::error!(
                subscriber = %subscriber,
                message_id = ?properties.message_id(),
                reason,
                "dropping a message that is not a herald event"
            );
            let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
            None
        }
    }
}

/// Settles one delivery.
struct AmqpAcker {
    shared: Arc<Shared>,
    /// `None` once settled.
    acker: Option<lapin::Acker>,
    subscriber: Arc<str>,
    queue: Arc<str>,
    /// For a retry's copy.
    event: RecordedEvent,
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        // Dropped unsettled: give it back now rather than when the channel
        // closes, so that another consumer gets it.
        if let Some(acker) = self.acker.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            });
        }
    }
}

impl AmqpAcker {
    async fn settle(
        mut self: Box<Self>,
        how: impl AsyncFnOnce(&lapin::Acker) -> lapin::Result<bool>,
    ) -> Result<(), TransportError> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        match how(&acker).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(TransportError::connection(
                NAME,
                "the delivery's channel is closed; the broker delivers it again",
            )),
            Err(err) => Err(classify(err)),
        }
    }

    /// Makes sure the retry queue exists; see [`REDECLARE_AFTER`].
    async fn retry_queue(&self, bucket: Duration) -> Result<String, TransportError> {
        let link = &self.shared.link;
        let name = link.names.retry_queue(&self.subscriber, bucket);
        let fresh = self
            .shared
            .retry_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .is_some_and(|at| at.elapsed() < REDECLARE_AFTER);
        if fresh {
            return Ok(name);
        }
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), millis(bucket));
        args.insert("x-dead-letter-exchange".into(), codec::text(""));
        args.insert("x-dead-letter-routing-key".into(), codec::text(&self.queue));
        args.insert("x-expires".into(), millis(bucket + RETRY_QUEUE_SLACK));
        let channel = link.channel().await?;
        channel
            .queue_declare(name.as_str().into(), durable(), args)
            .await
            .map_err(classify)?;
        let _ = channel.close(200, "declared".into()).await;
        self.shared
            .retry_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), Instant::now());
        Ok(name)
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.settle(async |a| a.ack(BasicAckOptions::default()).await)
            .await
    }

    /// Publishes a copy to the subscriber's retry queue for `delay` (rounded
    /// up to a bucket), confirmed, then acknowledges the original: the
    /// broker moves the copy back to the subscriber's queue when its delay
    /// is over. A zero delay goes straight back to the queue's tail.
    async fn retry(
        self: Box<Self>,
        delay: Duration,
        attempt: u32,
        errors: Vec<AttemptError>,
    ) -> Result<(), TransportError> {
        let target = if delay.is_zero() {
            self.queue.to_string()
        } else {
            self.retry_queue(config::bucket(delay)).await?
        };
        let errors = serde_json::to_string(&errors).map_err(|e| TransportError::broker(NAME, e))?;
        let event = &self.event;
        let properties = codec::properties_with(
            event,
            [
                (header::ATTEMPT, codec::number(u64::from(attempt))),
                (header::ERRORS, codec::text(&errors)),
            ],
        );
        let sent = self
            .shared
            .link
            .publish(&[Outgoing {
                exchange: "",
                routing_key: &target,
                mandatory: true,
                body: event.data().as_bytes(),
                properties,
                event_id: event.id(),
            }])
            .await;
        if let Err(err) = sent {
            // The queue may have gone (deleted by hand): declare it next time.
            self.shared
                .retry_queues
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&target);
            return Err(err);
        }
        self.settle(async |a| a.ack(BasicAckOptions::default()).await)
            .await
    }

    async fn dead_letter(
        self: Box<Self>,
        letter: NewDeadLetter,
        attempts: u32,
    ) -> Result<(), TransportError> {
        crate::dead_letters::record(&self.shared, letter, Some(attempts))
            .await
            .map_err(|e| TransportError::broker(NAME, e))?;
        self.settle(async |a| a.ack(BasicAckOptions::default()).await)
            .await
    }

    async fn release(self: Box<Self>) -> Result<(), TransportError> {
        self.settle(async |a| {
            a.nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
        })
        .await
    }
}
