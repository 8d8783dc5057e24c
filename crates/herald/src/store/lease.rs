//! Leases of competing consumers: which live process works on which
//! partition of a durable subscriber, and where each partition is.
//!
//! A durable subscriber declared [`competing`](crate::Subscriber::competing)
//! is a *group*: every process that subscribes it under the same name is a
//! *member*, and its work is split into a fixed number of *partitions* by
//! stream ([`partition_of`]). Each partition is owned by at most one live
//! member at a time through a *lease* that expires unless its owner renews
//! it, and keeps its own checkpoint. A [`LeaseStore`] keeps the members, the
//! leases and the partitions' checkpoints where every member sees them.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// The partition of `stream` in a group of `partitions` partitions:
/// FNV-1a (64 bits) of the stream name's bytes, modulo `partitions`.
///
/// The hash is fixed by this definition, not by a Rust release (as
/// `std`'s `DefaultHasher` would be), so processes built by different
/// compilers agree on it, and a backend can compute it too.
///
/// # Examples
///
/// ```
/// use herald::store::partition_of;
///
/// let p = partition_of("order-42", 16);
/// assert!(p < 16);
/// assert_eq!(p, partition_of("order-42", 16)); // stable
/// assert_eq!(partition_of("", 16), (0xcbf2_9ce4_8422_2325_u64 % 16) as u32);
/// ```
///
/// # Panics
///
/// If `partitions` is zero.
pub fn partition_of(stream: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "a group has at least one partition");
    let hash = stream
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % u64::from(partitions)) as u32
}

/// A partition that a member holds, as the store has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Lease {
    /// The partition, from 0.
    pub partition: u32,
    /// The partition's checkpoint: every event of the partition at or
    /// below it is handled.
    pub position: u64,
    /// Bumped by every [`LeaseStore::rewind`]: a save made for another
    /// epoch is refused, so a rewind cannot be overwritten by a batch that
    /// was in flight.
    pub epoch: u64,
}

impl Lease {
    /// A lease on `partition` at `position` in `epoch` (for backends).
    pub fn new(partition: u32, position: u64, epoch: u64) -> Self {
        Self {
            partition,
            position,
            epoch,
        }
    }
}

/// What a member learns when it renews: who is alive, and what it still
/// holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupView {
    /// The live members (the caller included), sorted.
    pub members: Vec<String>,
    /// The leases the caller holds, renewed, by partition.
    pub held: Vec<Lease>,
}

impl GroupView {
    /// A view (for backends); `members` and `held` are sorted here.
    pub fn new(mut members: Vec<String>, mut held: Vec<Lease>) -> Self {
        members.sort();
        members.dedup();
        held.sort_by_key(|l| l.partition);
        Self { members, held }
    }
}

/// One partition of a group, as [`LeaseStore::partitions`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PartitionState {
    /// The partition.
    pub partition: u32,
    /// The member whose lease on it has not expired, if any.
    pub owner: Option<String>,
    /// Its checkpoint.
    pub position: u64,
    /// Its epoch (see [`Lease::epoch`]).
    pub epoch: u64,
}

impl PartitionState {
    /// A partition's state (for backends).
    pub fn new(partition: u32, owner: Option<String>, position: u64, epoch: u64) -> Self {
        Self {
            partition,
            owner,
            position,
            epoch,
        }
    }
}

/// Where the members of competing-consumer groups meet: heartbeats,
/// partition leases, and the partitions' checkpoints.
///
/// # Contract
///
/// Time is the store's own clock (a database's `now()`), so that members
/// on machines whose clocks differ agree on what has expired. A member or a
/// lease whose expiry time is not after the store's current time is
/// *expired*.
///
/// - [`renew`](Self::renew) records that `member` is alive for `ttl`, moves
///   the expiry of every unexpired lease it holds to now + `ttl`, and
///   returns the live members (itself included) and those leases. Leases
///   that expired are not renewed: another member may have taken them.
/// - [`acquire`](Self::acquire) gives `member` the lease on a partition for
///   `ttl` if nobody holds it or its lease expired, and returns it (with
///   the partition's checkpoint, `initial` for a partition never seen);
///   `None` when another member holds an unexpired lease. Acquiring a
///   partition one holds renews it.
/// - [`save`](Self::save) moves a partition's checkpoint, only if `member`
///   holds an unexpired lease on it and the epoch is the partition's;
///   returns whether it did. This *fences* a member that lost its lease:
///   its late saves change nothing.
/// - [`release`](Self::release) gives a partition up (if `member` holds it),
///   keeping its checkpoint, so that another member can take it at once.
/// - [`leave`](Self::leave) removes the member and releases its leases.
/// - [`rewind`](Self::rewind) sets the checkpoint of every partition
///   `0..partitions` to `position` and bumps their epochs, leases kept.
/// - [`partitions`](Self::partitions) lists the partitions the store knows,
///   by partition.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Renews the member's heartbeat and its leases.
    async fn renew(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<GroupView, StoreError>;

    /// Takes a partition that is free or whose lease expired.
    async fn acquire(
        &self,
        group: &str,
        member: &str,
        partition: u32,
        ttl: Duration,
        initial: u64,
    ) -> Result<Option<Lease>, StoreError>;

    /// Saves a partition's checkpoint, fenced by the lease and the epoch.
    async fn save(
        &self,
        group: &str,
        member: &str,
        lease: Lease,
        position: u64,
    ) -> Result<bool, StoreError>;

    /// Gives a partition up.
    async fn release(&self, group: &str, member: &str, partition: u32) -> Result<(), StoreError>;

    /// Removes a member and releases its leases.
    async fn leave(&self, group: &str, member: &str) -> Result<(), StoreError>;

    /// Moves every partition's checkpoint to `position`.
    async fn rewind(&self, group: &str, partitions: u32, position: u64) -> Result<(), StoreError>;

    /// The group's partitions.
    async fn partitions(&self, group: &str) -> Result<Vec<PartitionState>, StoreError>;
}
