//! Checkpoints of durable subscribers.

use async_trait::async_trait;

use super::StoreError;

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
///   where its [`StartFrom`](crate::StartFrom) says.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The subscriber's checkpoint.
    async fn load(&self, subscriber: &str) -> Result<Option<u64>, StoreError>;

    /// Saves the subscriber's checkpoint.
    async fn save(&self, subscriber: &str, position: u64) -> Result<(), StoreError>;

    /// Forgets the subscriber's checkpoint.
    async fn reset(&self, subscriber: &str) -> Result<(), StoreError>;
}
