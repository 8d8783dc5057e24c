//! Coalesced appends: concurrent [`append`](herald::store::EventStore::append)
//! calls share one round trip and one commit.
//!
//! A commit costs a flush to disk (a few milliseconds), so appends that
//! each commit alone are bound by the disk however many connections run
//! them. Here an append joins a queue; when fewer than
//! [`PgConfig::coalesce_groups`](crate::PgConfig::coalesce_groups) groups
//! are in flight, a task takes what is queued (at most
//! [`PgConfig::coalesce_max_appends`](crate::PgConfig::coalesce_max_appends)
//! appends) and sends it as one call of the schema's `append_group`
//! function, which applies the whole group set-based (or, if that raises,
//! each append in a subtransaction of its own) and commits it at once.
//! There is no timer: appends only wait for each
//! other while earlier groups are in flight. Callers hear back once the
//! group committed.
//!
//! A lone append (nothing queued, no group in flight) runs as an uncoalesced
//! append does, a single statement, which is a little faster than the
//! group function for one append; it counts as a group in flight meanwhile,
//! so the appends that arrive during it gather into the next group.
//!
//! An append whose outcome the group cannot settle by itself (a given id
//! that is stored already, a lost race, a lock held too long, any database
//! error in its subtransaction) wrote nothing, and its caller runs it
//! again alone, the way an uncoalesced append runs, which has the last word.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use herald::EventId;
use herald::store::{Appended, AppendedEvent, ExpectedVersion, StoreError, StreamName};
use sqlx::Row;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::{GroupCommitError, backend};
use crate::store::{Batch, Inner};

/// The most events in one group (a group takes at least one append, however
/// large), to bound the size of one call.
const MAX_GROUP_EVENTS: usize = 4096;

/// One append waiting for its group.
pub(crate) struct Pending {
    pub(crate) stream: StreamName,
    pub(crate) expected: ExpectedVersion,
    pub(crate) batch: Batch,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// How a coalesced append ended.
pub(crate) enum Reply {
    /// Settled by its group.
    Done(Result<Appended, StoreError>),
    /// Wrote nothing, and must be appended alone to find out why (or to
    /// try again).
    Alone(Batch),
}

/// The queue of appends and the count of groups in flight.
#[derive(Default)]
pub(crate) struct Coalescer {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    running: usize,
}

impl Queue {
    /// The next group: the oldest waiting appends, within the limits.
    fn take(&mut self, max_appends: usize) -> Vec<Pending> {
        let mut group = Vec::new();
        let mut events = 0;
        while let Some(next) = self.waiting.front() {
            let len = next.batch.len();
            if group.len() == max_appends || (!group.is_empty() && events + len > MAX_GROUP_EVENTS)
            {
                break;
            }
            events += len;
            group.extend(self.waiting.pop_front());
        }
        group
    }
}

impl Coalescer {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A lone append's hold on a group slot: dropping it (when the append ended,
/// or its caller stopped waiting) sends what queued up meanwhile.
pub(crate) struct Slot {
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Dropped outside a runtime (one that is shutting down), the slot
        // only gives itself back: no group task could run anyway.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let group = {
            let mut queue = self.inner.coalescer.queue();
            if queue.waiting.is_empty() || runtime.is_none() {
                queue.running -= 1;
                return;
            }
            queue.take(self.inner.config.coalesce_max_appends)
        };
        if let Some(runtime) = runtime {
            runtime.spawn(run(Arc::clone(&self.inner), group));
        }
    }
}

/// Takes a group slot for a lone append, if nothing is queued and no group
/// is in flight.
pub(crate) fn alone(inner: &Arc<Inner>) -> Option<Slot> {
    let mut queue = inner.coalescer.queue();
    if queue.running > 0 || !queue.waiting.is_empty() {
        return None;
    }
    queue.running += 1;
    Some(Slot {
        inner: Arc::clone(inner),
    })
}

/// Queues an append; starts a group task if fewer than the configured
/// number are in flight.
pub(crate) fn submit(inner: &Arc<Inner>, pending: Pending) {
    let group = {
        let mut queue = inner.coalescer.queue();
        queue.waiting.push_back(pending);
        if queue.running >= inner.config.coalesce_groups {
            return;
        }
        queue.running += 1;
        queue.take(inner.config.coalesce_max_appends)
    };
    // A task of its own, so that a caller that stops waiting does not stop
    // the group the others wait on.
    tokio::spawn(run(Arc::clone(inner), group));
}

/// Commits groups until the queue is empty.
async fn run(inner: Arc<Inner>, mut group: Vec<Pending>) {
    loop {
        inner.append_group(group).await;
        let mut queue = inner.coalescer.queue();
        if queue.waiting.is_empty() {
            queue.running -= 1;
            return;
        }
        group = queue.take(inner.config.coalesce_max_appends);
    }
}

/// The `append_group` function's outcomes (see its migration).
const WRITTEN: i16 = 0;
const WRONG_VERSION: i16 = 1;

impl Inner {
    /// Sends one group and answers its callers.
    async fn append_group(&self, mut group: Vec<Pending>) {
        // Every group locks streams in the same order, so groups in flight
        // together never deadlock. The sort is stable: appends to one stream
        // keep their order of arrival.
        group.sort_by(|a, b| a.stream.as_str().cmp(b.stream.as_str()));
        let result = self.send_group(&group).await;
        let rows = match result {
            Ok(rows) if rows.len() == group.len() => rows,
            Ok(rows) => {
                let error = GroupCommitError::new(format!(
                    "append_group returned {} rows for {} appends",
                    rows.len(),
                    group.len()
                ));
                for pending in group {
                    let _ = pending
                        .reply
                        .send(Reply::Done(Err(StoreError::backend(error.clone()))));
                }
                return;
            }
            // The server answered with an error: the group's transaction
            // rolled back, and nothing of it is written. Each append runs
            // alone and meets its own fate.
            Err(sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut) => {
                for pending in group {
                    let _ = pending.reply.send(Reply::Alone(pending.batch));
                }
                return;
            }
            // The connection failed: whether the group committed is not
            // known, so running the appends again could write them twice.
            Err(e) => {
                let error = GroupCommitError::from_sqlx(e);
                for pending in group {
                    let _ = pending
                        .reply
                        .send(Reply::Done(Err(StoreError::backend(error.clone()))));
                }
                return;
            }
        };
        let mut written = false;
        for (pending, row) in group.into_iter().zip(rows) {
            let reply = match decode(&pending, &row) {
                Ok(Some(Ok(appended))) => {
                    written = true;
                    Reply::Done(Ok(appended))
                }
                Ok(Some(Err(conflict))) => Reply::Done(Err(conflict)),
                Ok(None) => Reply::Alone(pending.batch),
                Err(e) => Reply::Done(Err(e)),
            };
            let _ = pending.reply.send(reply);
        }
        if written && self.config.notify {
            self.wake.notify_one();
        }
    }

    /// The group as one call: one round trip, one commit.
    async fn send_group(
        &self,
        group: &[Pending],
    ) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        let events: usize = group.iter().map(|p| p.batch.len()).sum();
        let mut streams = Vec::with_capacity(group.len());
        let mut kinds = Vec::with_capacity(group.len());
        let mut versions = Vec::with_capacity(group.len());
        let mut counts = Vec::with_capacity(group.len());
        let mut ids: Vec<Uuid> = Vec::with_capacity(events);
        let mut given = Vec::with_capacity(events);
        let mut types = Vec::with_capacity(events);
        let mut data = Vec::with_capacity(events);
        let mut correlation = Vec::with_capacity(events);
        let mut causation = Vec::with_capacity(events);
        let mut headers = Vec::with_capacity(events);
        for pending in group {
            let (kind, version) = match pending.expected {
                ExpectedVersion::Any => (0_i16, None),
                ExpectedVersion::NoStream => (1, None),
                ExpectedVersion::StreamExists => (2, None),
                ExpectedVersion::Exact(v) => (3, Some(v as i64)),
            };
            streams.push(pending.stream.as_str());
            kinds.push(kind);
            versions.push(version);
            counts.push(pending.batch.len() as i32);
            let batch = &pending.batch;
            for ((event, id), is_given) in batch.events.iter().zip(&batch.ids).zip(&batch.is_given)
            {
                ids.push(*id);
                given.push(*is_given);
                types.push(event.event_type());
                data.push(event.data().as_str());
                let metadata = event.metadata();
                correlation.push(metadata.correlation_id.unwrap_or_default());
                causation.push(metadata.causation_id);
                headers.push(
                    (!metadata.headers.is_empty())
                        .then(|| serde_json::to_string(&metadata.headers).unwrap_or_default()),
                );
            }
        }
        let mut conn = self.pool.acquire().await?;
        sqlx::query(&self.sql.append_group)
            .bind(streams)
            .bind(kinds)
            .bind(versions)
            .bind(counts)
            .bind(ids)
            .bind(given)
            .bind(types)
            .bind(data)
            .bind(correlation)
            .bind(causation)
            .bind(headers)
            .fetch_all(&mut *conn)
            .await
    }
}

/// Reads an append's outcome: `Some(Ok)` written, `Some(Err)` a wrong
/// expected version, `None` to run alone.
fn decode(
    pending: &Pending,
    row: &sqlx::postgres::PgRow,
) -> Result<Option<Result<Appended, StoreError>>, StoreError> {
    let read = |e| backend("read the outcome of a coalesced append")(e);
    let outcome: i16 = row.try_get(0).map_err(read)?;
    let version: Option<i64> = row.try_get(1).map_err(read)?;
    match outcome {
        WRITTEN => {
            let positions: Vec<i64> = row.try_get(2).map_err(read)?;
            let version = version.ok_or_else(|| {
                StoreError::backend(GroupCommitError::new(
                    "append_group wrote an append without a version".to_owned(),
                ))
            })?;
            let len = pending.batch.len() as i64;
            if positions.len() as i64 != len {
                return Err(StoreError::backend(GroupCommitError::new(format!(
                    "append_group wrote {} events of {len}",
                    positions.len()
                ))));
            }
            let events = pending
                .batch
                .ids
                .iter()
                .zip(positions)
                .enumerate()
                .map(|(i, (id, position))| AppendedEvent {
                    id: EventId::from_uuid(*id),
                    version: (version - len + 1 + i as i64) as u64,
                    position: position as u64,
                })
                .collect();
            Ok(Some(Ok(Appended {
                stream: pending.stream.clone(),
                version: Some(version as u64),
                events,
            })))
        }
        WRONG_VERSION => Ok(Some(Err(StoreError::WrongExpectedVersion {
            stream: pending.stream.clone(),
            expected: pending.expected,
            actual: version.map(|v| v as u64),
        }))),
        _ => Ok(None),
    }
}
