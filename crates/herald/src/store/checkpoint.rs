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
}
