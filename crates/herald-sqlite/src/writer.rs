//! The writer: one thread, one connection, every write of the store.
//!
//! Writes arrive as commands on a channel, each with a oneshot reply. The
//! writer takes every command that is waiting (up to
//! [`max_group_commit`](crate::SqliteConfig::max_group_commit)) and runs them
//! in one transaction, each inside a savepoint so that a command that fails
//! (a version conflict, say) undoes only its own work; the replies go out
//! after the commit. Under load, many appends share one commit and, with
//! `synchronous=FULL`, one fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use herald::store::{
    Appended, AppendedEvent, ExpectedVersion, ScheduledRetry, StoreError, StreamName,
};
use herald::{DeadLetter, EventId, EventType, Metadata, NewDeadLetter, Payload};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::SqliteConfig;
use crate::dead_letters;
use crate::error::{Context, OpenError, backend, failure};
use crate::ledger;
use crate::retries;
use crate::rows::{int, uint};
use crate::schema;

/// An event ready to be written: type validated, id chosen, metadata
/// completed and serialized.
pub(crate) struct Pending {
    /// Whether the caller chose the id (only then can it be stored
    /// already).
    pub(crate) given: bool,
    pub(crate) id: EventId,
    pub(crate) event_type: EventType,
    pub(crate) data: Payload,
    /// The metadata with the correlation id filled in.
    pub(crate) metadata: Metadata,
    pub(crate) metadata_json: String,
}

/// A write for the writer thread.
pub(crate) enum Command {
    Append {
        stream: StreamName,
        expected: ExpectedVersion,
        events: Vec<Pending>,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    /// Appends to several streams; all or nothing.
    AppendAll {
        parts: Vec<(StreamName, ExpectedVersion, Vec<Pending>)>,
        reply: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
    },
    Link {
        stream: StreamName,
        expected: ExpectedVersion,
        ids: Vec<EventId>,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    Delete {
        stream: StreamName,
        expected: ExpectedVersion,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Saves a checkpoint, or forgets it (`position: None`).
    Checkpoint {
        subscriber: String,
        position: Option<u64>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Saves whether a subscriber is enabled.
    SubscriberEnabled {
        subscriber: String,
        enabled: bool,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Saves a subscriber's scheduled retry, replacing the one it had for
    /// the same event.
    ScheduleRetry {
        subscriber: String,
        retry: ScheduledRetry,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Removes a subscriber's scheduled retry of an event, if any.
    ClearRetry {
        subscriber: String,
        event: EventId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Records a dead letter, or updates the one of the same subscriber and
    /// event.
    RecordDeadLetter {
        letter: NewDeadLetter,
        reply: oneshot::Sender<Result<DeadLetter, StoreError>>,
    },
    RemoveDeadLetter {
        id: uuid::Uuid,
        reply: oneshot::Sender<Result<Option<DeadLetter>, StoreError>>,
    },
    /// Removes the dead letters whose last failure is before `before`
    /// (microseconds).
    PurgeDeadLetters {
        before: i64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Records in the ledger that `subscriber` handled `event`.
    Handled {
        subscriber: String,
        event: EventId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// What a command produced.
enum Done {
    Appended(Appended),
    AppendedAll(Vec<Appended>),
    Deleted(bool),
    Checkpointed,
    EnabledSaved,
    RetryScheduled,
    RetryCleared,
    DeadLetter(DeadLetter),
    Removed(Option<DeadLetter>),
    Purged(u64),
    Handled,
}

const INSERT_EVENT: &str = "INSERT INTO events (id, type, stream, version, recorded_at, data, metadata) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const INSERT_LINK: &str =
    "INSERT INTO stream_entries (stream, version, position) VALUES (?1, ?2, ?3)";
const UPSERT_STREAM: &str = "INSERT INTO streams (name, version, count, first_recorded_at, last_recorded_at) \
     VALUES (?1, ?2, ?3, ?4, ?4) \
     ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
     count = count + excluded.count, last_recorded_at = excluded.last_recorded_at";
const STREAM_VERSION: &str = "SELECT version FROM streams WHERE name = ?1";
const STORED_EVENT: &str =
    "SELECT stream, version, position, type, data, metadata FROM events WHERE id = ?1";
const POSITION_OF: &str = "SELECT position FROM events WHERE id = ?1";
const DELETE_STREAM: &str = include_str!("../queries/delete_stream.sql");
const SAVE_CHECKPOINT: &str = "INSERT INTO checkpoints (subscriber, position, saved_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (subscriber) DO UPDATE SET position = excluded.position, saved_at = excluded.saved_at";
const RESET_CHECKPOINT: &str = "DELETE FROM checkpoints WHERE subscriber = ?1";
const SAVE_ENABLED: &str = "INSERT INTO subscriber_states (subscriber, enabled, saved_at) \
     VALUES (?1, ?2, ?3) \
     ON CONFLICT (subscriber) DO UPDATE SET enabled = excluded.enabled, saved_at = excluded.saved_at";

/// The head position: the highest position ever assigned.
pub(crate) const HEAD: &str = "SELECT seq FROM sqlite_sequence WHERE name = 'events'";

/// Opens a connection with the settings every connection of the store
/// shares.
pub(crate) fn connect(config: &SqliteConfig, flags: OpenFlags) -> Result<Connection, OpenError> {
    let database = |source: rusqlite::Error| OpenError::Database {
        path: config.path.clone(),
        source: Box::new(source),
    };
    let conn = Connection::open_with_flags(&config.path, flags).map_err(database)?;
    // Validated: the timeout fits SQLite's milliseconds.
    let ms = config.busy_timeout_ms().unwrap_or(i32::MAX);
    conn.pragma_update(None, "busy_timeout", ms)
        .map_err(database)?;
    conn.pragma_update(None, "cache_size", -i64::from(config.cache_kib))
        .map_err(database)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The writer thread's state.
pub(crate) struct Writer {
    conn: Connection,
    head: Arc<watch::Sender<u64>>,
    max_group: usize,
    /// The last recorded-at time given, in microseconds: times never go
    /// backwards within one store, also when the clock does.
    last_time: i64,
    /// How long dead letters are kept after their last failure.
    dead_letter_retention: Option<Duration>,
    /// Counts commits, for the checkpointer.
    commits: Arc<AtomicU64>,
    /// Set when the WAL is copied back in the background.
    checkpointer: Option<Checkpointer>,
}

/// How often the checkpointer looks for commits to copy back.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// A thread with a connection of its own that copies the WAL back into the
/// database file (a `PASSIVE` checkpoint, which never blocks the writer)
/// every [`CHECKPOINT_EVERY`] when something was committed. Without it the
/// commit that makes the WAL pass `checkpoint_pages` runs the checkpoint
/// itself, syncing tens of megabytes while every append queued behind it
/// waits: that was the tail of the append latency. The writer's own
/// automatic checkpoint stays as the fallback, should this one fall behind.
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn spawn(config: &SqliteConfig, commits: Arc<AtomicU64>) -> Result<Self, OpenError> {
        let conn = connect(
            config,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("herald-sqlite-checkpointer".to_owned())
            .spawn(move || {
                let mut done = 0;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    let now = commits.load(Ordering::Acquire);
                    if now == done {
                        continue;
                    }
                    done = now;
                    if let Err(e) =
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "herald-sqlite: background checkpoint failed; the writer checkpoints instead");
                    }
                }
            })
            .map_err(|source| OpenError::Thread {
                role: "checkpointer",
                source,
            })?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::warn!("herald-sqlite: the checkpointer thread panicked");
        }
    }
}

impl Writer {
    /// Opens the write connection, switches the database to WAL, applies
    /// the migrations and reads the head.
    pub(crate) fn open(config: &SqliteConfig) -> Result<Self, OpenError> {
        let database = |source: rusqlite::Error| OpenError::Database {
            path: config.path.clone(),
            source: Box::new(source),
        };
        let mut conn = connect(
            config,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(database)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::Database {
                path: config.path.clone(),
                source: format!("cannot switch to WAL mode (journal mode is {mode})").into(),
            });
        }
        conn.pragma_update(None, "synchronous", config.synchronous.pragma())
            .map_err(database)?;
        conn.pragma_update(None, "wal_autocheckpoint", config.checkpoint_pages)
            .map_err(database)?;
        schema::migrate(&mut conn, &config.path)?;
        let head = conn
            .query_row(HEAD, [], |row| row.get::<_, i64>(0))
            .optional()
            .map_err(database)?
            .map_or(0, uint);
        let commits = Arc::new(AtomicU64::new(0));
        // With no automatic checkpoints the application runs its own.
        let checkpointer = if config.checkpoint_pages > 0 {
            Some(Checkpointer::spawn(config, Arc::clone(&commits))?)
        } else {
            None
        };
        let writer = Self {
            conn,
            head: Arc::new(watch::channel(head).0),
            max_group: config.max_group_commit,
            last_time: 0,
            dead_letter_retention: config.dead_letter_retention,
            commits,
            checkpointer,
        };
        // Retention applies on open too, so that a store that records no
        // more dead letters still sheds the old ones when it restarts.
        writer.apply_retention().map_err(|e| OpenError::Database {
            path: config.path.clone(),
            source: Box::new(e),
        })?;
        Ok(writer)
    }

    /// Removes the dead letters older than the retention, if there is one.
    fn apply_retention(&self) -> Result<(), StoreError> {
        if let Some(retention) = self.dead_letter_retention {
            let removed =
                dead_letters::purge(&self.conn, dead_letters::cutoff(Utc::now(), retention))?;
            if removed > 0 {
                tracing::debug!(
                    removed,
                    "herald-sqlite: removed dead letters past retention"
                );
            }
        }
        Ok(())
    }

    /// The head watch, shared with the store.
    pub(crate) fn head(&self) -> Arc<watch::Sender<u64>> {
        Arc::clone(&self.head)
    }

    /// Runs commands until every sender is gone.
    pub(crate) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(self.max_group);
        while let Some(first) = commands.blocking_recv() {
            group.push(first);
            while group.len() < self.max_group {
                match commands.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group);
            self.commits.fetch_add(1, Ordering::Release);
        }
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
    }

    /// Runs the commands of `group` in one transaction and answers them.
    fn commit_group(&mut self, group: &mut Vec<Command>) {
        tracing::trace!(writes = group.len(), "herald-sqlite: committing a group");
        let results = match self.exec("BEGIN IMMEDIATE") {
            Ok(()) => self.run_group(group),
            Err(e) => {
                let message = e.to_string();
                group
                    .iter()
                    .map(|_| Err(failure(format_args!("begin a write: {message}"))))
                    .collect()
            }
        };
        // Move the head before answering, so that a caller that sees `Ok`
        // sees the watch moved too.
        let head = group
            .iter()
            .zip(&results)
            .filter(|(command, _)| {
                matches!(command, Command::Append { .. } | Command::AppendAll { .. })
            })
            .filter_map(|(_, result)| match result {
                Ok(Done::Appended(a)) => a.events.last().map(|e| e.position),
                Ok(Done::AppendedAll(all)) => all
                    .iter()
                    .filter_map(|a| a.events.last().map(|e| e.position))
                    .max(),
                _ => None,
            })
            .max();
        if let Some(last) = head {
            self.head.send_if_modified(|h| {
                let moved = last > *h;
                *h = (*h).max(last);
                moved
            });
        }
        for (command, result) in group.drain(..).zip(results) {
            command.answer(result);
        }
    }

    /// Runs `group` inside the open transaction, then commits (or rolls
    /// back when nothing succeeded). Every result is final: if the commit
    /// fails, every success turns into that failure.
    fn run_group(&mut self, group: &[Command]) -> Vec<Result<Done, StoreError>> {
        let single = group.len() == 1;
        let mut results = Vec::with_capacity(group.len());
        for command in group {
            if single {
                results.push(self.run_command(command));
                continue;
            }
            if let Err(e) = self.exec("SAVEPOINT herald_write") {
                results.push(Err(backend("open a savepoint", e)));
                continue;
            }
            let result = self.run_command(command);
            let undo = if result.is_err() {
                self.exec("ROLLBACK TO herald_write")
            } else {
                Ok(())
            };
            let release = self.exec("RELEASE herald_write");
            match undo.and(release) {
                Ok(()) => results.push(result),
                // The transaction is in an unknown state: fail the whole
                // group.
                Err(e) => return self.abort(group.len(), &e),
            }
        }
        if results.iter().all(Result::is_err) {
            if let Err(e) = self.exec("ROLLBACK") {
                tracing::warn!(error = %e, "herald-sqlite: rollback failed");
            }
            return results;
        }
        match self.exec("COMMIT") {
            Ok(()) => results,
            Err(e) => {
                let message = e.to_string();
                let _ = self.exec("ROLLBACK");
                results
                    .into_iter()
                    .map(|r| r.and(Err(failure(format_args!("commit: {message}")))))
                    .collect()
            }
        }
    }

    /// Rolls the transaction back and fails all `n` commands.
    fn abort(&mut self, n: usize, error: &rusqlite::Error) -> Vec<Result<Done, StoreError>> {
        let _ = self.exec("ROLLBACK");
        let message = error.to_string();
        (0..n)
            .map(|_| Err(failure(format_args!("write transaction failed: {message}"))))
            .collect()
    }

    fn run_command(&mut self, command: &Command) -> Result<Done, StoreError> {
        match command {
            Command::Append {
                stream,
                expected,
                events,
                ..
            } => self.append(stream, *expected, events).map(Done::Appended),
            // A failing part fails the command, and the caller rolls the
            // command back whole (its savepoint, or the transaction when it
            // runs alone), so no part stays.
            Command::AppendAll { parts, .. } => parts
                .iter()
                .map(|(stream, expected, events)| self.append(stream, *expected, events))
                .collect::<Result<Vec<_>, _>>()
                .map(Done::AppendedAll),
            Command::Link {
                stream,
                expected,
                ids,
                ..
            } => self.link(stream, *expected, ids).map(Done::Appended),
            Command::Delete {
                stream, expected, ..
            } => self.delete(stream, *expected).map(Done::Deleted),
            Command::Checkpoint {
                subscriber,
                position,
                ..
            } => self
                .checkpoint(subscriber, *position)
                .map(|()| Done::Checkpointed),
            Command::SubscriberEnabled {
                subscriber,
                enabled,
                ..
            } => {
                let at = self.now();
                self.conn
                    .prepare_cached(SAVE_ENABLED)
                    .and_then(|mut s| s.execute((subscriber, enabled, at)))
                    .context(format!("save whether subscriber {subscriber:?} is enabled"))
                    .map(|_| Done::EnabledSaved)
            }
            Command::ScheduleRetry {
                subscriber, retry, ..
            } => retries::schedule(&self.conn, subscriber, retry).map(|()| Done::RetryScheduled),
            Command::ClearRetry {
                subscriber, event, ..
            } => retries::clear(&self.conn, subscriber, *event).map(|()| Done::RetryCleared),
            Command::RecordDeadLetter { letter, .. } => {
                self.apply_retention()?;
                dead_letters::record(&self.conn, letter).map(Done::DeadLetter)
            }
            Command::RemoveDeadLetter { id, .. } => {
                dead_letters::remove(&self.conn, *id).map(Done::Removed)
            }
            Command::PurgeDeadLetters { before, .. } => {
                dead_letters::purge(&self.conn, *before).map(Done::Purged)
            }
            Command::Handled {
                subscriber, event, ..
            } => {
                let at = self.now();
                ledger::insert(&self.conn, subscriber, *event, at).map(|()| Done::Handled)
            }
        }
    }

    fn exec(&self, sql: &str) -> Result<(), rusqlite::Error> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    /// A recorded-at time in microseconds, never before the last one.
    fn now(&mut self) -> i64 {
        self.last_time = self.last_time.max(Utc::now().timestamp_micros());
        self.last_time
    }

    /// The stream's version (`None`: no stream).
    fn version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        let context = || format!("read the version of stream {stream}");
        self.conn
            .prepare_cached(STREAM_VERSION)
            .context(context())?
            .query_row([stream.as_str()], |row| row.get::<_, i64>(0))
            .optional()
            .context(context())
            .map(|v| v.map(uint))
    }

    /// The stream's version, if it meets `expected`.
    fn check(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Option<u64>, StoreError> {
        expected.check(stream, self.version(stream)?)
    }

    fn append(
        &mut self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[Pending],
    ) -> Result<Appended, StoreError> {
        if let Some(repeat) = self.repeat_of(stream, events)? {
            return Ok(Appended {
                stream: stream.clone(),
                version: repeat.last().map(|e| e.version),
                events: repeat,
            });
        }
        let actual = self.check(stream, expected)?;
        if events.is_empty() {
            return Ok(Appended {
                stream: stream.clone(),
                version: actual,
                events: Vec::new(),
            });
        }
        let at = self.now();
        let first = actual.map_or(0, |v| v + 1);
        let mut appended = Vec::with_capacity(events.len());
        {
            let context = || format!("append to stream {stream}");
            let mut insert = self.conn.prepare_cached(INSERT_EVENT).context(context())?;
            for (i, event) in events.iter().enumerate() {
                let version = first + i as u64;
                let inserted = insert.execute((
                    event.id.as_uuid().as_bytes(),
                    event.event_type.as_str(),
                    stream.as_str(),
                    int(version),
                    at,
                    event.data.as_str(),
                    event.metadata_json.as_str(),
                ));
                if let Err(e) = inserted {
                    return Err(self.insert_failed(stream, &events[..i], event, e));
                }
                appended.push(AppendedEvent {
                    id: event.id,
                    version,
                    position: uint(self.conn.last_insert_rowid()),
                });
            }
        }
        let last = first + events.len() as u64 - 1;
        self.upsert_stream(stream, last, events.len() as u64, at)?;
        Ok(Appended {
            stream: stream.clone(),
            version: Some(last),
            events: appended,
        })
    }

    /// Why inserting `event` failed: its id is stored already or appears
    /// earlier in the batch (the unique index on ids caught it), or the
    /// backend failed.
    fn insert_failed(
        &self,
        stream: &StreamName,
        before: &[Pending],
        event: &Pending,
        error: rusqlite::Error,
    ) -> StoreError {
        let duplicate = |detail: String| StoreError::DuplicateEvent {
            id: event.id,
            stream: stream.clone(),
            detail,
        };
        if event.given {
            if before.iter().any(|e| e.id == event.id) {
                return duplicate("it appears twice in this batch".to_owned());
            }
            if let Ok(Some(old)) = self.stored(event.id) {
                return duplicate(format!(
                    "it is stored in stream {} by an append this batch does not repeat",
                    old.stream
                ));
            }
        }
        backend(format_args!("append to stream {stream}"), error)
    }

    /// The stored events of an append that repeats an earlier one, or why
    /// it is not a repeat: an append is a repeat when its first event's id
    /// is stored, and then every event must match the stored one, in the
    /// same stream, consecutively.
    fn repeat_of(
        &self,
        stream: &StreamName,
        events: &[Pending],
    ) -> Result<Option<Vec<AppendedEvent>>, StoreError> {
        let Some(first) = events.first() else {
            return Ok(None);
        };
        if !first.given {
            return Ok(None);
        }
        let mut found: Vec<AppendedEvent> = Vec::with_capacity(events.len());
        for (i, new) in events.iter().enumerate() {
            let stored = if new.given {
                self.stored(new.id)?
            } else {
                None
            };
            let Some(old) = stored else {
                if i == 0 {
                    return Ok(None);
                }
                return Err(StoreError::DuplicateEvent {
                    id: first.id,
                    stream: stream.clone(),
                    detail: "it is stored already, but the rest of the batch is new".into(),
                });
            };
            let detail = if old.stream != stream.as_str() {
                Some(format!("it is stored in stream {}", old.stream))
            } else if old.event_type != new.event_type.as_str()
                || old.data != new.data.as_str()
                || serde_json::from_str::<Metadata>(&old.metadata)
                    .ok()
                    .as_ref()
                    != Some(&new.metadata)
            {
                Some("it is stored with another type, data or metadata".to_owned())
            } else if found.last().is_some_and(|p| p.version + 1 != old.version) {
                Some("it is stored, but not in the order of this batch".to_owned())
            } else {
                None
            };
            if let Some(detail) = detail {
                return Err(StoreError::DuplicateEvent {
                    id: new.id,
                    stream: stream.clone(),
                    detail,
                });
            }
            found.push(AppendedEvent {
                id: new.id,
                version: old.version,
                position: old.position,
            });
        }
        Ok(Some(found))
    }

    /// The stored event with this id, as the repeat check needs it.
    fn stored(&self, id: EventId) -> Result<Option<Stored>, StoreError> {
        let context = || format!("look up event {id}");
        self.conn
            .prepare_cached(STORED_EVENT)
            .context(context())?
            .query_row([id.as_uuid().as_bytes()], |row| {
                Ok(Stored {
                    stream: row.get(0)?,
                    version: uint(row.get(1)?),
                    position: uint(row.get(2)?),
                    event_type: row.get(3)?,
                    data: row.get(4)?,
                    metadata: row.get(5)?,
                })
            })
            .optional()
            .context(context())
    }

    fn upsert_stream(
        &self,
        stream: &StreamName,
        version: u64,
        added: u64,
        at: i64,
    ) -> Result<(), StoreError> {
        let context = || format!("update stream {stream}");
        self.conn
            .prepare_cached(UPSERT_STREAM)
            .context(context())?
            .execute((stream.as_str(), int(version), int(added), at))
            .context(context())
            .map(|_| ())
    }

    fn link(
        &mut self,
        stream: &StreamName,
        expected: ExpectedVersion,
        ids: &[EventId],
    ) -> Result<Appended, StoreError> {
        let mut positions = Vec::with_capacity(ids.len());
        {
            let context = || format!("link into stream {stream}");
            let mut find = self.conn.prepare_cached(POSITION_OF).context(context())?;
            for id in ids {
                let position = find
                    .query_row([id.as_uuid().as_bytes()], |row| row.get::<_, i64>(0))
                    .optional()
                    .context(context())?
                    .ok_or(StoreError::EventNotFound(*id))?;
                positions.push(position);
            }
        }
        let actual = self.check(stream, expected)?;
        if ids.is_empty() {
            return Ok(Appended {
                stream: stream.clone(),
                version: actual,
                events: Vec::new(),
            });
        }
        let at = self.now();
        let first = actual.map_or(0, |v| v + 1);
        let mut appended = Vec::with_capacity(ids.len());
        {
            let context = || format!("link into stream {stream}");
            let mut insert = self.conn.prepare_cached(INSERT_LINK).context(context())?;
            for (i, (id, position)) in ids.iter().zip(positions).enumerate() {
                let version = first + i as u64;
                insert
                    .execute((stream.as_str(), int(version), position))
                    .context(context())?;
                appended.push(AppendedEvent {
                    id: *id,
                    version,
                    position: uint(position),
                });
            }
        }
        let last = first + ids.len() as u64 - 1;
        self.upsert_stream(stream, last, ids.len() as u64, at)?;
        Ok(Appended {
            stream: stream.clone(),
            version: Some(last),
            events: appended,
        })
    }

    fn delete(
        &mut self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<bool, StoreError> {
        if self.check(stream, expected)?.is_none() {
            return Ok(false);
        }
        let context = || format!("delete stream {stream}");
        for statement in DELETE_STREAM
            .split_inclusive(';')
            .filter(|s| !s.trim().is_empty())
        {
            self.conn
                .prepare_cached(statement)
                .context(context())?
                .execute([stream.as_str()])
                .context(context())?;
        }
        Ok(true)
    }

    fn checkpoint(&mut self, subscriber: &str, position: Option<u64>) -> Result<(), StoreError> {
        let context = || format!("save the checkpoint of subscriber {subscriber:?}");
        let done = match position {
            Some(position) => {
                let at = self.now();
                self.conn
                    .prepare_cached(SAVE_CHECKPOINT)
                    .context(context())?
                    .execute((subscriber, int(position), at))
            }
            None => self
                .conn
                .prepare_cached(RESET_CHECKPOINT)
                .context(context())?
                .execute([subscriber]),
        };
        done.context(context()).map(|_| ())
    }
}

/// What the repeat check compares.
struct Stored {
    stream: String,
    version: u64,
    position: u64,
    event_type: String,
    data: String,
    metadata: String,
}

impl Command {
    /// Sends the result to the caller (who may have stopped waiting).
    fn answer(self, result: Result<Done, StoreError>) {
        match self {
            Self::Append { reply, .. } | Self::Link { reply, .. } => send(reply, result, |done| {
                let Done::Appended(a) = done else { return None };
                Some(a)
            }),
            Self::AppendAll { reply, .. } => send(reply, result, |done| {
                let Done::AppendedAll(a) = done else {
                    return None;
                };
                Some(a)
            }),
            Self::Delete { reply, .. } => send(reply, result, |done| {
                let Done::Deleted(d) = done else { return None };
                Some(d)
            }),
            Self::Checkpoint { reply, .. } => send(reply, result, |done| {
                matches!(done, Done::Checkpointed).then_some(())
            }),
            Self::SubscriberEnabled { reply, .. } => send(reply, result, |done| {
                matches!(done, Done::EnabledSaved).then_some(())
            }),
            Self::ScheduleRetry { reply, .. } => send(reply, result, |done| {
                matches!(done, Done::RetryScheduled).then_some(())
            }),
            Self::ClearRetry { reply, .. } => send(reply, result, |done| {
                matches!(done, Done::RetryCleared).then_some(())
            }),
            Self::RecordDeadLetter { reply, .. } => send(reply, result, |done| {
                let Done::DeadLetter(l) = done else {
                    return None;
                };
                Some(l)
            }),
            Self::RemoveDeadLetter { reply, .. } => send(reply, result, |done| {
                let Done::Removed(l) = done else { return None };
                Some(l)
            }),
            Self::PurgeDeadLetters { reply, .. } => send(reply, result, |done| {
                let Done::Purged(n) = done else { return None };
                Some(n)
            }),
            Self::Handled { reply, .. } => send(reply, result, |done| {
                matches!(done, Done::Handled).then_some(())
            }),
        }
    }
}

/// Sends `result` as `pick` unwraps it (a result of another kind is a bug,
/// reported rather than panicking the writer).
fn send<T>(
    reply: oneshot::Sender<Result<T, StoreError>>,
    result: Result<Done, StoreError>,
    pick: impl FnOnce(Done) -> Option<T>,
) {
    let _ = reply.send(result.and_then(|done| pick(done).ok_or_else(mismatch)));
}

/// A command answered with another command's result: a bug, reported rather
/// than panicking the writer.
fn mismatch() -> StoreError {
    failure("the writer answered a command with the result of another kind")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_statements_split_cleanly() {
        let statements: Vec<&str> = DELETE_STREAM
            .split_inclusive(';')
            .filter(|s| !s.trim().is_empty())
            .collect();
        assert_eq!(statements.len(), 5);
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("../migrations/0001_init.sql"))
            .unwrap();
        for s in statements {
            conn.prepare(s).unwrap();
        }
    }
}
