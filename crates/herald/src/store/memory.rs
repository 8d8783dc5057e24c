//! The in-memory event store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    Appended, AppendedEvent, Capabilities, CheckpointStore, Direction, EventStore, ExpectedVersion,
    GroupView, Lease, LeaseStore, ListStreams, PartitionState, ReadAll, ReadStream, ScheduledRetry,
    StoreError, StreamAppend, StreamInfo, StreamName,
};
use crate::event::{NewEvent, Origin, RecordedEvent, RecordedParts};
use crate::id::{self, EventId};
use crate::topic::EventType;

/// Events per batch when reading the global log.
const READ_BATCH: usize = 512;

/// An event store in memory: complete, fast, and gone when the process
/// ends.
///
/// It is a real backend, for tests and for applications that need history
/// only while they run; it passes the same conformance suite as the durable
/// stores.
///
/// | capability | |
/// |---|---|
/// | durable | no |
/// | shared between processes | no |
/// | outbox, inbox | no (no transactions to join) |
/// | competing consumers | between buses of one process ([`LeaseStore`]) |
///
/// Appends are serialized by a lock, so positions become visible in order.
/// Clones share the same store.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herald::store::{EventStore, ExpectedVersion, MemoryStore, ReadStream, StreamName};
/// use herald::NewEvent;
/// use serde_json::json;
///
/// let store = MemoryStore::new();
/// let order = StreamName::new("order-42").unwrap();
/// store
///     .append(&order, ExpectedVersion::NoStream, vec![NewEvent::new("order.created", json!({"total": 10}))])
///     .await
///     .unwrap();
/// let events = store.read_stream(&order, ReadStream::forward()).await.unwrap();
/// assert_eq!(events[0].version(), Some(0));
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<RwLock<State>>,
    head: Arc<watch::Sender<u64>>,
    checkpoints: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    /// Whether each subscriber is enabled, for buses sharing the store.
    enabled: Arc<std::sync::Mutex<HashMap<String, bool>>>,
    /// Scheduled retries by subscriber, then event.
    retries: Arc<std::sync::Mutex<HashMap<String, HashMap<EventId, ScheduledRetry>>>>,
    groups: Arc<std::sync::Mutex<HashMap<String, Group>>>,
}

/// A competing-consumer group's members and partitions, timed by tokio's
/// clock (so tests can pause it).
#[derive(Default)]
struct Group {
    /// Each member's heartbeat expiry.
    members: HashMap<String, Instant>,
    partitions: BTreeMap<u32, Partition>,
}

struct Partition {
    owner: Option<(String, Instant)>,
    position: u64,
    epoch: u64,
}

impl Partition {
    /// The owner whose lease has not expired at `now`.
    fn live_owner(&self, now: Instant) -> Option<&str> {
        self.owner
            .as_ref()
            .filter(|(_, expires)| *expires > now)
            .map(|(owner, _)| owner.as_str())
    }
}

#[derive(Default)]
struct State {
    /// Every event by position, as first appended.
    log: BTreeMap<u64, RecordedEvent>,
    by_id: HashMap<EventId, u64>,
    streams: BTreeMap<StreamName, Stream>,
    last_position: u64,
}

struct Stream {
    /// Positions of the stream's events, by version; `None` is a hole left
    /// by a deleted, linked event.
    entries: Vec<Option<u64>>,
    first_recorded_at: chrono::DateTime<Utc>,
    last_recorded_at: chrono::DateTime<Utc>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Arc::new(RwLock::new(State::default())),
            head: Arc::new(watch::channel(0).0),
            checkpoints: Arc::default(),
            enabled: Arc::default(),
            retries: Arc::default(),
            groups: Arc::default(),
        }
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkpoints(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.checkpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // Writers validate everything before they change the state, so a
        // panic cannot leave it half-written; a poisoned lock is still sound.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn version(&self, stream: &StreamName) -> Option<u64> {
        self.streams
            .get(stream)
            .and_then(|s| (s.entries.len() as u64).checked_sub(1))
    }

    fn check(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Option<u64>, StoreError> {
        expected.check(stream, self.version(stream))
    }

    /// Appends one part; see [`EventStore::append`].
    fn append(
        &mut self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        types: Vec<EventType>,
    ) -> Result<Appended, StoreError> {
        let state = self;
        if let Some(repeat) = state.repeat_of(stream, &events)? {
            return Ok(Appended {
                stream: stream.clone(),
                version: repeat.last().map(|e| e.version),
                events: repeat,
            });
        }
        let actual = state.check(stream, expected)?;
        let mut ids = std::collections::HashSet::with_capacity(events.len());
        for id in events.iter().filter_map(NewEvent::id) {
            if let Some(old) = state.by_id.get(&id).and_then(|p| state.log.get(p)) {
                return Err(StoreError::DuplicateEvent {
                    id,
                    stream: stream.clone(),
                    detail: format!(
                        "it is stored in stream {} by an append this batch does not repeat",
                        old.stream().unwrap_or_default()
                    ),
                });
            }
            if !ids.insert(id) {
                return Err(StoreError::DuplicateEvent {
                    id,
                    stream: stream.clone(),
                    detail: "it appears twice in this batch".to_owned(),
                });
            }
        }
        let mut appended = Vec::with_capacity(events.len());
        let stream_arc = Arc::clone(stream.as_arc());
        for (new, event_type) in events.into_iter().zip(types) {
            let (fresh_id, at) = id::now();
            let id = new.id.unwrap_or(fresh_id);
            let position = state.last_position + 1;
            state.last_position = position;
            let version = state.push(stream, position, at);
            let mut metadata = new.metadata;
            metadata.correlation_id.get_or_insert(*id.as_uuid());
            state.log.insert(
                position,
                RecordedEvent::from_parts(RecordedParts {
                    id,
                    event_type,
                    stream: Some(Arc::clone(&stream_arc)),
                    version: Some(version),
                    position: Some(position),
                    recorded_at: at,
                    data: new.data,
                    metadata,
                    origin: None,
                }),
            );
            state.by_id.insert(id, position);
            appended.push(AppendedEvent {
                id,
                version,
                position,
            });
        }
        Ok(Appended {
            stream: stream.clone(),
            version: appended.last().map(|e| e.version).or(actual),
            events: appended,
        })
    }

    /// Checks every part of an `append_all` against the state as the parts
    /// before it would leave it, so that applying them cannot fail.
    fn validate_all(&self, parts: &[(StreamAppend, Vec<EventType>)]) -> Result<(), StoreError> {
        let mut versions: HashMap<&StreamName, Option<u64>> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for (part, _) in parts {
            let stream = &part.stream;
            let touched = versions.contains_key(stream);
            if !touched && self.repeat_of(stream, &part.events)?.is_some() {
                continue;
            }
            let actual = match versions.get(stream) {
                Some(v) => *v,
                None => self.version(stream),
            };
            part.expected.check(stream, actual)?;
            for id in part.events.iter().filter_map(NewEvent::id) {
                if let Some(old) = self.by_id.get(&id).and_then(|p| self.log.get(p)) {
                    return Err(StoreError::DuplicateEvent {
                        id,
                        stream: stream.clone(),
                        detail: format!(
                            "it is stored in stream {} by an append this batch does not repeat",
                            old.stream().unwrap_or_default()
                        ),
                    });
                }
                if !ids.insert(id) {
                    return Err(StoreError::DuplicateEvent {
                        id,
                        stream: stream.clone(),
                        detail: "it appears twice in this batch".to_owned(),
                    });
                }
            }
            let n = part.events.len() as u64;
            let after = match (actual, n) {
                (v, 0) => v,
                (None, n) => Some(n - 1),
                (Some(v), n) => Some(v + n),
            };
            versions.insert(stream, after);
        }
        Ok(())
    }

    /// The stored events of an append that repeats an earlier one, or why
    /// it is not a repeat.
    fn repeat_of(
        &self,
        stream: &StreamName,
        events: &[NewEvent],
    ) -> Result<Option<Vec<AppendedEvent>>, StoreError> {
        if events.is_empty() {
            return Ok(None);
        }
        let mut found = Vec::with_capacity(events.len());
        for (i, new) in events.iter().enumerate() {
            let stored = new
                .id()
                .and_then(|id| self.by_id.get(&id))
                .and_then(|p| self.log.get(p));
            match (stored, i) {
                (None, 0) => return Ok(None),
                (None, _) => {
                    return Err(StoreError::DuplicateEvent {
                        id: events[0].id().unwrap_or_default(),
                        stream: stream.clone(),
                        detail: "it is stored already, but the rest of the batch is new".into(),
                    });
                }
                (Some(old), _) => {
                    let detail = if old.stream() != Some(stream.as_str()) {
                        Some(format!(
                            "it is stored in stream {}",
                            old.stream().unwrap_or_default()
                        ))
                    } else if old.event_type() != new.event_type()
                        || old.data() != new.data()
                        || !same_metadata(old, new)
                    {
                        Some("it is stored with another type, data or metadata".to_owned())
                    } else if i > 0
                        && found
                            .last()
                            .is_some_and(|p: &AppendedEvent| Some(p.version + 1) != old.version())
                    {
                        Some("it is stored, but not in the order of this batch".to_owned())
                    } else {
                        None
                    };
                    if let Some(detail) = detail {
                        return Err(StoreError::DuplicateEvent {
                            id: old.id(),
                            stream: stream.clone(),
                            detail,
                        });
                    }
                    found.push(AppendedEvent {
                        id: old.id(),
                        version: old.version().unwrap_or_default(),
                        position: old.position().unwrap_or_default(),
                    });
                }
            }
        }
        Ok(Some(found))
    }

    /// The event at `position` as seen in `stream` at `version`.
    fn as_in_stream(
        &self,
        stream: &StreamName,
        version: u64,
        position: u64,
    ) -> Option<RecordedEvent> {
        let event = self.log.get(&position)?;
        // An event linked into its own stream is a link there, at another
        // version.
        if event.stream() == Some(stream.as_str()) && event.version() == Some(version) {
            return Some(event.clone());
        }
        let mut parts = event.clone().into_parts();
        parts.origin = Some(Origin {
            stream: parts.stream.take().unwrap_or_else(|| Arc::from("")),
            version: parts.version.unwrap_or_default(),
        });
        parts.stream = Some(Arc::clone(stream.as_arc()));
        parts.version = Some(version);
        Some(RecordedEvent::from_parts(parts))
    }

    fn info(&self, name: &StreamName, stream: &Stream) -> StreamInfo {
        StreamInfo {
            stream: name.clone(),
            version: (stream.entries.len() as u64).saturating_sub(1),
            count: stream.entries.iter().filter(|e| e.is_some()).count() as u64,
            first_recorded_at: stream.first_recorded_at,
            last_recorded_at: stream.last_recorded_at,
        }
    }

    fn push(&mut self, stream: &StreamName, position: u64, at: chrono::DateTime<Utc>) -> u64 {
        let s = self
            .streams
            .entry(stream.clone())
            .or_insert_with(|| Stream {
                entries: Vec::new(),
                first_recorded_at: at,
                last_recorded_at: at,
            });
        s.entries.push(Some(position));
        s.last_recorded_at = at;
        s.entries.len() as u64 - 1
    }
}

/// Whether a new event's metadata is what the store made of it: the store
/// sets a missing correlation id to the event's own id.
fn same_metadata(old: &RecordedEvent, new: &NewEvent) -> bool {
    let mut expected = new.metadata().clone();
    expected.correlation_id.get_or_insert(*old.id().as_uuid());
    *old.metadata() == expected
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let types = events
            .iter()
            .map(|e| EventType::new(e.event_type()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = self.write();
        let appended = state.append(stream, expected, events, types)?;
        let head = state.last_position;
        drop(state);
        self.head.send_replace(head);
        Ok(appended)
    }

    async fn append_all(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>, StoreError> {
        let mut typed = Vec::with_capacity(appends.len());
        for part in appends {
            let types = part
                .events
                .iter()
                .map(|e| EventType::new(e.event_type()))
                .collect::<Result<Vec<_>, _>>()?;
            typed.push((part, types));
        }
        let mut state = self.write();
        state.validate_all(&typed)?;
        let mut results = Vec::with_capacity(typed.len());
        for (part, types) in typed {
            // Validated above against the state as each part leaves it, so
            // this cannot fail half-way.
            results.push(state.append(&part.stream, part.expected, part.events, types)?);
        }
        let head = state.last_position;
        drop(state);
        self.head.send_replace(head);
        Ok(results)
    }

    async fn link(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[EventId],
    ) -> Result<Appended, StoreError> {
        let mut state = self.write();
        let positions = events
            .iter()
            .map(|id| {
                state
                    .by_id
                    .get(id)
                    .copied()
                    .ok_or(StoreError::EventNotFound(*id))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let actual = state.check(stream, expected)?;
        let now = Utc::now();
        let appended: Vec<AppendedEvent> = events
            .iter()
            .zip(positions)
            .map(|(id, position)| AppendedEvent {
                id: *id,
                version: state.push(stream, position, now),
                position,
            })
            .collect();
        Ok(Appended {
            stream: stream.clone(),
            version: appended.last().map(|e| e.version).or(actual),
            events: appended,
        })
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        query: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.read();
        let Some(s) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let len = s.entries.len() as u64;
        let versions: Box<dyn Iterator<Item = u64>> = match query.direction {
            Direction::Forward => Box::new(query.from.unwrap_or(0)..len),
            Direction::Backward => {
                let start = query.from.map_or(len, |f| f.saturating_add(1).min(len));
                Box::new((0..start).rev())
            }
        };
        Ok(versions
            .filter_map(|v| {
                let position = s.entries[v as usize]?;
                state.as_in_stream(stream, v, position)
            })
            .take(query.limit)
            .collect())
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
        let batch = query.batch_size.unwrap_or(READ_BATCH);
        let limit = query.limit.unwrap_or(usize::MAX);
        let start = (query.after, 0usize, query);
        stream::unfold(start, move |(after, sent, query)| async move {
            if sent >= limit {
                return None;
            }
            let events: Vec<RecordedEvent> = {
                let state = self.read();
                state
                    .log
                    .range(after + 1..)
                    .take(batch)
                    .map(|(_, e)| e.clone())
                    .collect()
            };
            let last = events.last()?.position().unwrap_or(after);
            let matching: Vec<_> = events
                .into_iter()
                .filter(|e| query.matches(e))
                .take(limit - sent)
                .map(Ok)
                .collect();
            let sent = sent + matching.len();
            Some((stream::iter(matching), (last, sent, query)))
        })
        .flatten()
        .boxed()
    }

    async fn event(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        let state = self.read();
        Ok(state.by_id.get(&id).and_then(|p| state.log.get(p)).cloned())
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, StoreError> {
        let state = self.read();
        Ok(state.streams.get(stream).map(|s| state.info(stream, s)))
    }

    async fn list_streams(&self, query: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        let state = self.read();
        Ok(state
            .streams
            .iter()
            .filter(|(name, _)| query.after.as_deref().is_none_or(|a| name.as_str() > a))
            .filter(|(name, _)| {
                query
                    .prefix
                    .as_deref()
                    .is_none_or(|p| name.as_str().starts_with(p))
            })
            .take(query.limit)
            .map(|(name, s)| state.info(name, s))
            .collect())
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<bool, StoreError> {
        let mut state = self.write();
        state.check(stream, expected)?;
        let Some(removed) = state.streams.remove(stream) else {
            return Ok(false);
        };
        let own: Vec<u64> = removed
            .entries
            .iter()
            .flatten()
            .copied()
            .filter(|p| {
                state
                    .log
                    .get(p)
                    .is_some_and(|e| e.stream() == Some(stream.as_str()))
            })
            .collect();
        for position in &own {
            if let Some(event) = state.log.remove(position) {
                state.by_id.remove(&event.id());
            }
        }
        if !own.is_empty() {
            for s in state.streams.values_mut() {
                for entry in &mut s.entries {
                    if entry.is_some_and(|p| own.binary_search(&p).is_ok()) {
                        *entry = None;
                    }
                }
            }
        }
        Ok(true)
    }

    async fn head(&self) -> Result<u64, StoreError> {
        Ok(self.read().last_position)
    }

    fn watch_head(&self) -> Option<watch::Receiver<u64>> {
        Some(self.head.subscribe())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

#[async_trait]
impl CheckpointStore for MemoryStore {
    async fn load(&self, subscriber: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.checkpoints().get(subscriber).copied())
    }

    async fn save(&self, subscriber: &str, position: u64) -> Result<(), StoreError> {
        self.checkpoints().insert(subscriber.to_owned(), position);
        Ok(())
    }

    async fn reset(&self, subscriber: &str) -> Result<(), StoreError> {
        self.checkpoints().remove(subscriber);
        Ok(())
    }

    async fn load_enabled(&self, subscriber: &str) -> Result<Option<bool>, StoreError> {
        let enabled = self.enabled.lock().unwrap_or_else(|p| p.into_inner());
        Ok(enabled.get(subscriber).copied())
    }

    async fn save_enabled(&self, subscriber: &str, enabled: bool) -> Result<(), StoreError> {
        self.enabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subscriber.to_owned(), enabled);
        Ok(())
    }

    async fn schedule_retry(
        &self,
        subscriber: &str,
        retry: &ScheduledRetry,
    ) -> Result<(), StoreError> {
        self.retries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(subscriber.to_owned())
            .or_default()
            .insert(retry.event_id, retry.clone());
        Ok(())
    }

    async fn scheduled_retries(&self, subscriber: &str) -> Result<Vec<ScheduledRetry>, StoreError> {
        let retries = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<ScheduledRetry> = retries
            .get(subscriber)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        found.sort_by_key(|r| r.position);
        Ok(found)
    }

    async fn clear_retry(&self, subscriber: &str, event: EventId) -> Result<(), StoreError> {
        let mut retries = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(of) = retries.get_mut(subscriber) {
            of.remove(&event);
            if of.is_empty() {
                retries.remove(subscriber);
            }
        }
        Ok(())
    }
}

/// Leases for buses of this process that share the store: the memory
/// store is not shared between processes, but its groups behave as a
/// database's do, timed by tokio's clock.
#[async_trait]
impl LeaseStore for MemoryStore {
    async fn renew(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<GroupView, StoreError> {
        let now = Instant::now();
        let mut groups = self.groups();
        let g = groups.entry(group.to_owned()).or_default();
        g.members.retain(|_, expires| *expires > now);
        g.members.insert(member.to_owned(), now + ttl);
        let mut held = Vec::new();
        for (partition, p) in &mut g.partitions {
            if p.live_owner(now) == Some(member) {
                p.owner = Some((member.to_owned(), now + ttl));
                held.push(Lease::new(*partition, p.position, p.epoch));
            }
        }
        Ok(GroupView::new(g.members.keys().cloned().collect(), held))
    }

    async fn acquire(
        &self,
        group: &str,
        member: &str,
        partition: u32,
        ttl: Duration,
        initial: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let now = Instant::now();
        let mut groups = self.groups();
        let g = groups.entry(group.to_owned()).or_default();
        let p = g.partitions.entry(partition).or_insert(Partition {
            owner: None,
            position: initial,
            epoch: 0,
        });
        if p.live_owner(now).is_some_and(|owner| owner != member) {
            return Ok(None);
        }
        p.owner = Some((member.to_owned(), now + ttl));
        Ok(Some(Lease::new(partition, p.position, p.epoch)))
    }

    async fn save(
        &self,
        group: &str,
        member: &str,
        lease: Lease,
        position: u64,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut groups = self.groups();
        let Some(p) = groups
            .get_mut(group)
            .and_then(|g| g.partitions.get_mut(&lease.partition))
        else {
            return Ok(false);
        };
        if p.live_owner(now) != Some(member) || p.epoch != lease.epoch {
            return Ok(false);
        }
        p.position = position;
        Ok(true)
    }

    async fn release(&self, group: &str, member: &str, partition: u32) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut groups = self.groups();
        if let Some(p) = groups
            .get_mut(group)
            .and_then(|g| g.partitions.get_mut(&partition))
        {
            if p.live_owner(now) == Some(member) {
                p.owner = None;
            }
        }
        Ok(())
    }

    async fn leave(&self, group: &str, member: &str) -> Result<(), StoreError> {
        let mut groups = self.groups();
        if let Some(g) = groups.get_mut(group) {
            g.members.remove(member);
            for p in g.partitions.values_mut() {
                if p.owner.as_ref().is_some_and(|(owner, _)| owner == member) {
                    p.owner = None;
                }
            }
        }
        Ok(())
    }

    async fn rewind(&self, group: &str, partitions: u32, position: u64) -> Result<(), StoreError> {
        let mut groups = self.groups();
        let g = groups.entry(group.to_owned()).or_default();
        for partition in 0..partitions {
            let p = g.partitions.entry(partition).or_insert(Partition {
                owner: None,
                position,
                epoch: 0,
            });
            p.position = position;
            p.epoch += 1;
        }
        Ok(())
    }

    async fn partitions(&self, group: &str) -> Result<Vec<PartitionState>, StoreError> {
        let now = Instant::now();
        let groups = self.groups();
        Ok(groups.get(group).map_or_else(Vec::new, |g| {
            g.partitions
                .iter()
                .map(|(partition, p)| {
                    PartitionState::new(
                        *partition,
                        p.live_owner(now).map(str::to_owned),
                        p.position,
                        p.epoch,
                    )
                })
                .collect()
        }))
    }
}
