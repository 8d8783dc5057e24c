//! [`SqliteStore`]: the [`EventStore`] on SQLite.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use herald::store::{
    Appended, Capabilities, CheckpointStore, Direction, EventStore, ExpectedVersion, ListStreams,
    ReadAll, ReadStream, ScheduledRetry, StoreError, StreamAppend, StreamInfo, StreamName,
};
use herald::{EventId, EventType, NewEvent, RecordedEvent, TopicPattern};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::SqliteConfig;
use crate::error::{Context, OpenError, failure};
use crate::reader::Readers;
use crate::retries;
use crate::rows::{self, EVENT_COLUMNS, STREAM_COLUMNS, Shown, int, micros_ceil, uint};
use crate::writer::{Command, HEAD, Pending, Writer};

/// Events per round trip when reading the global log, unless the query says.
const READ_BATCH: usize = 512;

/// The most rows one round trip of `read_all` fetches, whatever the query
/// asks, so that a read never holds much of the log in memory.
const MAX_READ_BATCH: usize = 10_000;

/// The most exact event types `read_all` looks up through the type index;
/// more are matched while scanning the log.
const MAX_INDEXED_TYPES: usize = 8;

const READ_STREAM_FORWARD: &str = include_str!("../queries/read_stream_forward.sql");
const READ_STREAM_BACKWARD: &str = include_str!("../queries/read_stream_backward.sql");

/// An event store in a SQLite database file.
///
/// See the [crate docs](crate) for how it works, what it promises and what
/// it costs. Clones share one store (one writer thread, one read pool); the
/// threads stop when the last clone is dropped, after finishing the work in
/// hand.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald::store::{EventStore, ExpectedVersion, StreamName};
/// use herald::NewEvent;
/// use herald_sqlite::{SqliteConfig, SqliteStore};
/// use serde_json::json;
///
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(SqliteConfig::new(dir.path().join("events.db"))).await?;
/// let order = StreamName::new("order-42")?;
/// let done = store
///     .append(&order, ExpectedVersion::NoStream, vec![NewEvent::new("order.created", json!({"total": 10}))])
///     .await?;
/// assert_eq!(done.events[0].position, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    readers: Readers,
    commands: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    head: Arc<watch::Sender<u64>>,
    config: SqliteConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Readers close first, so that the writer's connection is the last
        // one and SQLite checkpoints and removes the `-wal` file as it
        // closes.
        drop(std::mem::replace(&mut self.readers, Readers::empty()));
        self.commands = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.config.path)
            .field("synchronous", &self.inner.config.synchronous)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the database that `config` names, brings its
    /// schema up to date, and starts the writer and reader threads.
    ///
    /// Needs no particular async runtime: the work happens on the store's
    /// own threads.
    ///
    /// # Errors
    ///
    /// [`OpenError`] when the configuration is invalid, the file cannot be
    /// opened or migrated, or its schema is newer than this crate knows.
    pub async fn open(config: SqliteConfig) -> Result<Self, OpenError> {
        config.validate()?;
        let (ready, opened) = oneshot::channel();
        let (commands, queue) = mpsc::channel(config.write_queue);
        let writer_config = config.clone();
        let writer = std::thread::Builder::new()
            .name("herald-sqlite-writer".to_owned())
            .spawn(move || match Writer::open(&writer_config) {
                Ok(writer) => {
                    let _ = ready.send(Ok(writer.head()));
                    writer.run(queue);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|source| OpenError::Thread {
                role: "writer",
                source,
            })?;
        let head = match opened.await {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => {
                let _ = writer.join();
                return Err(e);
            }
            Err(_) => {
                let _ = writer.join();
                return Err(OpenError::Database {
                    path: config.path.clone(),
                    source: "the writer thread stopped while opening".into(),
                });
            }
        };
        // If the readers fail to open, dropping the sender and joining
        // stops the writer again.
        let mut inner = Inner {
            readers: Readers::empty(),
            commands: Some(commands),
            writer: Some(writer),
            head,
            config,
        };
        inner.readers = Readers::open(&inner.config).await?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.config.path
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &SqliteConfig {
        &self.inner.config
    }

    /// Sends a command to the writer and waits for its answer.
    pub(crate) async fn write<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || failure("the writer thread has stopped");
        let commands = self.inner.commands.as_ref().ok_or_else(stopped)?;
        commands.send(command(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Runs `read` on a read connection.
    pub(crate) async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.readers.run(read).await
    }
}

/// Validates and completes the events of an append, before they go to the
/// writer.
fn prepare(events: Vec<NewEvent>) -> Result<Vec<Pending>, StoreError> {
    events
        .into_iter()
        .map(|new| {
            let event_type = EventType::new(new.event_type())?;
            let (given, id) = match new.id() {
                Some(id) => (true, id),
                None => (false, EventId::new()),
            };
            let mut metadata = new.metadata().clone();
            metadata.correlation_id.get_or_insert(*id.as_uuid());
            let metadata_json = serde_json::to_string(&metadata)
                .map_err(|e| failure(format_args!("serialize metadata of event {id}: {e}")))?;
            Ok(Pending {
                given,
                id,
                event_type,
                data: new.data().clone(),
                metadata,
                metadata_json,
            })
        })
        .collect()
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let events = prepare(events)?;
        self.write(|reply| Command::Append {
            stream: stream.clone(),
            expected,
            events,
            reply,
        })
        .await
    }

    async fn append_all(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>, StoreError> {
        let parts = appends
            .into_iter()
            .map(|part| Ok((part.stream, part.expected, prepare(part.events)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write(|reply| Command::AppendAll { parts, reply })
            .await
    }

    async fn link(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[EventId],
    ) -> Result<Appended, StoreError> {
        self.write(|reply| Command::Link {
            stream: stream.clone(),
            expected,
            ids: events.to_vec(),
            reply,
        })
        .await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        query: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let stream = stream.clone();
        self.read(move |conn| {
            let (sql, from) = match query.direction {
                Direction::Forward => (READ_STREAM_FORWARD, query.from.map_or(0, int)),
                Direction::Backward => (READ_STREAM_BACKWARD, query.from.map_or(i64::MAX, int)),
            };
            let context = || format!("read stream {stream}");
            let mut statement = conn.prepare_cached(sql).context(context())?;
            let mut rows = statement
                .query((stream.as_str(), from, int(query.limit as u64)))
                .context(context())?;
            let mut events = Vec::new();
            while let Some(row) = rows.next().context(context())? {
                let linked: bool = row.get(9).context(context())?;
                let shown = if linked {
                    Shown::Linked {
                        stream: &stream,
                        version: rows::unsigned(row, 8, "stream version")?,
                    }
                } else {
                    Shown::Own
                };
                events.push(rows::event(row, shown)?);
            }
            Ok(events)
        })
        .await
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
        let plan = Arc::new(Plan::new(&query));
        let batch = query
            .batch_size
            .unwrap_or(READ_BATCH)
            .clamp(1, MAX_READ_BATCH);
        let limit = query.limit.unwrap_or(usize::MAX);
        let window = Window {
            since: query.since.map_or(i64::MIN, micros_ceil),
            until: query.until.map_or(i64::MAX, micros_ceil),
        };
        let start = Cursor {
            after: query.after,
            sent: 0,
            done: false,
        };
        stream::try_unfold(start, move |mut cursor| {
            let plan = Arc::clone(&plan);
            async move {
                loop {
                    if cursor.done || cursor.sent >= limit {
                        return Ok::<_, StoreError>(None);
                    }
                    let want = batch.min(limit - cursor.sent);
                    let plan = Arc::clone(&plan);
                    let after = cursor.after;
                    let page = self
                        .read(move |conn| plan.fetch(conn, after, want, window))
                        .await?;
                    cursor.done = page.scanned < want;
                    if let Some(last) = page.last {
                        cursor.after = last;
                    }
                    let mut events = page.events;
                    events.truncate(limit - cursor.sent);
                    cursor.sent += events.len();
                    if !events.is_empty() {
                        return Ok(Some((events, cursor)));
                    }
                }
            }
        })
        .map_ok(|events| stream::iter(events.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    async fn event(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.read(move |conn| {
            let context = || format!("read event {id}");
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1");
            let mut statement = conn.prepare_cached(&sql).context(context())?;
            let mut rows = statement
                .query([id.as_uuid().as_bytes()])
                .context(context())?;
            match rows.next().context(context())? {
                Some(row) => rows::event(row, Shown::Own).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, StoreError> {
        let stream = stream.clone();
        self.read(move |conn| {
            let context = || format!("read stream info of {stream}");
            let sql = format!("SELECT {STREAM_COLUMNS} FROM streams WHERE name = ?1");
            let mut statement = conn.prepare_cached(&sql).context(context())?;
            let mut rows = statement.query([stream.as_str()]).context(context())?;
            match rows.next().context(context())? {
                Some(row) => rows::stream_info(row).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_streams(&self, query: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let prefix = query.prefix.unwrap_or_default();
            // Start at the later of the cursor (exclusive) and the prefix
            // (inclusive); names with the prefix then come first, in order.
            let (op, bound) = match query.after {
                Some(after) if after >= prefix => (">", after),
                _ => (">=", prefix.clone()),
            };
            let sql = format!(
                "SELECT {STREAM_COLUMNS} FROM streams WHERE name {op} ?1 ORDER BY name LIMIT ?2"
            );
            let context = || "list streams".to_owned();
            let mut statement = conn.prepare_cached(&sql).context(context())?;
            let mut rows = statement
                .query((bound, int(query.limit as u64)))
                .context(context())?;
            let mut infos = Vec::new();
            while let Some(row) = rows.next().context(context())? {
                if !rows::text(row, 0, "stream name")?.starts_with(&prefix) {
                    break;
                }
                infos.push(rows::stream_info(row)?);
            }
            Ok(infos)
        })
        .await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<bool, StoreError> {
        self.write(|reply| Command::Delete {
            stream: stream.clone(),
            expected,
            reply,
        })
        .await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(HEAD)
                .context("read the head")?
                .query_row([], |row| row.get::<_, i64>(0))
                .optional()
                .context("read the head")
                .map(|head| head.map_or(0, uint))
        })
        .await
    }

    fn watch_head(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.head.subscribe())
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.durable = true;
        capabilities.shared_between_processes = true;
        capabilities
    }
}

/// Checkpoints live in the same file as the history, in the `checkpoints`
/// table, subscribers' enabled states in `subscriber_states` and their
/// scheduled retries in `scheduled_retries` (one row per subscriber and
/// event; the errors as a JSON array, the due time to the microsecond,
/// rounded down); saves go through the writer (and its group commit), so a
/// saved checkpoint or retry is as durable as an append.
#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn load(&self, subscriber: &str) -> Result<Option<u64>, StoreError> {
        let subscriber = subscriber.to_owned();
        self.read(move |conn| {
            let context = || format!("load the checkpoint of subscriber {subscriber:?}");
            conn.prepare_cached("SELECT position FROM checkpoints WHERE subscriber = ?1")
                .context(context())?
                .query_row([&subscriber], |row| row.get::<_, i64>(0))
                .optional()
                .context(context())
                .map(|position| position.map(uint))
        })
        .await
    }

    async fn save(&self, subscriber: &str, position: u64) -> Result<(), StoreError> {
        self.write(|reply| Command::Checkpoint {
            subscriber: subscriber.to_owned(),
            position: Some(position),
            reply,
        })
        .await
    }

    async fn reset(&self, subscriber: &str) -> Result<(), StoreError> {
        self.write(|reply| Command::Checkpoint {
            subscriber: subscriber.to_owned(),
            position: None,
            reply,
        })
        .await
    }

    async fn load_enabled(&self, subscriber: &str) -> Result<Option<bool>, StoreError> {
        let subscriber = subscriber.to_owned();
        self.read(move |conn| {
            let context = || format!("load whether subscriber {subscriber:?} is enabled");
            conn.prepare_cached("SELECT enabled FROM subscriber_states WHERE subscriber = ?1")
                .context(context())?
                .query_row([&subscriber], |row| row.get::<_, bool>(0))
                .optional()
                .context(context())
        })
        .await
    }

    async fn save_enabled(&self, subscriber: &str, enabled: bool) -> Result<(), StoreError> {
        self.write(|reply| Command::SubscriberEnabled {
            subscriber: subscriber.to_owned(),
            enabled,
            reply,
        })
        .await
    }

    async fn schedule_retry(
        &self,
        subscriber: &str,
        retry: &ScheduledRetry,
    ) -> Result<(), StoreError> {
        self.write(|reply| Command::ScheduleRetry {
            subscriber: subscriber.to_owned(),
            retry: retry.clone(),
            reply,
        })
        .await
    }

    async fn scheduled_retries(&self, subscriber: &str) -> Result<Vec<ScheduledRetry>, StoreError> {
        let subscriber = subscriber.to_owned();
        self.read(move |conn| retries::list(conn, &subscriber))
            .await
    }

    async fn clear_retry(&self, subscriber: &str, event: EventId) -> Result<(), StoreError> {
        self.write(|reply| Command::ClearRetry {
            subscriber: subscriber.to_owned(),
            event,
            reply,
        })
        .await
    }
}

/// Where `read_all` is in the log.
struct Cursor {
    /// The last position fetched.
    after: u64,
    /// Events yielded so far.
    sent: usize,
    /// The last fetch reached the end of the log.
    done: bool,
}

/// The time filter, in microseconds: `since <= recorded_at < until`.
#[derive(Clone, Copy)]
struct Window {
    since: i64,
    until: i64,
}

/// One round trip's worth of the global log.
struct Page {
    /// The matching events.
    events: Vec<RecordedEvent>,
    /// How many rows the query returned (fewer than asked: the end).
    scanned: usize,
    /// The position of the last row returned.
    last: Option<u64>,
}

/// How `read_all` finds the events its topics select.
enum Plan {
    /// Every type: walk the log by position.
    Everything,
    /// A few exact types: walk the type index, one range per type, merged
    /// by position.
    Types(Vec<String>),
    /// Wildcards: walk the log by position and match each type in Rust.
    Patterns(Vec<TopicPattern>),
}

impl Plan {
    fn new(query: &ReadAll) -> Self {
        let matches_all = |t: &TopicPattern| t.as_str().split('.').all(|s| s == "#");
        if query.topics.is_empty() || query.topics.iter().any(matches_all) {
            return Self::Everything;
        }
        if query.topics.iter().all(TopicPattern::is_exact) {
            let types: BTreeSet<&str> = query.topics.iter().map(TopicPattern::as_str).collect();
            if types.len() <= MAX_INDEXED_TYPES {
                return Self::Types(types.into_iter().map(str::to_owned).collect());
            }
        }
        Self::Patterns(query.topics.clone())
    }

    /// The SQL of one round trip. Parameters: ?1 after, ?2 since, ?3 until,
    /// ?4 limit, then the types.
    fn sql(&self) -> String {
        let scan = format!(
            "SELECT {EVENT_COLUMNS} FROM events \
             WHERE position > ?1 AND recorded_at >= ?2 AND recorded_at < ?3 \
             ORDER BY position LIMIT ?4"
        );
        match self {
            Self::Everything | Self::Patterns(_) => scan,
            Self::Types(types) => {
                let one = |i: usize| {
                    format!(
                        "SELECT {EVENT_COLUMNS} FROM events \
                         WHERE type = ?{} AND position > ?1 AND recorded_at >= ?2 AND recorded_at < ?3 \
                         ORDER BY position LIMIT ?4",
                        i + 5
                    )
                };
                if types.len() == 1 {
                    return one(0);
                }
                let parts: Vec<String> = (0..types.len())
                    .map(|i| format!("SELECT * FROM ({})", one(i)))
                    .collect();
                format!("{} ORDER BY position LIMIT ?4", parts.join(" UNION ALL "))
            }
        }
    }

    fn fetch(
        &self,
        conn: &Connection,
        after: u64,
        want: usize,
        window: Window,
    ) -> Result<Page, StoreError> {
        let context = || "read the global log".to_owned();
        let sql = self.sql();
        let mut statement = conn.prepare_cached(&sql).context(context())?;
        let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(8);
        let (after, limit) = (int(after), int(want as u64));
        params.extend([
            &after as &dyn rusqlite::ToSql,
            &window.since,
            &window.until,
            &limit,
        ]);
        if let Self::Types(types) = self {
            params.extend(types.iter().map(|t| t as &dyn rusqlite::ToSql));
        }
        let mut rows = statement.query(params.as_slice()).context(context())?;
        let mut page = Page {
            events: Vec::with_capacity(want.min(READ_BATCH)),
            scanned: 0,
            last: None,
        };
        while let Some(row) = rows.next().context(context())? {
            page.scanned += 1;
            page.last = Some(rows::unsigned(row, 0, "position")?);
            if let Self::Patterns(patterns) = self {
                let event_type = rows::text(row, 2, "type")?;
                if !patterns.iter().any(|p| p.matches(event_type)) {
                    continue;
                }
            }
            page.events.push(rows::event(row, Shown::Own)?);
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's query plan of `sql`, one step per line.
    fn plan_of(conn: &Connection, sql: &str) -> String {
        let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params = vec![0i64; statement.parameter_count()];
        let steps: Vec<String> = statement
            .query_map(rusqlite::params_from_iter(params), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        steps.join("\n")
    }

    #[test]
    fn queries_walk_indexes_and_never_sort_a_whole_stream_or_log() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("../migrations/0001_init.sql"))
            .unwrap();
        let types = |n: usize| Plan::Types((0..n).map(|i| format!("t{i}")).collect()).sql();
        let deletes = include_str!("../queries/delete_stream.sql")
            .split_inclusive(';')
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned);
        let unsorted = [
            READ_STREAM_FORWARD.to_owned(),
            READ_STREAM_BACKWARD.to_owned(),
            Plan::Everything.sql(),
            types(1),
        ];
        for sql in unsorted.iter().cloned().chain([types(3)]).chain(deletes) {
            let plan = plan_of(&conn, &sql);
            // Scanning a subquery's (limited) rows is fine; scanning a table
            // is not.
            let table_scan = plan
                .lines()
                .any(|step| step.starts_with("SCAN ") && !step.contains("subquery"));
            assert!(!table_scan, "a full scan in\n{plan}\nfor {sql}");
            if unsorted.contains(&sql) {
                assert!(
                    !plan.contains("TEMP B-TREE"),
                    "a sort in\n{plan}\nfor {sql}"
                );
            }
        }
    }
}
