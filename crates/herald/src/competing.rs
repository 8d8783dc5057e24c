//! Competing consumers: the processes that run one durable subscriber share
//! its partitions.
//!
//! Each process runs a *coordinator* per competing subscriber. Every
//! renewal interval (a third of the lease TTL) it renews its heartbeat and
//! its leases in one call, computes its fair share of the partitions among
//! the live members, gives back the partitions above its share (once their
//! worker finished its batch and saved its checkpoint, so a normal
//! rebalance hands over without delivering anything twice), takes free or
//! expired partitions up to it, and runs one worker per partition it holds:
//! the ordinary read, deliver and save loop of a durable subscriber,
//! restricted to the partition's streams and fenced by its lease.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::durable::{
    Deliver, DurableSettings, Fence, PartitionPlace, Place, Rewind, Signals, StartFrom, drive,
    forget_retries, persist,
};
use crate::store::{EventStore, GroupView, Lease, LeaseStore};

/// Settings of a competing group.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupSettings {
    pub(crate) partitions: u32,
    pub(crate) ttl: Duration,
}

/// What the bus reads of a running coordinator.
pub(crate) struct GroupShared {
    pub(crate) leases: Arc<dyn LeaseStore>,
    pub(crate) partitions: u32,
    /// The partitions this process works on now, sorted.
    pub(crate) owned: Mutex<Vec<u32>>,
    /// Where partitions that were never worked on start.
    pub(crate) initial: AtomicU64,
}

impl GroupShared {
    pub(crate) fn owned(&self) -> Vec<u32> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The least checkpoint of the group's partitions: every event of the
/// subscriber at or below it is handled.
pub(crate) async fn group_checkpoint(
    shared: &GroupShared,
    group: &str,
) -> Result<u64, crate::store::StoreError> {
    let states = shared.leases.partitions(group).await?;
    let initial = shared.initial.load(Ordering::Acquire);
    let mut least = u64::MAX;
    for partition in 0..shared.partitions {
        let position = states
            .iter()
            .find(|s| s.partition == partition)
            .map_or(initial, |s| s.position);
        least = least.min(position);
    }
    Ok(least)
}

/// A member id: the process id (for operators) and a random part (so that
/// a restarted process is a new member).
fn member_id() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// This member's fair share: `partitions` spread evenly over the live
/// members, the first ones (by id) taking one more when it does not divide.
///
/// A group of one partition (a single-active relay, say) is the exception:
/// only one member can work anyway, so whoever holds it keeps it, rather
/// than handing it to a member that joined later and ranks first.
fn fair_share(view: &GroupView, member: &str, partitions: u32) -> u32 {
    if partitions == 1 {
        return 1;
    }
    let mut members = view.members.clone();
    if !members.iter().any(|m| m == member) {
        members.push(member.to_owned());
        members.sort();
    }
    let n = members.len() as u32;
    let rank = members.iter().position(|m| m == member).unwrap_or(0) as u32;
    partitions / n + u32::from(rank < partitions % n)
}

/// What becomes of a worker once it has stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// It still runs.
    Run,
    /// Give the partition back.
    Release,
    /// Start it again from the partition's checkpoint (after a rewind).
    Restart,
}

struct Worker {
    epoch: u64,
    /// The checkpoint this worker saved last.
    saved: Arc<AtomicU64>,
    fence: Arc<Fence>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    then: Then,
}

impl Worker {
    fn ask_to_stop(&mut self, then: Then) {
        self.stop.send_replace(true);
        if self.then != Then::Release {
            self.then = then;
        }
    }
}

/// Everything a coordinator works with.
pub(crate) struct Coordinator<D: Deliver> {
    pub(crate) core: Arc<D>,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) settings: DurableSettings,
    pub(crate) group: GroupSettings,
    pub(crate) shared: Arc<GroupShared>,
    pub(crate) checkpoint: Arc<AtomicU64>,
}

impl<D: Deliver> Coordinator<D> {
    /// Runs until a stop is asked; then stops the workers after their
    /// batches, gives every partition back and leaves the group.
    pub(crate) async fn run(self, mut signals: Signals) {
        let name = self.core.name().to_owned();
        let member = member_id();
        let leases = Arc::clone(&self.shared.leases);
        let mut stop = signals.stop.clone();
        let ttl = self.group.ttl;
        let every = ttl / 3;
        // Stop delivering a tenth of the TTL before the lease could expire.
        let margin = ttl / 10;
        let initial = match self.settings.start_from {
            StartFrom::Beginning => 0,
            StartFrom::Now => {
                match persist("read the head", &name, &mut stop, || self.store.head()).await {
                    Some(head) => head,
                    None => return,
                }
            }
        };
        self.shared.initial.store(initial, Ordering::Release);
        tracing::info!(subscriber = %name, member = %member, partitions = self.group.partitions, ?ttl, "joining competing group");
        let ended = Arc::new(Notify::new());
        let mut workers: BTreeMap<u32, Worker> = BTreeMap::new();
        let mut pending: Option<Rewind> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            if let Some((position, done)) = pending.take() {
                let rewound = persist("rewind its partitions", &name, &mut stop, || {
                    leases.rewind(&name, self.group.partitions, position)
                })
                .await;
                if rewound.is_none() {
                    break;
                }
                if let Some(retries) = &self.settings.retries {
                    forget_retries(&**retries, &name).await;
                }
                tracing::info!(subscriber = %name, checkpoint = position, "competing group rewound");
                self.checkpoint.store(position, Ordering::Release);
                // The renewal below sees the new epochs and restarts the
                // workers from the new checkpoint.
                let _ = done.send(());
            }
            self.tick(&name, &member, margin, &mut workers, &ended)
                .await;
            let sleep = tokio::time::sleep(every);
            tokio::select! {
                _ = sleep => {}
                _ = ended.notified() => {}
                _ = stop.wait_for(|s| *s) => {}
                Some(rewind) = signals.rewinds.recv() => pending = Some(rewind),
            }
        }
        for worker in workers.values_mut() {
            worker.ask_to_stop(Then::Release);
        }
        for (_, worker) in std::mem::take(&mut workers) {
            if let Err(err) = worker.task.await {
                tracing::error!(subscriber = %name, error = %err, "partition worker ended abnormally");
            }
        }
        if let Err(err) = leases.leave(&name, &member).await {
            tracing::warn!(subscriber = %name, error = %err, "could not leave the competing group; its leases will expire");
        }
        self.shared
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        tracing::info!(subscriber = %name, member = %member, "left competing group");
    }

    /// One round: renew, settle the workers, balance, start workers.
    async fn tick(
        &self,
        name: &str,
        member: &str,
        margin: Duration,
        workers: &mut BTreeMap<u32, Worker>,
        ended: &Arc<Notify>,
    ) {
        let leases = &self.shared.leases;
        let ttl = self.group.ttl;
        let partitions = self.group.partitions;
        let started = Instant::now();
        // The store's expiry is its now() + ttl, and its now() comes after
        // `started`: so `started + ttl - margin` is before the expiry.
        let deadline = started + ttl.saturating_sub(margin);
        let view = match leases.renew(name, member, ttl).await {
            Ok(view) => view,
            Err(err) => {
                // The workers stop by themselves when their fences pass.
                tracing::error!(subscriber = %name, error = %err, "could not renew the group's leases");
                return;
            }
        };
        let mut held: BTreeMap<u32, Lease> = view.held.iter().map(|l| (l.partition, *l)).collect();
        for (partition, worker) in workers.iter_mut() {
            match held.get(partition) {
                Some(lease) => {
                    worker.fence.extend(deadline);
                    if lease.epoch != worker.epoch {
                        worker.ask_to_stop(Then::Restart);
                    }
                }
                None => {
                    tracing::warn!(subscriber = %name, partition, "lease lost");
                    worker.ask_to_stop(Then::Restart);
                }
            }
        }
        // Settle the workers that ended.
        let finished: Vec<u32> = workers
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for partition in finished {
            let Some(worker) = workers.remove(&partition) else {
                continue;
            };
            if let Err(err) = worker.task.await {
                tracing::error!(subscriber = %name, partition, error = %err, "partition worker ended abnormally");
            }
            // A worker that ended on its own (its fence passed) is started
            // again below if the lease is still held: from what it saved,
            // which the renewal above may not have seen yet.
            if let Some(lease) = held.get_mut(&partition) {
                if lease.epoch == worker.epoch {
                    lease.position = lease.position.max(worker.saved.load(Ordering::Acquire));
                }
            }
            if worker.then == Then::Release && held.remove(&partition).is_some() {
                match leases.release(name, member, partition).await {
                    Ok(()) => {
                        tracing::info!(subscriber = %name, partition, "partition given back")
                    }
                    Err(err) => {
                        tracing::warn!(subscriber = %name, partition, error = %err, "could not give a partition back; its lease will expire")
                    }
                }
            }
        }
        // Balance: give back what is above the fair share, take what is
        // missing.
        let share = fair_share(&view, member, partitions) as usize;
        let kept: Vec<u32> = held
            .keys()
            .filter(|p| workers.get(p).is_none_or(|w| w.then != Then::Release))
            .copied()
            .collect();
        let keeping = kept.len();
        if keeping > share {
            for partition in kept.iter().rev().take(keeping - share) {
                match workers.get_mut(partition) {
                    Some(worker) => worker.ask_to_stop(Then::Release),
                    None => {
                        held.remove(partition);
                        if let Err(err) = leases.release(name, member, *partition).await {
                            tracing::warn!(subscriber = %name, partition, error = %err, "could not give a partition back; its lease will expire");
                        }
                    }
                }
            }
        } else if keeping < share {
            let mut missing = share - keeping;
            // Start looking at a place of this member's own, so that members
            // do not all race for the same partitions.
            let rank = view.members.iter().position(|m| m == member).unwrap_or(0) as u32;
            let n = view.members.len().max(1) as u32;
            let offset = rank * partitions / n;
            for i in 0..partitions {
                if missing == 0 {
                    break;
                }
                let partition = (offset + i) % partitions;
                if held.contains_key(&partition) {
                    continue;
                }
                let initial = self.shared.initial.load(Ordering::Acquire);
                match leases.acquire(name, member, partition, ttl, initial).await {
                    Ok(Some(lease)) => {
                        tracing::info!(subscriber = %name, partition, checkpoint = lease.position, "partition taken");
                        held.insert(partition, lease);
                        missing -= 1;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::error!(subscriber = %name, partition, error = %err, "could not take a partition");
                        break;
                    }
                }
            }
        }
        // Start a worker for every held partition that has none.
        for (partition, lease) in &held {
            if workers.contains_key(partition) {
                continue;
            }
            workers.insert(
                *partition,
                self.start(name, member, *lease, deadline, ended),
            );
        }
        let owned: Vec<u32> = workers
            .iter()
            .filter(|(_, w)| w.then == Then::Run)
            .map(|(p, _)| *p)
            .collect();
        *self.shared.owned.lock().unwrap_or_else(|p| p.into_inner()) = owned;
        if let Ok(least) = group_checkpoint(&self.shared, name).await {
            self.checkpoint.store(least, Ordering::Release);
        }
    }

    fn start(
        &self,
        name: &str,
        member: &str,
        lease: Lease,
        deadline: Instant,
        ended: &Arc<Notify>,
    ) -> Worker {
        let fence = Arc::new(Fence::new(deadline));
        let (stop, stopped) = watch::channel(false);
        let place = Place::Partition(PartitionPlace {
            leases: Arc::clone(&self.shared.leases),
            group: name.to_owned(),
            member: member.to_owned(),
            partitions: self.group.partitions,
            lease,
            fence: Arc::clone(&fence),
        });
        let core = Arc::clone(&self.core);
        let store = Arc::clone(&self.store);
        let settings = self.settings.clone();
        let ended = Arc::clone(ended);
        let saved = Arc::new(AtomicU64::new(lease.position));
        let position = Arc::clone(&saved);
        let task = tokio::spawn(async move {
            // A partition worker takes no rewinds of its own: the
            // coordinator restarts it from the rewound checkpoint.
            let (_, rewinds) = mpsc::unbounded_channel();
            let mut signals = Signals {
                stop: stopped,
                rewinds,
            };
            drive(
                &*core,
                &*store,
                &settings,
                place,
                lease.position,
                &mut signals,
                &position,
            )
            .await;
            ended.notify_one();
        });
        Worker {
            epoch: lease.epoch,
            saved,
            fence,
            stop,
            task,
            then: Then::Run,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(members: &[&str]) -> GroupView {
        GroupView::new(members.iter().map(|m| (*m).to_owned()).collect(), vec![])
    }

    #[test]
    fn fair_shares_add_up_to_the_partitions() {
        for n in 1..=20usize {
            for partitions in 2..=40u32 {
                let names: Vec<String> = (0..n).map(|i| format!("m{i:02}")).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let v = view(&refs);
                let shares: Vec<u32> = names
                    .iter()
                    .map(|m| fair_share(&v, m, partitions))
                    .collect();
                assert_eq!(shares.iter().sum::<u32>(), partitions, "{n} members");
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(max.unwrap() - min.unwrap() <= 1, "{shares:?}");
            }
        }
    }

    #[test]
    fn every_member_of_a_one_partition_group_may_hold_it() {
        let v = view(&["a", "b", "c"]);
        for m in ["a", "b", "c"] {
            assert_eq!(fair_share(&v, m, 1), 1, "{m}");
        }
    }

    #[test]
    fn a_member_missing_from_the_view_counts_itself() {
        let v = view(&["a", "c"]);
        // b ranks second of three: 16 = 6 + 5 + 5.
        assert_eq!(fair_share(&v, "a", 16), 8, "a sees two members");
        assert_eq!(fair_share(&v, "b", 16), 5);
    }
}
