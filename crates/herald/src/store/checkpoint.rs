//! Checkpoints of durable subscribers.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::EventId;
use crate::error::AttemptError;

/// A durable subscriber's failed delivery that waits for its next attempt.
///
/// A durable subscriber does not wait for a retry in place: it schedules
/// the event, holds back the later events of the same stream (to keep the
/// stream's order) and goes on with the other streams. The schedule is
/// persisted, so that a restart neither forgets how often the event failed
/// nor retries it before its backoff is over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduledRetry {
    /// The event that failed.
    pub event_id: EventId,
    /// Its position in the global log.
    pub position: u64,
    /// Every failed attempt so far, oldest first (at least one).
    pub errors: Vec<AttemptError>,
    /// When the next attempt is due.
    pub due: DateTime<Utc>,
}

impl ScheduledRetry {
    /// How many attempts failed so far.
    pub fn attempts(&self) -> u32 {
        self.errors.last().map_or(0, |e| e.attempt)
    }
}

/// Where durable subscribers keep their place in the global log.
///
/// A checkpoint is the position up to which a subscriber has handled (or
/// dead-lettered) every event it matches. Stores that feed durable
/// subscribers implement it next to [`EventStore`](super::EventStore), so the
/// place is kept with the history.
///
/// # Contract
///
/// - [`load`](Self::load) returns the last saved position, or `None` for a
///   subscriber that never saved one.
/// - [`save`](Self::save) replaces it; once it returned `Ok`, a later `load`
///   (in this process or, for a durable store, after a restart) returns it.
/// - [`reset`](Self::reset) forgets it, so the subscriber starts again from
///   where its [`StartFrom`](crate::StartFrom) says. It leaves the
///   subscriber's enabled state alone.
/// - [`load_enabled`](Self::load_enabled) returns whether the subscriber was
///   last saved as enabled, or `None` for one never saved;
///   [`save_enabled`](Self::save_enabled) replaces it, durably as `save`
///   does. Every process sharing the store sees the same state, which is how
///   [`Bus::disable`](crate::Bus::disable) in one process stops the
///   subscriber in the others, and how a disabled subscriber stays disabled
///   after a restart.
///
/// - [`schedule_retry`](Self::schedule_retry) saves a subscriber's
///   [`ScheduledRetry`], replacing the one it had for the same event;
///   [`scheduled_retries`](Self::scheduled_retries) lists the subscriber's,
///   by position; [`clear_retry`](Self::clear_retry) removes one (and is
///   not an error when there is none). Durable as `save`.
///
/// There are no default implementations: a store that dropped the enabled
/// state would silently run a subscriber an operator had disabled.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The subscriber's checkpoint.
    async fn load(&self, subscriber: &str) -> Result<Option<u64>, StoreError>;

    /// Saves the subscriber's checkpoint.
    async fn save(&self, subscriber: &str, position: u64) -> Result<(), StoreError>;

    /// Forgets the subscriber's checkpoint.
    async fn reset(&self, subscriber: &str) -> Result<(), StoreError>;

    /// Whether the subscriber was last saved as enabled (`None`: never
    /// saved).
    async fn load_enabled(&self, subscriber: &str) -> Result<Option<bool>, StoreError>;

    /// Saves whether the subscriber is enabled.
    async fn save_enabled(&self, subscriber: &str, enabled: bool) -> Result<(), StoreError>;

    /// Saves (or replaces) the subscriber's scheduled retry of an event.
    async fn schedule_retry(
        &self,
        subscriber: &str,
        retry: &ScheduledRetry,
    ) -> Result<(), StoreError>;

    /// The subscriber's scheduled retries, by position.
    async fn scheduled_retries(&self, subscriber: &str) -> Result<Vec<ScheduledRetry>, StoreError>;

    /// Removes the subscriber's scheduled retry of `event`, if any.
    async fn clear_retry(&self, subscriber: &str, event: EventId) -> Result<(), StoreError>;
}
