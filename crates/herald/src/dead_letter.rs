//! Dead letters: events a subscriber gave up on, kept to inspect, retry or
//! discard.
//!
//! A dead letter is keyed by subscriber and event: when the same event fails
//! again for the same subscriber (after a retry from the dead letters, say),
//! its dead letter is updated (attempts added, errors appended) rather than
//! copied.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{AttemptError, DeadLetterError};
use crate::event::RecordedEvent;
use crate::id::EventId;
use crate::topic::TopicPattern;

/// An event a subscriber gave up on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The dead letter's own id.
    pub id: Uuid,
    /// The subscriber that gave up.
    pub subscriber: String,
    /// The event.
    pub event: RecordedEvent,
    /// How many attempts were made, over every time the event was tried.
    pub attempts: u32,
    /// Why it was given up: the last error's message.
    pub reason: String,
    /// Every failed attempt's error, oldest first.
    pub errors: Vec<AttemptError>,
    /// When the first attempt failed.
    pub first_failed_at: DateTime<Utc>,
    /// When the last attempt failed.
    pub last_failed_at: DateTime<Utc>,
}

/// A failure to record as a dead letter.
#[derive(Clone, Debug)]
pub struct NewDeadLetter {
    /// The subscriber that gave up.
    pub subscriber: String,
    /// The event.
    pub event: RecordedEvent,
    /// Why it was given up.
    pub reason: String,
    /// The failed attempts, oldest first (at least one).
    pub errors: Vec<AttemptError>,
}

/// Which dead letters to list.
///
/// # Examples
///
/// ```
/// use herald::DeadLetterQuery;
///
/// let query = DeadLetterQuery::default().subscriber("billing").limit(50);
/// assert_eq!(query.subscriber.as_deref(), Some("billing"));
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct DeadLetterQuery {
    /// Only this subscriber's.
    pub subscriber: Option<String>,
    /// Only events whose type matches.
    pub event_type: Option<TopicPattern>,
    /// Only dead letters with an error message containing this text.
    pub error: Option<String>,
    /// Only dead letters whose last failure is at or after this time.
    pub failed_since: Option<DateTime<Utc>>,
    /// Only dead letters whose last failure is before this time.
    pub failed_until: Option<DateTime<Utc>>,
    /// At most this many, oldest first.
    pub limit: Option<usize>,
    /// Only dead letters after this key in listing order, the key of a
    /// page's last dead letter: its first failure time and id (see
    /// [`after`](Self::after)).
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

impl DeadLetterQuery {
    /// Only this subscriber's dead letters.
    pub fn subscriber(mut self, name: impl Into<String>) -> Self {
        self.subscriber = Some(name.into());
        self
    }

    /// Only events whose type matches `pattern`.
    pub fn event_type(mut self, pattern: TopicPattern) -> Self {
        self.event_type = Some(pattern);
        self
    }

    /// Only dead letters with an error message containing `text`.
    pub fn error(mut self, text: impl Into<String>) -> Self {
        self.error = Some(text.into());
        self
    }

    /// Only dead letters whose last failure is in `[since, until)`; either
    /// bound may be open.
    pub fn failed_between(
        mut self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Self {
        self.failed_since = since;
        self.failed_until = until;
        self
    }

    /// At most `limit` dead letters.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only the dead letters listed after `letter`: the next page after a
    /// page that ended with it. Paging stays stable while dead letters are
    /// added, retried or discarded.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herald::{DeadLetterQuery, DeadLetterStore, MemoryDeadLetterStore};
    ///
    /// let store = MemoryDeadLetterStore::new();
    /// let mut query = DeadLetterQuery::default().limit(50);
    /// loop {
    ///     let page = store.list(&query).await.unwrap();
    ///     let Some(last) = page.last() else { break };
    ///     query = query.after(last);
    /// }
    /// # }
    /// ```
    pub fn after(mut self, letter: &DeadLetter) -> Self {
        self.after = Some((letter.first_failed_at, letter.id));
        self
    }

    /// Whether `letter` passes the filters (not the limit). Stores that
    /// cannot filter in their query language filter with this.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.subscriber
            .as_deref()
            .is_none_or(|s| s == letter.subscriber)
            && self
                .event_type
                .as_ref()
                .is_none_or(|p| p.matches(letter.event.event_type()))
            && self
                .error
                .as_deref()
                .is_none_or(|text| letter.errors.iter().any(|e| e.message.contains(text)))
            && self.failed_since.is_none_or(|t| letter.last_failed_at >= t)
            && self.failed_until.is_none_or(|t| letter.last_failed_at < t)
            && self
                .after
                .is_none_or(|key| (letter.first_failed_at, letter.id) > key)
    }
}

/// Where dead letters are kept.
///
/// # Contract
///
/// - [`record`](Self::record) stores a new dead letter, or, when one exists for
///   the same subscriber and event id, adds the attempts, appends the errors
///   and updates the reason and the last failure time, keeping its id.
/// - [`list`](Self::list) returns dead letters oldest first (by first
///   failure).
/// - [`remove`](Self::remove) returns the removed dead letter, or `None`.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Records a failure; see the contract above.
    async fn record(&self, letter: NewDeadLetter) -> Result<DeadLetter, DeadLetterError>;

    /// Lists dead letters.
    async fn list(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, DeadLetterError>;

    /// One dead letter by id.
    async fn get(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError>;

    /// Removes a dead letter.
    async fn remove(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError>;

    /// How many dead letters each subscriber has; subscribers with none are
    /// absent.
    ///
    /// The default lists every dead letter; stores that can count in their
    /// query language do so instead.
    async fn counts(&self) -> Result<BTreeMap<String, u64>, DeadLetterError> {
        let mut counts = BTreeMap::new();
        for letter in self.list(&DeadLetterQuery::default()).await? {
            *counts.entry(letter.subscriber).or_insert(0) += 1;
        }
        Ok(counts)
    }
}

/// Dead letters in memory: lost when the process ends.
///
/// # Examples
///
/// ```
/// use herald::{DeadLetterStore, MemoryDeadLetterStore};
///
/// let store = MemoryDeadLetterStore::new();
/// ```
#[derive(Default, Clone)]
pub struct MemoryDeadLetterStore {
    inner: Arc<Mutex<MemoryLetters>>,
}

#[derive(Default)]
struct MemoryLetters {
    by_id: HashMap<Uuid, DeadLetter>,
    by_key: HashMap<(String, EventId), Uuid>,
    /// Dead letters in listing order: by first failure, then id.
    order: BTreeMap<(DateTime<Utc>, Uuid), ()>,
}

impl MemoryDeadLetterStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryLetters> {
        // A panic while holding this lock cannot leave the maps inconsistent
        // halfway (each update is a few inserts), so a poisoned lock is used.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl DeadLetterStore for MemoryDeadLetterStore {
    async fn record(&self, letter: NewDeadLetter) -> Result<DeadLetter, DeadLetterError> {
        let mut g = self.lock();
        let key = (letter.subscriber.clone(), letter.event.id());
        let now = letter.errors.last().map(|e| e.at).unwrap_or_else(Utc::now);
        let attempts = u32::try_from(letter.errors.len())
            .unwrap_or(u32::MAX)
            .max(1);
        if let Some(id) = g.by_key.get(&key).copied() {
            if let Some(existing) = g.by_id.get_mut(&id) {
                existing.attempts = existing.attempts.saturating_add(attempts);
                existing.errors.extend(letter.errors);
                existing.reason = letter.reason;
                existing.last_failed_at = now;
                return Ok(existing.clone());
            }
        }
        let first = letter.errors.first().map(|e| e.at).unwrap_or(now);
        let id = *EventId::new().as_uuid();
        let dead = DeadLetter {
            id,
            subscriber: letter.subscriber,
            event: letter.event,
            attempts,
            reason: letter.reason,
            errors: letter.errors,
            first_failed_at: first,
            last_failed_at: now,
        };
        g.by_key.insert(key, id);
        g.order.insert((dead.first_failed_at, id), ());
        g.by_id.insert(id, dead.clone());
        Ok(dead)
    }

    async fn list(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let g = self.lock();
        let from = match query.after {
            Some(key) => std::ops::Bound::Excluded(key),
            None => std::ops::Bound::Unbounded,
        };
        Ok(g.order
            .range((from, std::ops::Bound::Unbounded))
            .map(|(key, ())| key)
            .filter_map(|(_, id)| g.by_id.get(id))
            .filter(|l| query.matches(l))
            .take(query.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn get(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        Ok(self.lock().by_id.get(&id).cloned())
    }

    async fn remove(&self, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        let mut g = self.lock();
        let removed = g.by_id.remove(&id);
        if let Some(letter) = &removed {
            g.by_key
                .remove(&(letter.subscriber.clone(), letter.event.id()));
            g.order.remove(&(letter.first_failed_at, id));
        }
        Ok(removed)
    }

    async fn counts(&self) -> Result<BTreeMap<String, u64>, DeadLetterError> {
        let mut counts = BTreeMap::new();
        for (subscriber, _) in self.lock().by_key.keys() {
            *counts.entry(subscriber.clone()).or_insert(0) += 1;
        }
        Ok(counts)
    }
}
