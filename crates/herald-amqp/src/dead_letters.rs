//! Dead letters kept in a queue on the broker.
//!
//! # Design
//!
//! Each dead letter is one persistent message in `<prefix>.dead-letters`:
//! the event's message (body and headers as published) plus headers for
//! the dead letter's id, subscriber, attempts, reason, every attempt's
//! error (JSON) and the first and last failure times.
//!
//! AMQP 0-9-1 has no way to look at a queue without taking its messages:
//! `basic.get` without an ack hands a message out and hides it from
//! everyone else until it is given back. Two readers at once would each
//! see part of the queue, and two writers updating the same dead letter
//! would both miss the other's copy. So every operation runs under a lock
//! held on the broker itself: an *exclusive* queue,
//! `<prefix>.dead-letters.lock`, which only one connection at a time can
//! declare (the others get `RESOURCE_LOCKED` and wait). Holding it, an
//! operation takes every message without acking, which gives it the whole
//! queue, then:
//!
//! - reads give everything back (one `basic.nack`, requeue, `multiple`);
//! - `remove` acks the removed one and gives the rest back;
//! - `record` publishes the new or updated dead letter (confirmed), then
//!   acks the copy it replaces, then gives the rest back;
//!
//! and finally deletes the lock queue. The broker deletes an exclusive queue
//! when its connection closes, so a process that crashes while holding the
//! lock releases it, and the messages it held go back to the queue. An
//! operation whose future is dropped half-way (a timeout, a cancelled
//! request) releases it too, from a task of its own.
//!
//! Between the confirmed publish of an update and the ack of the old copy,
//! a crash leaves two copies with the same id; readers keep the one with
//! more attempts and the next operation removes the other. Nothing is lost.
//!
//! Every operation reads the whole queue, one round trip per dead letter:
//! fine for the hundreds or thousands of dead letters an application has
//! to look at, not a store for millions.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use herald::{
    DeadLetter, DeadLetterError, DeadLetterQuery, DeadLetterStore, EventId, NewDeadLetter,
};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, ErrorKind};
use tokio::time::Instant;
use uuid::Uuid;

use crate::codec;
use crate::link::{Outgoing, classify, durable};
use crate::transport::Shared;

/// The dead letters of an [`AmqpTransport`](crate::AmqpTransport), in a
/// queue on the broker. See the [module docs](self) for how concurrent
/// use stays correct.
#[derive(Clone)]
pub struct AmqpDeadLetterStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AmqpDeadLetterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpDeadLetterStore")
            .field("queue", &self.shared.link.names.dead_letters)
            .finish()
    }
}

impl AmqpDeadLetterStore {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn store_error(e: impl Into<herald::BoxError>) -> DeadLetterError {
    DeadLetterError::Store(e.into())
}

/// The whole dead-letter queue, taken under the lock.
struct Scan<'a> {
    shared: &'a Shared,
    /// This process's turn; moved to the clean-up when dropped unfinished,
    /// so that no other task of the process runs before the lock is gone.
    local: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// The connection holding the broker-side lock.
    connection: Arc<lapin::Connection>,
    channel: Channel,
    /// Whether the lock was released (or its release is under way).
    done: bool,
    /// The newest copy of each dead letter, with its delivery tag.
    letters: HashMap<Uuid, (u64, DeadLetter)>,
    /// Tags taken and not yet acked.
    held: BTreeSet<u64>,
}

fn is_locked(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)))
}

impl<'a> Scan<'a> {
    async fn take(shared: &'a Shared) -> Result<Self, DeadLetterError> {
        let mut local = Some(Arc::clone(&shared.dead_letter_lock).lock_owned().await);
        let link = &shared.link;
        let deadline = Instant::now() + link.config.reconnect_timeout;
        let mut pause = Duration::from_millis(5);
        let mut scan = loop {
            let connection = link.connection().await.map_err(store_error)?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| store_error(classify(e)))?;
            // Made before asking for the lock: if this future is dropped
            // while the broker grants it, the scan's drop releases it.
            let mut scan = Scan {
                shared,
                local: local.take(),
                connection,
                channel,
                done: false,
                letters: HashMap::new(),
                held: BTreeSet::new(),
            };
            let declared = scan
                .channel
                .queue_declare(
                    link.names.lock.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(_) => break scan,
                Err(err) if is_locked(&err) && Instant::now() < deadline => {
                    // Another process holds it; the broker closed this channel.
                    scan.done = true;
                    local = scan.local.take();
                    drop(scan);
                    // Spread the waiters out so they do not retry in step.
                    let jitter = Duration::from_micros(u64::from(
                        Utc::now().timestamp_subsec_micros() % 5_000,
                    ));
                    tokio::time::sleep(pause + jitter).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(err) => {
                    scan.abandon().await;
                    return Err(store_error(classify(err)));
                }
            }
        };
        if let Err(err) = scan.read().await {
            scan.abandon().await;
            return Err(err);
        }
        Ok(scan)
    }

    async fn read(&mut self) -> Result<(), DeadLetterError> {
        let queue = self.shared.link.names.dead_letters.as_str();
        // Declared again in case it expired or was deleted by hand.
        self.channel
            .queue_declare(queue.into(), durable(), self.shared.link.queue_arguments())
            .await
            .map_err(|e| store_error(classify(e)))?;
        let mut stale = Vec::new();
        loop {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| store_error(classify(e)))?;
            let Some(got) = got else { break };
            let remaining = got.message_count;
            let delivery = got.delivery;
            let tag = delivery.delivery_tag;
            self.held.insert(tag);
            match codec::decode_dead_letter(&delivery.properties, delivery.data) {
                Ok(letter) => {
                    let newer = |old: &DeadLetter| {
                        (letter.attempts, letter.last_failed_at)
                            > (old.attempts, old.last_failed_at)
                    };
                    match self.letters.get(&letter.id) {
                        Some((old_tag, old)) if newer(old) => {
                            stale.push(*old_tag);
                            self.letters.insert(letter.id, (tag, letter));
                        }
                        Some(_) => stale.push(tag),
                        None => {
                            self.letters.insert(letter.id, (tag, letter));
                        }
                    }
                }
                Err(reason) => {
                    // Left in the queue for a person to look at.
                    tracing::warn!(
                        reason,
                        "a message in the dead-letter queue is not a dead letter"
                    );
                }
            }
            if remaining == 0 {
                break;
            }
        }
        for tag in stale {
            self.ack(tag).await?;
        }
        Ok(())
    }

    async fn ack(&mut self, tag: u64) -> Result<(), DeadLetterError> {
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(|e| store_error(classify(e)))?;
        self.held.remove(&tag);
        Ok(())
    }

    /// Dead letters oldest first.
    fn sorted(&self) -> Vec<&DeadLetter> {
        let mut all: Vec<&DeadLetter> = self.letters.values().map(|(_, l)| l).collect();
        all.sort_by_key(|l| (l.first_failed_at, l.id));
        all
    }

    async fn publish(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let link = &self.shared.link;
        let event = &letter.event;
        link.publish(&[Outgoing {
            exchange: "",
            routing_key: &link.names.dead_letters,
            mandatory: true,
            body: event.data().as_bytes(),
            properties: codec::properties_with(event, codec::dead_letter_headers(letter)),
            event_id: event.id(),
        }])
        .await
        .map_err(store_error)
    }

    /// Gives back what is held and releases the lock, in that order on one
    /// channel, so the next holder finds every message in place.
    async fn finish(mut self) -> Result<(), DeadLetterError> {
        let result = self.release().await;
        if result.is_err() {
            self.abandon().await;
        }
        result
    }

    async fn release(&mut self) -> Result<(), DeadLetterError> {
        if let Some(&last) = self.held.last() {
            self.channel
                .basic_nack(
                    last,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
                .map_err(|e| store_error(classify(e)))?;
            self.held.clear();
        }
        self.channel
            .queue_delete(
                self.shared.link.names.lock.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .map_err(|e| store_error(classify(e)))?;
        self.done = true;
        let _ = self.channel.close(200, "done".into()).await;
        Ok(())
    }

    /// After a failure: closing the channel gives back what it held; the
    /// lock is deleted from a new channel (if the connection is gone, the
    /// broker deleted it with the connection).
    async fn abandon(&mut self) {
        self.done = true;
        unlock(
            self.channel.clone(),
            Arc::clone(&self.connection),
            self.shared.link.names.lock.clone(),
        )
        .await;
    }
}

/// Releases the lock after a failure or a cancelled operation: closing the
/// channel gives back what it held; the lock is then deleted from another
/// channel (if the connection is gone, the broker deleted it with it).
async fn unlock(channel: Channel, connection: Arc<lapin::Connection>, lock: String) {
    let _ = channel.close(200, "abandoned".into()).await;
    if connection.status().connected()
        && let Ok(channel) = connection.create_channel().await
    {
        let _ = channel
            .queue_delete(lock.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel.close(200, "done".into()).await;
    }
}

impl Drop for Scan<'_> {
    fn drop(&mut self) {
        // Dropped half-way (the caller's future was cancelled): without
        // this, the broker would keep the lock for as long as the connection
        // lives, and every other process would wait on it.
        if self.done {
            return;
        }
        let (channel, connection) = (self.channel.clone(), Arc::clone(&self.connection));
        let lock = self.shared.link.names.lock.clone();
        let local = self.local.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                unlock(channel, connection, lock).await;
                drop(local);
            });
        }
    }
}

/// Records a failure: a new dead letter, or the update of the one this
/// subscriber has for this event. `attempts` is how many attempts the
/// failure counts (the errors' count when `None`).
pub(crate) async fn record(
    shared: &Shared,
    letter: NewDeadLetter,
    attempts: Option<u32>,
) -> Result<DeadLetter, DeadLetterError> {
    let mut scan = Scan::take(shared).await?;
    let result = record_in(&mut scan, letter, attempts).await;
    match result {
        Ok(letter) => scan.finish().await.map(|()| letter),
        Err(err) => {
            scan.abandon().await;
            Err(err)
        }
    }
}

async fn record_in(
    scan: &mut Scan<'_>,
    letter: NewDeadLetter,
    attempts: Option<u32>,
) -> Result<DeadLetter, DeadLetterError> {
    let now = letter.errors.last().map_or_else(Utc::now, |e| e.at);
    let counted = attempts
        .unwrap_or_else(|| u32::try_from(letter.errors.len()).unwrap_or(u32::MAX))
        .max(1);
    let existing = scan
        .letters
        .values()
        .find(|(_, l)| l.subscriber == letter.subscriber && l.event.id() == letter.event.id())
        .map(|(tag, l)| (*tag, l.clone()));
    let (replaced, dead) = match existing {
        Some((tag, mut dead)) => {
            dead.attempts = dead.attempts.saturating_add(counted);
            dead.errors.extend(letter.errors);
            dead.reason = letter.reason;
            dead.last_failed_at = now;
            (Some(tag), dead)
        }
        None => {
            let first = letter.errors.first().map_or(now, |e| e.at);
            let dead = DeadLetter {
                id: *EventId::new().as_uuid(),
                subscriber: letter.subscriber,
                event: letter.event,
                attempts: counted,
                reason: letter.reason,
                errors: letter.errors,
                first_failed_at: first,
                last_failed_at: now,
            };
            (None, dead)
        }
    };
    scan.publish(&dead).await?;
    if let Some(tag) = replaced {
        scan.ack(tag).await?;
    }
    Ok(dead)
}

/// Runs a read-only look at the queue.
async fn look<T>(shared: &Shared, f: impl FnOnce(&Scan<'_>) -> T) -> Result<T, DeadLetterError> {
    let scan = Scan::take(shared).await?;
    let out = f(&scan);
    scan.finish().await?;
    Ok(out)
}

#[async_trait]
impl DeadLetterStore for AmqpDeadLetterStore {
    async fn record(&self, letter: NewDeadLetter) -> Result<DeadLetter, DeadLetterError> {
        record(&self.shared, letter, None).await
    }

    async fn list(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, DeadLetterError> {
        look(&self.shared, |scan| {
            scan.sorted()
                .into_iter()
                .filter(|l| query.matches(l))
                .take(query.limit.unwrap_or(usize::MAX))
                .cloned()
                .collect()
        })
        .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        look(&self.shared, |scan| {
            scan.letters.get(&id).map(|(_, l)| l.clone())
        })
        .await
    }

    async fn remove(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        let mut scan = Scan::take(&self.shared).await?;
        let Some((tag, letter)) = scan.letters.remove(&id) else {
            scan.finish().await?;
            return Ok(None);
        };
        if let Err(err) = scan.ack(tag).await {
            scan.abandon().await;
            return Err(err);
        }
        scan.finish().await?;
        Ok(Some(letter))
    }
}
