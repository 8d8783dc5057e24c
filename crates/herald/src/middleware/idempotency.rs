//! Skips events a subscriber already handled.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{ErrorKind, LedgerError};
use crate::{Context, Disposition, EventId, Handler, HandlerError, HandlerResult, RecordedEvent};

/// Remembers which events each subscriber handled.
///
/// Delivery is at least once, so a subscriber can see an event twice (a
/// retry from the dead letters, a replay, a broker redelivery). The
/// [`IdempotencyLayer`] asks the ledger before handling and tells it after.
/// Stores provide durable ledgers; [`MemoryLedger`] keeps them in memory.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Whether `subscriber` already handled `event`.
    async fn contains(&self, subscriber: &str, event: EventId) -> Result<bool, LedgerError>;

    /// Records that `subscriber` handled `event`.
    async fn insert(&self, subscriber: &str, event: EventId) -> Result<(), LedgerError>;
}

/// A ledger in memory that remembers the most recent `capacity` handled
/// events (1,000,000 by default) and forgets the oldest beyond that, so that
/// memory stays bounded.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herald::{EventId, Ledger, MemoryLedger};
///
/// let ledger = MemoryLedger::with_capacity(2);
/// let (a, b, c) = (EventId::new(), EventId::new(), EventId::new());
/// for id in [a, b, c] {
///     ledger.insert("billing", id).await.unwrap();
/// }
/// assert!(!ledger.contains("billing", a).await.unwrap()); // forgotten
/// assert!(ledger.contains("billing", c).await.unwrap());
/// assert!(!ledger.contains("shipping", c).await.unwrap());
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryLedger {
    inner: Arc<Mutex<LedgerState>>,
}

struct LedgerState {
    capacity: usize,
    seen: HashSet<(Arc<str>, EventId)>,
    order: VecDeque<(Arc<str>, EventId)>,
}

impl MemoryLedger {
    /// A ledger remembering up to 1,000,000 events.
    pub fn new() -> Self {
        Self::with_capacity(1_000_000)
    }

    /// A ledger remembering up to `capacity` events (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LedgerState {
                capacity: capacity.max(1),
                seen: HashSet::new(),
                order: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn contains(&self, subscriber: &str, event: EventId) -> Result<bool, LedgerError> {
        Ok(self.lock().seen.contains(&(Arc::from(subscriber), event)))
    }

    async fn insert(&self, subscriber: &str, event: EventId) -> Result<(), LedgerError> {
        let mut g = self.lock();
        let key = (Arc::<str>::from(subscriber), event);
        if g.seen.insert(key.clone()) {
            g.order.push_back(key);
            while g.order.len() > g.capacity {
                if let Some(old) = g.order.pop_front() {
                    g.seen.remove(&old);
                }
            }
        }
        Ok(())
    }
}

/// Skips events already handled; see [`Idempotency`].
#[derive(Clone)]
pub struct IdempotencyLayer {
    ledger: Arc<dyn Ledger>,
}

impl IdempotencyLayer {
    /// A layer asking `ledger`.
    pub fn new(ledger: Arc<dyn Ledger>) -> Self {
        Self { ledger }
    }
}

impl<H> tower_layer::Layer<H> for IdempotencyLayer {
    type Service = Idempotency<H>;

    fn layer(&self, inner: H) -> Idempotency<H> {
        Idempotency {
            inner,
            ledger: Arc::clone(&self.ledger),
        }
    }
}

/// Skips an event whose id the ledger holds for this subscriber; records the
/// id once the inner handler succeeded (or skipped it).
///
/// # Delivery guarantees
///
/// The check and the record are two steps, so two deliveries of one event
/// running at the same moment can both be handled; stores offer an inbox
/// that records the id in the handler's own transaction for exactly-once
/// effects. A failure of the ledger when checking is a retryable error of
/// kind [`Ledger`](ErrorKind::Ledger); a failure when recording is logged,
/// and the delivery counts as handled.
pub struct Idempotency<H> {
    inner: H,
    ledger: Arc<dyn Ledger>,
}

impl<H> Idempotency<H> {
    /// The inner handler.
    pub fn get_ref(&self) -> &H {
        &self.inner
    }

    /// The inner handler, by value.
    pub fn into_inner(self) -> H {
        self.inner
    }
}

impl<H: Handler> Handler for Idempotency<H> {
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        let seen = self
            .ledger
            .contains(ctx.subscriber(), event.id())
            .await
            .map_err(|e| HandlerError::retry(e).with_kind(ErrorKind::Ledger))?;
        if seen {
            tracing::debug!(
                event_id = %event.id(),
                event_type = event.event_type(),
                subscriber = ctx.subscriber(),
                "event already handled, skipped"
            );
            return Ok(());
        }
        let result = self.inner.handle(event, ctx).await;
        let handled = match &result {
            Ok(()) => true,
            Err(e) => e.disposition() == Disposition::Skip,
        };
        if handled {
            if let Err(e) = self.ledger.insert(ctx.subscriber(), event.id()).await {
                tracing::error!(
                    event_id = %event.id(),
                    event_type = event.event_type(),
                    subscriber = ctx.subscriber(),
                    error = %e,
                    "could not record the event as handled; a redelivery will run it again"
                );
            }
        }
        result
    }
}
