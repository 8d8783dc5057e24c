//! The lease-store conformance suite: the contract of
//! [`LeaseStore`], sentence by sentence.
//!
//! Run it with [`lease_conformance!`](crate::lease_conformance) for a store
//! made by a factory that returns an empty store of the scenario's own.
//! Expiry is waited for by polling under a deadline, with short TTLs, so
//! the scenarios run on the store's own clock (a database's `now()`).

use std::time::{Duration, Instant};

use herald::store::{Lease, LeaseStore};

/// Turns the scenarios into one test each.
#[macro_export]
macro_rules! lease_conformance {
    ($factory:path) => {
        $crate::__lease_scenarios!(
            $factory;
            a_free_partition_is_acquired_with_its_initial_checkpoint,
            a_partition_held_by_a_live_member_is_not_acquired,
            an_expired_lease_is_taken_over_and_its_old_owner_is_fenced,
            renewing_lists_the_live_members_and_the_leases_held,
            a_released_partition_keeps_its_checkpoint_for_the_next_owner,
            leaving_removes_the_member_and_frees_its_partitions,
            rewinding_moves_every_partition_and_refuses_saves_of_the_old_epoch,
            groups_are_independent,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lease_scenarios {
    ($factory:path; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::leases::$name(&$factory().await).await;
            }
        )*
    };
}

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(20);

/// Tries to acquire until it succeeds, under a deadline.
async fn acquire_eventually<S: LeaseStore>(
    store: &S,
    group: &str,
    member: &str,
    partition: u32,
) -> Lease {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(lease) = store
            .acquire(group, member, partition, LONG, 0)
            .await
            .expect("acquire")
        {
            return lease;
        }
        assert!(
            Instant::now() < deadline,
            "{member} could not take partition {partition} within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A partition nobody holds is given to the first member that asks, at
/// the initial checkpoint, in epoch 0; asking again renews it.
pub async fn a_free_partition_is_acquired_with_its_initial_checkpoint<S: LeaseStore>(store: &S) {
    let lease = store
        .acquire("g", "a", 3, LONG, 17)
        .await
        .unwrap()
        .expect("a free partition is acquired");
    assert_eq!((lease.partition, lease.position, lease.epoch), (3, 17, 0));
    let again = store.acquire("g", "a", 3, LONG, 99).await.unwrap();
    assert_eq!(
        again.map(|l| l.position),
        Some(17),
        "the initial checkpoint counts only for a new partition"
    );
    let states = store.partitions("g").await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].owner.as_deref(), Some("a"));
}

/// A lease that has not expired keeps the partition from everyone else.
pub async fn a_partition_held_by_a_live_member_is_not_acquired<S: LeaseStore>(store: &S) {
    assert!(store.acquire("g", "a", 0, LONG, 0).await.unwrap().is_some());
    assert_eq!(store.acquire("g", "b", 0, LONG, 0).await.unwrap(), None);
    assert!(
        store.save("g", "a", Lease::new(0, 0, 0), 5).await.unwrap(),
        "the owner saves"
    );
    assert!(
        !store.save("g", "b", Lease::new(0, 0, 0), 9).await.unwrap(),
        "another member's save is refused"
    );
    assert_eq!(store.partitions("g").await.unwrap()[0].position, 5);
}

/// Once a lease expires, another member takes the partition from its last
/// saved checkpoint, and the old owner can neither save nor renew it.
pub async fn an_expired_lease_is_taken_over_and_its_old_owner_is_fenced<S: LeaseStore>(store: &S) {
    let old = store
        .acquire("g", "a", 1, SHORT, 0)
        .await
        .unwrap()
        .expect("acquired");
    assert!(store.save("g", "a", old, 40).await.unwrap());
    let taken = acquire_eventually(store, "g", "b", 1).await;
    assert_eq!(
        taken.position, 40,
        "the new owner starts at the saved checkpoint"
    );
    assert!(
        !store.save("g", "a", old, 50).await.unwrap(),
        "the old owner's save is fenced"
    );
    let view = store.renew("g", "a", LONG).await.unwrap();
    assert!(
        view.held.is_empty(),
        "the old owner renews nothing: {view:?}"
    );
    let states = store.partitions("g").await.unwrap();
    assert_eq!(states[0].owner.as_deref(), Some("b"));
    assert_eq!(states[0].position, 40);
}

/// Renewing keeps the member alive and its leases held; members whose
/// heartbeat expired drop out of the view.
pub async fn renewing_lists_the_live_members_and_the_leases_held<S: LeaseStore>(store: &S) {
    store.renew("g", "short-lived", SHORT).await.unwrap();
    let view = store.renew("g", "b", LONG).await.unwrap();
    assert_eq!(view.members, vec!["b".to_owned(), "short-lived".to_owned()]);
    assert!(view.held.is_empty());
    store.acquire("g", "b", 2, SHORT, 0).await.unwrap().unwrap();
    store.acquire("g", "b", 0, SHORT, 0).await.unwrap().unwrap();
    let view = store.renew("g", "b", LONG).await.unwrap();
    let held: Vec<u32> = view.held.iter().map(|l| l.partition).collect();
    assert_eq!(held, vec![0, 2], "renewed leases, by partition");
    // Renewed for LONG: they outlive SHORT, while short-lived's heartbeat
    // does not.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = store.renew("g", "b", LONG).await.unwrap();
        assert_eq!(view.held.len(), 2, "renewed leases stay held: {view:?}");
        if view.members == vec!["b".to_owned()] {
            break;
        }
        assert!(Instant::now() < deadline, "an expired member stays listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.acquire("g", "c", 2, LONG, 0).await.unwrap(), None);
}

/// Releasing gives the partition to the next member at once, with the
/// checkpoint the old owner saved.
pub async fn a_released_partition_keeps_its_checkpoint_for_the_next_owner<S: LeaseStore>(
    store: &S,
) {
    let lease = store.acquire("g", "a", 5, LONG, 0).await.unwrap().unwrap();
    assert!(store.save("g", "a", lease, 12).await.unwrap());
    store.release("g", "b", 5).await.unwrap();
    assert_eq!(
        store.acquire("g", "c", 5, LONG, 0).await.unwrap(),
        None,
        "a release by a member that does not hold it changes nothing"
    );
    store.release("g", "a", 5).await.unwrap();
    let next = store
        .acquire("g", "c", 5, LONG, 0)
        .await
        .unwrap()
        .expect("released");
    assert_eq!(next.position, 12);
    assert!(!store.save("g", "a", lease, 13).await.unwrap());
}

/// Leaving drops the member from the view and frees all its partitions.
pub async fn leaving_removes_the_member_and_frees_its_partitions<S: LeaseStore>(store: &S) {
    store.renew("g", "a", LONG).await.unwrap();
    store.renew("g", "b", LONG).await.unwrap();
    for p in 0..3 {
        store.acquire("g", "a", p, LONG, 0).await.unwrap().unwrap();
    }
    store.leave("g", "a").await.unwrap();
    let view = store.renew("g", "b", LONG).await.unwrap();
    assert_eq!(view.members, vec!["b".to_owned()]);
    for p in 0..3 {
        assert!(store.acquire("g", "b", p, LONG, 0).await.unwrap().is_some());
    }
    assert!(
        store
            .partitions("g")
            .await
            .unwrap()
            .iter()
            .all(|s| s.owner.as_deref() == Some("b"))
    );
}

/// A rewind sets every partition's checkpoint, those never worked on
/// included, and bumps its epoch: the owner keeps its lease, but a save
/// made for the old epoch is refused.
pub async fn rewinding_moves_every_partition_and_refuses_saves_of_the_old_epoch<S: LeaseStore>(
    store: &S,
) {
    let lease = store.acquire("g", "a", 0, LONG, 0).await.unwrap().unwrap();
    assert!(store.save("g", "a", lease, 30).await.unwrap());
    store.rewind("g", 4, 7).await.unwrap();
    assert!(
        !store.save("g", "a", lease, 31).await.unwrap(),
        "a save of the old epoch is refused"
    );
    let states = store.partitions("g").await.unwrap();
    assert_eq!(states.len(), 4);
    assert!(states.iter().all(|s| s.position == 7), "{states:?}");
    let view = store.renew("g", "a", LONG).await.unwrap();
    assert_eq!(view.held.len(), 1, "the lease is kept");
    let renewed = view.held[0];
    assert_eq!((renewed.position, renewed.epoch), (7, lease.epoch + 1));
    assert!(store.save("g", "a", renewed, 8).await.unwrap());
}

/// Members, leases and checkpoints of one group do not touch another's.
pub async fn groups_are_independent<S: LeaseStore>(store: &S) {
    store.acquire("g1", "a", 0, LONG, 0).await.unwrap().unwrap();
    assert!(
        store
            .acquire("g2", "b", 0, LONG, 0)
            .await
            .unwrap()
            .is_some()
    );
    store.rewind("g1", 1, 9).await.unwrap();
    assert_eq!(store.partitions("g2").await.unwrap()[0].position, 0);
    let view = store.renew("g2", "b", LONG).await.unwrap();
    assert_eq!(view.members, vec!["b".to_owned()]);
}
