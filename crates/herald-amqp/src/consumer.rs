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
use tokio::sync::mpsc;
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
/// A task of its own holds the channel, opens it again after a dropped
/// connection, and hands deliveries over through a channel: so `next` is
/// a plain receive, which is cancel-safe.
pub(crate) struct AmqpConsumer {
    rx: mpsc::Receiver<Result<Delivery, TransportError>>,
}

impl AmqpConsumer {
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        spec: ConsumerSpec,
        queue: String,
        opened: Opened,
    ) -> Self {
        let (tx, rx) = mpsc::channel(spec.prefetch.clamp(1, 256));
        tokio::spawn(pump(shared, spec, queue, opened, tx));
        Self { rx }
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        match self.rx.recv().await {
            Some(next) => next,
            None => Err(TransportError::Closed(NAME)),
        }
    }
}

async fn pump(
    shared: Arc<Shared>,
    spec: ConsumerSpec,
    queue: String,
    opened: Opened,
    tx: mpsc::Sender<Result<Delivery, TransportError>>,
) {
    let subscriber: Arc<str> = Arc::from(spec.name.as_str());
    let queue: Arc<str> = Arc::from(queue);
    let mut current = Some(opened);
    let mut pause = shared.link.config.reconnect_min;
    let mut closing = shared.link.closing.subscribe();
    loop {
        let Opened {
            channel,
            mut consumer,
        } = match current.take() {
            Some(opened) => opened,
            None => {
                let opening = tokio::select! {
                    () = tx.closed() => return,
                    opening = open(&shared, &spec, &queue) => opening,
                };
                match opening {
                    Ok(opened) => {
                        tracing::info!(subscriber = %subscriber, "broker consumer opened again");
                        pause = shared.link.config.reconnect_min;
                        opened
                    }
                    Err(TransportError::Closed(_)) => {
                        let _ = tx.send(Err(TransportError::Closed(NAME))).await;
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(
                            subscriber = %subscriber,
                            error = %err,
                            retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                            "could not open the broker consumer; trying again"
                        );
                        tokio::select! {
                            () = tx.closed() => return,
                            () = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(shared.link.config.reconnect_max);
                        continue;
                    }
                }
            }
        };
        loop {
            let item = tokio::select! {
                () = tx.closed() => {
                    // Unsettled deliveries go back to the queue with the channel.
                    let _ = channel.close(200, "consumer dropped".into()).await;
                    return;
                }
                () = crate::link::closed(&mut closing) => {
                    let _ = tx.send(Err(TransportError::Closed(NAME))).await;
                    return;
                }
                item = consumer.next() => item,
            };
            match item {
                Some(Ok(delivery)) => {
                    let Some(delivery) = into_delivery(&shared, &subscriber, &queue, delivery).await
                    else {
                        continue;
                    };
                    if tx.send(Ok(delivery)).await.is_err() {
                        let _ = channel.close(200, "consumer dropped".into()).await;
                        return;
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(subscriber = %subscriber, error = %err, "broker consumer failed; opening it again");
                    break;
                }
                None => {
                    tracing::warn!(subscriber = %subscriber, "broker cancelled the consumer; opening it again");
                    break;
                }
            }
        }
        if shared.link.is_closed() {
            let _ = tx.send(Err(TransportError::Closed(NAME))).await;
            return;
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
            let _ = acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
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
        if let Some(acker) = self.acker.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
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
        let errors = serde_json::to_string(&errors)
            .map_err(|e| TransportError::broker(NAME, e))?;
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
