//! [`PgStore`]: the [`EventStore`] on PostgreSQL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, StreamExt};
use herald::store::{
    Appended, AppendedEvent, Capabilities, Direction, EventStore, ExpectedVersion, ListStreams,
    ReadAll, ReadStream, StoreError, StreamAppend, StreamInfo, StreamName,
};
use herald::{
    EventId, EventType, Metadata, NewEvent, Origin, Payload, RecordedEvent, RecordedParts,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::coalesce::{self, Coalescer, Pending, Reply};
use crate::config::{ConfigError, PgConfig};
use crate::error::{
    ConnectError, FOREIGN_KEY_VIOLATION, GroupCommitError, UNIQUE_VIOLATION, backend, violation,
};
use crate::listener;
use crate::log::LogStream;
use crate::migrate;
use crate::sql::{Queries, pattern_regex};
use crate::watermark::{Issued, Watermark, settled_prefix};

/// How many times an append or link starts again after a race it lost
/// without a verdict (the stream changed between its statement and the
/// check of why it wrote nothing).
const RETRIES: usize = 5;

/// How many positions `head` looks at per round trip.
const HEAD_BATCH: i64 = 4096;

/// The PostgreSQL event store. See the [crate docs](crate) for the schema,
/// the watermark and the capabilities.
///
/// Clones share the pool, the watermark and the listener.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) config: PgConfig,
    pub(crate) sql: Queries,
    watermark: Watermark,
    pub(crate) head: watch::Sender<u64>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) coalescer: Coalescer,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// When dead letters past the retention were last removed (Unix
    /// seconds), so that recording a dead letter purges at most once a
    /// minute.
    pub(crate) last_purge: AtomicI64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.config.schema)
            .field("pool", &self.inner.pool)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, applies the migrations (unless
    /// [`PgConfig::migrate`] is off) and, with [`PgConfig::notify`], starts
    /// the listener behind [`watch_head`](EventStore::watch_head).
    ///
    /// Must be called within a tokio runtime, which runs the listener.
    ///
    /// # Errors
    ///
    /// [`ConnectError`]: an invalid config, an unreachable database, a failed
    /// migration.
    pub async fn connect(config: PgConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let options =
            PgConnectOptions::from_str(&config.url).map_err(|e| ConfigError::InvalidUrl {
                reason: e.to_string(),
            })?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(ConnectError::Connect)?;
        Self::with_pool(pool, config).await
    }

    /// Uses an existing pool (the application's, say), ignoring the
    /// config's `url`, `max_connections` and `acquire_timeout`. Applies the
    /// migrations and starts the listener as [`connect`](Self::connect)
    /// does.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn with_pool(pool: PgPool, config: PgConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        if config.migrate {
            migrate::run(&pool, &config.schema).await?;
        }
        let inner = Arc::new(Inner {
            sql: Queries::new(&config.schema),
            pool,
            watermark: Watermark::default(),
            head: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
            coalescer: Coalescer::default(),
            tasks: Mutex::new(Vec::new()),
            last_purge: AtomicI64::new(Utc::now().timestamp()),
            config,
        });
        let store = Self { inner };
        store
            .purge_past_retention()
            .await
            .map_err(ConnectError::Purge)?;
        let inner = store.inner;
        if inner.config.notify {
            let tasks = vec![
                tokio::spawn(listener::notify(
                    Arc::downgrade(&inner),
                    Arc::clone(&inner.wake),
                )),
                tokio::spawn(listener::listen(
                    Arc::downgrade(&inner),
                    inner.pool.clone(),
                    inner.sql.channel.clone(),
                    inner.config.poll_interval,
                )),
            ];
            *inner.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        }
        Ok(Self { inner })
    }

    /// Applies the embedded migrations that the schema lacks (idempotent;
    /// safe to run from several processes at once).
    ///
    /// # Errors
    ///
    /// [`ConnectError::Migration`] or [`ConnectError::SchemaMismatch`].
    pub async fn migrate(&self) -> Result<(), ConnectError> {
        migrate::run(&self.inner.pool, &self.inner.config.schema).await
    }

    /// The pool, to run queries of your own (or begin the transactions that
    /// [`append_in_tx`](Self::append_in_tx) joins).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The config the store runs with.
    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }

    /// The shared state, for the other traits' implementations.
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Appends events within the caller's transaction (the outbox): they
    /// commit with the caller's own writes, or not at all.
    ///
    /// Everything [`EventStore::append`] promises holds, at the
    /// transaction's commit. Until then the stream's row stays locked, so
    /// other appends to the same stream wait for this transaction; appends
    /// to other streams and readers do not wait (readers of the global log
    /// stop before this transaction's positions until it ends, as for any
    /// append in flight). The transaction must use `READ COMMITTED` (the
    /// default); under `REPEATABLE READ` a concurrent append to the same
    /// stream fails with a serialization error.
    ///
    /// # Errors
    ///
    /// As [`EventStore::append`]. The typed errors (wrong expected version,
    /// duplicate, invalid type) write nothing and leave the transaction
    /// usable. A [`StoreError::Backend`] comes from a failed statement, which
    /// aborts the transaction as any failed statement does: roll it back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(store: herald_postgres::PgStore) -> Result<(), Box<dyn std::error::Error>> {
    /// use herald::NewEvent;
    /// use herald::store::{ExpectedVersion, StreamName};
    /// use serde_json::json;
    ///
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)")
    ///     .bind(42_i64)
    ///     .bind(1999_i64)
    ///     .execute(&mut *tx)
    ///     .await?;
    /// store
    ///     .append_in_tx(
    ///         &mut tx,
    ///         &StreamName::new("order-42")?,
    ///         ExpectedVersion::NoStream,
    ///         vec![NewEvent::new("order.created", json!({"total": 1999}))],
    ///     )
    ///     .await?;
    /// tx.commit().await?; // the order row and its event, or neither
    /// # Ok(()) }
    /// ```
    pub async fn append_in_tx(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let batch = Batch::new(stream, events)?;
        let conn: &mut PgConnection = tx;
        let appended = self
            .inner
            .append_on(conn, stream, expected, &batch, false)
            .await?;
        if self.inner.config.notify && !appended.events.is_empty() {
            // Delivered when the caller commits, never if it rolls back.
            sqlx::query(&self.inner.sql.notify)
                .execute(&mut *conn)
                .await
                .map_err(backend("notify of an append in a transaction"))?;
        }
        Ok(appended)
    }
}

/// What [`Inner::settled_run`] found in a batch of rows.
struct SettledRun {
    /// The watermark's settled bound after observing the batch.
    settled: i64,
    /// The batch's positions, in order.
    positions: Vec<i64>,
    /// How many of them run settled from the start.
    count: usize,
    /// The last settled position (`after` when none is).
    last: i64,
}

/// The events of one append, checked and with ids and correlation ids
/// filled in.
pub(crate) struct Batch {
    pub(crate) events: Vec<NewEvent>,
    /// The ids the caller gave (only these can be stored already).
    given: Vec<Uuid>,
    /// Per event, whether the caller gave its id.
    pub(crate) is_given: Vec<bool>,
    pub(crate) ids: Vec<Uuid>,
}

impl Batch {
    fn new(stream: &StreamName, events: Vec<NewEvent>) -> Result<Self, StoreError> {
        for event in &events {
            EventType::new(event.event_type())?;
        }
        let mut given = Vec::new();
        let mut is_given = Vec::with_capacity(events.len());
        let mut seen = HashSet::new();
        let mut ids = Vec::with_capacity(events.len());
        let events = events
            .into_iter()
            .map(|event| {
                is_given.push(event.id().is_some());
                let id = match event.id() {
                    Some(id) => {
                        given.push(*id.as_uuid());
                        id
                    }
                    None => EventId::new(),
                };
                ids.push(*id.as_uuid());
                let event = event.with_id(id);
                if event.metadata().correlation_id.is_none() {
                    event.with_correlation_id(*id.as_uuid())
                } else {
                    event
                }
            })
            .collect::<Vec<_>>();
        for (event, id) in events.iter().zip(&ids) {
            if event.id().is_some() && !seen.insert(*id) {
                return Err(StoreError::DuplicateEvent {
                    id: EventId::from_uuid(*id),
                    stream: stream.clone(),
                    detail: "it appears twice in this batch".to_owned(),
                });
            }
        }
        Ok(Self {
            events,
            given,
            is_given,
            ids,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
}

/// How an append or link attempt ended.
enum Attempt {
    Done(Appended),
    /// Lost a race without a verdict: start again.
    Again,
}

impl Inner {
    fn stream_statement(&self, expected: ExpectedVersion, link: bool) -> (&str, Option<i64>) {
        let (any, no_stream, existing) = if link {
            (
                &self.sql.link_any,
                &self.sql.link_no_stream,
                &self.sql.link_existing,
            )
        } else {
            (
                &self.sql.append_any,
                &self.sql.append_no_stream,
                &self.sql.append_existing,
            )
        };
        match expected {
            ExpectedVersion::Any => (any, None),
            ExpectedVersion::NoStream => (no_stream, None),
            ExpectedVersion::StreamExists => (existing, None),
            ExpectedVersion::Exact(v) => (existing, Some(v as i64)),
        }
    }

    async fn version_on(
        &self,
        conn: &mut PgConnection,
        stream: &StreamName,
    ) -> Result<Option<u64>, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(&self.sql.stream_version)
            .bind(stream.as_str())
            .fetch_optional(conn)
            .await
            .map_err(backend("read a stream's version"))?;
        Ok(version.map(|v| v as u64))
    }

    async fn check_on(
        &self,
        conn: &mut PgConnection,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Option<u64>, StoreError> {
        let actual = self.version_on(conn, stream).await?;
        if expected.is_met_by(actual) {
            Ok(actual)
        } else {
            Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual,
            })
        }
    }

    /// Appends on any connection: the pool's (one statement, its own
    /// transaction) or the caller's transaction. `retry` says whether a
    /// failed statement may be tried again (not inside a caller's
    /// transaction, which it aborted).
    async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream: &StreamName,
        expected: ExpectedVersion,
        batch: &Batch,
        retry: bool,
    ) -> Result<Appended, StoreError> {
        if batch.len() == 0 {
            let actual = self.check_on(conn, stream, expected).await?;
            return Ok(Appended {
                stream: stream.clone(),
                version: actual,
                events: Vec::new(),
            });
        }
        for _ in 0..RETRIES {
            match self.try_append(conn, stream, expected, batch, retry).await {
                Ok(Attempt::Done(appended)) => return Ok(appended),
                Ok(Attempt::Again) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::backend(format!(
            "append to stream {stream} kept losing races with concurrent writers"
        )))
    }

    async fn try_append(
        &self,
        conn: &mut PgConnection,
        stream: &StreamName,
        expected: ExpectedVersion,
        batch: &Batch,
        retry: bool,
    ) -> Result<Attempt, StoreError> {
        let (sql, version) = self.stream_statement(expected, false);
        let events = &batch.events;
        let types: Vec<&str> = events.iter().map(NewEvent::event_type).collect();
        let data: Vec<&str> = events.iter().map(|e| e.data().as_str()).collect();
        let correlation: Vec<Uuid> = events
            .iter()
            .map(|e| e.metadata().correlation_id.unwrap_or_default())
            .collect();
        let causation: Vec<Option<Uuid>> =
            events.iter().map(|e| e.metadata().causation_id).collect();
        let headers: Vec<Option<String>> = events
            .iter()
            .map(|e| {
                let headers = &e.metadata().headers;
                (!headers.is_empty()).then(|| serde_json::to_string(headers).unwrap_or_default())
            })
            .collect();
        let result = sqlx::query(sql)
            .bind(stream.as_str())
            .bind(batch.len() as i64)
            .bind(&batch.given[..])
            .bind(version)
            .bind(&batch.ids[..])
            .bind(types)
            .bind(data)
            .bind(correlation)
            .bind(causation)
            .bind(headers)
            .fetch_all(&mut *conn)
            .await;
        let rows = match result {
            Ok(rows) => rows,
            Err(e)
                if violation(&e).is_some_and(|(code, constraint)| {
                    code == UNIQUE_VIOLATION && constraint.as_deref() == Some("events_id_key")
                }) =>
            {
                // A concurrent append stored one of these ids after our check.
                if retry {
                    return Ok(Attempt::Again);
                }
                return Err(StoreError::DuplicateEvent {
                    id: EventId::from_uuid(batch.given.first().copied().unwrap_or_default()),
                    stream: stream.clone(),
                    detail: "a concurrent transaction appended it; this transaction is aborted"
                        .to_owned(),
                });
            }
            Err(e) => return Err(backend("append events")(e)),
        };
        if rows.len() == batch.len() {
            let mut landed = rows
                .iter()
                .map(|row| Ok((row.try_get::<i64, _>(1)?, row.try_get::<i64, _>(0)?)))
                .collect::<Result<Vec<(i64, i64)>, sqlx::Error>>()
                .map_err(backend("read where appended events landed"))?;
            landed.sort_unstable();
            let appended: Vec<AppendedEvent> = landed
                .into_iter()
                .zip(&batch.ids)
                .map(|((version, position), id)| AppendedEvent {
                    id: EventId::from_uuid(*id),
                    version: version as u64,
                    position: position as u64,
                })
                .collect();
            return Ok(Attempt::Done(Appended {
                stream: stream.clone(),
                version: appended.last().map(|e| e.version),
                events: appended,
            }));
        }
        // Nothing was written: a stored id, or the expected version.
        if !batch.given.is_empty() {
            if let Some(repeat) = self.repeat_on(conn, stream, batch).await? {
                return Ok(Attempt::Done(Appended {
                    stream: stream.clone(),
                    version: repeat.last().map(|e| e.version),
                    events: repeat,
                }));
            }
        }
        self.check_on(conn, stream, expected).await?;
        Ok(Attempt::Again)
    }

    /// Where the events of a repeated append are, `None` when none of its
    /// ids is stored, or why it is not a repeat.
    async fn repeat_on(
        &self,
        conn: &mut PgConnection,
        stream: &StreamName,
        batch: &Batch,
    ) -> Result<Option<Vec<AppendedEvent>>, StoreError> {
        let rows = sqlx::query(&self.sql.stored_events)
            .bind(&batch.given[..])
            .fetch_all(&mut *conn)
            .await
            .map_err(backend("read stored events"))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let stored: HashMap<EventId, RecordedParts> = rows
            .iter()
            .map(|row| decode(row, 0).map(|parts| (parts.id, parts)))
            .collect::<Result<_, _>>()?;
        let mut found: Vec<AppendedEvent> = Vec::with_capacity(batch.len());
        for (i, new) in batch.events.iter().enumerate() {
            let old = new.id().and_then(|id| stored.get(&id));
            let Some(old) = old else {
                if i == 0 {
                    let (id, old) = batch
                        .events
                        .iter()
                        .filter_map(|e| e.id().and_then(|id| stored.get(&id).map(|o| (id, o))))
                        .next()
                        .unwrap_or_else(|| unreachable!("a stored id is in the batch"));
                    return Err(StoreError::DuplicateEvent {
                        id,
                        stream: stream.clone(),
                        detail: format!(
                            "it is stored in stream {} by an append this batch does not repeat",
                            old.stream.as_deref().unwrap_or_default()
                        ),
                    });
                }
                return Err(StoreError::DuplicateEvent {
                    id: batch.events[0].id().unwrap_or_default(),
                    stream: stream.clone(),
                    detail: "it is stored already, but the rest of the batch is new".into(),
                });
            };
            let detail = if old.stream.as_deref() != Some(stream.as_str()) {
                Some(format!(
                    "it is stored in stream {}",
                    old.stream.as_deref().unwrap_or_default()
                ))
            } else if old.event_type.as_str() != new.event_type()
                || old.data != *new.data()
                || old.metadata != *new.metadata()
            {
                Some("it is stored with another type, data or metadata".to_owned())
            } else if found
                .last()
                .is_some_and(|p| Some(p.version + 1) != old.version)
            {
                Some("it is stored, but not in the order of this batch".to_owned())
            } else {
                None
            };
            if let Some(detail) = detail {
                return Err(StoreError::DuplicateEvent {
                    id: old.id,
                    stream: stream.clone(),
                    detail,
                });
            }
            found.push(AppendedEvent {
                id: old.id,
                version: old.version.unwrap_or_default(),
                position: old.position.unwrap_or_default(),
            });
        }
        Ok(Some(found))
    }

    async fn try_link(
        &self,
        conn: &mut PgConnection,
        stream: &StreamName,
        expected: ExpectedVersion,
        ids: &[EventId],
    ) -> Result<Attempt, StoreError> {
        let uuids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
        let rows = sqlx::query(&self.sql.event_positions)
            .bind(&uuids[..])
            .fetch_all(&mut *conn)
            .await
            .map_err(backend("find events to link"))?;
        let positions: HashMap<Uuid, i64> = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend("find events to link"))?;
        let positions = ids
            .iter()
            .map(|id| {
                positions
                    .get(id.as_uuid())
                    .copied()
                    .ok_or(StoreError::EventNotFound(*id))
            })
            .collect::<Result<Vec<i64>, _>>()?;
        if ids.is_empty() {
            let actual = self.check_on(conn, stream, expected).await?;
            return Ok(Attempt::Done(Appended {
                stream: stream.clone(),
                version: actual,
                events: Vec::new(),
            }));
        }
        let (sql, version) = self.stream_statement(expected, true);
        let result = sqlx::query(sql)
            .bind(stream.as_str())
            .bind(ids.len() as i64)
            .bind(&[] as &[Uuid])
            .bind(version)
            .bind(&positions[..])
            .fetch_all(&mut *conn)
            .await;
        let rows = match result {
            Ok(rows) => rows,
            // An event was deleted after we found it.
            Err(e) if violation(&e).is_some_and(|(code, _)| code == FOREIGN_KEY_VIOLATION) => {
                return Ok(Attempt::Again);
            }
            Err(e) => return Err(backend("link events")(e)),
        };
        if rows.len() != ids.len() {
            self.check_on(conn, stream, expected).await?;
            return Ok(Attempt::Again);
        }
        let mut versions = rows
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend("read where links landed"))?;
        versions.sort_unstable();
        let events: Vec<AppendedEvent> = ids
            .iter()
            .zip(versions)
            .zip(positions)
            .map(|((id, version), position)| AppendedEvent {
                id: *id,
                version: version as u64,
                position: position as u64,
            })
            .collect();
        Ok(Attempt::Done(Appended {
            stream: stream.clone(),
            version: events.last().map(|e| e.version),
            events,
        }))
    }

    /// One batch of the global log after `after`: the settled events that
    /// pass the filters, the last settled position, and whether the log may
    /// go on (the batch was full and nothing stopped it).
    pub(crate) async fn read_batch(
        &self,
        after: i64,
        batch: i64,
        filter: &Filter,
    ) -> Result<(Vec<RecordedEvent>, i64, bool), StoreError> {
        let read = |e| backend("read the global log")(e);
        let mut gap = GapCheck::default();
        loop {
            let issued = self.watermark.issue();
            let rows = if filter.is_empty() {
                sqlx::query(&self.sql.read_all)
                    .bind(after)
                    .bind(batch)
                    .fetch_all(&self.pool)
                    .await
            } else {
                sqlx::query(&self.sql.read_all_filtered)
                    .bind(after)
                    .bind(batch)
                    .bind(&filter.exact[..])
                    .bind(&filter.regexes[..])
                    .bind(filter.since)
                    .bind(filter.until)
                    .fetch_all(&self.pool)
                    .await
            }
            .map_err(read)?;
            let Some(first) = rows.first() else {
                return Ok((Vec::new(), after, false));
            };
            let SettledRun {
                positions,
                count,
                last,
                ..
            } = self.settled_run(issued, first, &rows, 2, after, read)?;
            if after <= issued.settled() {
                self.watermark.settle(last);
            }
            if count == 0 && !positions.is_empty() && self.check_gap(last + 1, &mut gap).await? {
                continue;
            }
            let mut events = Vec::with_capacity(count);
            let mut decoder = Decoder::default();
            for row in &rows[..count] {
                if row.try_get::<bool, _>(1).map_err(read)? {
                    events.push(RecordedEvent::from_parts(decoder.decode(row, 2)?));
                }
            }
            let more = count == positions.len() && positions.len() as i64 == batch;
            return Ok((events, last, more));
        }
    }

    /// Tells the watermark what a batch of rows saw (the oldest running
    /// transaction in column 0 of `first`), and finds how far the batch's
    /// positions (column `column`) run settled after `after`.
    fn settled_run(
        &self,
        issued: Issued,
        first: &PgRow,
        rows: &[PgRow],
        column: usize,
        after: i64,
        read: impl Fn(sqlx::Error) -> StoreError,
    ) -> Result<SettledRun, StoreError> {
        let settled = self
            .watermark
            .observe(issued, first.try_get(0).map_err(&read)?);
        let positions = rows
            .iter()
            .map(|row| row.try_get::<i64, _>(column))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(&read)?;
        let count = settled_prefix(after, settled, positions.iter().copied());
        let last = if count > 0 {
            positions[count - 1]
        } else {
            after
        };
        Ok(SettledRun {
            settled,
            positions,
            count,
            last,
        })
    }

    /// A reader stopped at the gap at `position`: takes a mark if none
    /// covers it, or else asks whether the mark's lock holders have ended.
    /// Returns whether to look again at once. Does each at most once per
    /// `check`.
    async fn check_gap(&self, position: i64, check: &mut GapCheck) -> Result<bool, StoreError> {
        match self.watermark.awaiting(position) {
            None if !check.probed => {
                check.probed = true;
                self.probe().await?;
                Ok(true)
            }
            Some(mark) if !check.asked => {
                check.asked = true;
                let holding: i64 = sqlx::query_scalar(&self.sql.holders)
                    .bind(&mark.holders[..])
                    .fetch_one(&self.pool)
                    .await
                    .map_err(backend("look for appends in flight"))?;
                if holding == 0 {
                    self.watermark.settle(mark.q);
                    return Ok(true);
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Takes a watermark mark (see the `watermark` module).
    async fn probe(&self) -> Result<(), StoreError> {
        let read = |e| backend("take a watermark mark")(e);
        let rows = sqlx::raw_sql(&self.sql.probe)
            .fetch_all(&self.pool)
            .await
            .map_err(read)?;
        let [q, m, holders] = &rows[..] else {
            return Err(StoreError::backend(format!(
                "watermark mark returned {} rows, not 3",
                rows.len()
            )));
        };
        let holders: String = holders.try_get(0).map_err(read)?;
        self.watermark.mark(
            m.try_get(0).map_err(read)?,
            q.try_get(0).map_err(read)?,
            holders
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect(),
        );
        Ok(())
    }

    /// The head: the last position before the first gap that is not
    /// settled.
    pub(crate) async fn head(&self) -> Result<u64, StoreError> {
        let read = |e| backend("read the head")(e);
        let mut after = self.watermark.settled().max(*self.head.borrow() as i64);
        let mut gap = GapCheck::default();
        loop {
            let issued = self.watermark.issue();
            let rows = sqlx::query(&self.sql.head)
                .bind(after)
                .bind(HEAD_BATCH)
                .fetch_all(&self.pool)
                .await
                .map_err(read)?;
            let Some(first) = rows.first() else {
                return Ok(after.max(issued.settled()) as u64);
            };
            let SettledRun {
                settled,
                positions,
                count,
                last,
            } = self.settled_run(issued, first, &rows, 1, after, read)?;
            self.watermark.settle(last);
            let head = last.max(settled);
            if count < positions.len() {
                if self.check_gap(last + 1, &mut gap).await? {
                    after = head;
                    continue;
                }
                return Ok(head as u64);
            }
            if (positions.len() as i64) < HEAD_BATCH {
                return Ok(head as u64);
            }
            after = head;
        }
    }
}

/// What a reader did about a gap it stopped at.
#[derive(Default)]
struct GapCheck {
    probed: bool,
    asked: bool,
}

/// The type and time filters of a [`ReadAll`], as the query takes them.
pub(crate) struct Filter {
    exact: Vec<String>,
    regexes: Vec<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl Filter {
    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.regexes.is_empty()
            && self.since.is_none()
            && self.until.is_none()
    }

    fn new(query: &ReadAll) -> Self {
        // `#` matches every type: with it, the topics filter nothing, and
        // the read takes the cheaper unfiltered query when nothing else is
        // asked.
        let topics: &[_] = if query.topics.iter().any(|t| t.as_str() == "#") {
            &[]
        } else {
            &query.topics
        };
        let (exact, wild): (Vec<_>, Vec<_>) = topics.iter().partition(|t| t.is_exact());
        Self {
            exact: exact.iter().map(|t| t.as_str().to_owned()).collect(),
            regexes: wild.iter().map(|t| pattern_regex(t.as_str())).collect(),
            since: query.since,
            until: query.until,
        }
    }
}

/// Reads events from rows, sharing the names of types and streams that
/// repeat (a batch of the log holds few of them) instead of allocating and
/// validating each again.
#[derive(Default)]
struct Decoder {
    types: Vec<EventType>,
    stream: Option<Arc<str>>,
}

impl Decoder {
    /// Reads an event from the ten columns starting at `base`: position, id,
    /// type, stream, version, recorded_at, data, correlation_id,
    /// causation_id, headers.
    ///
    /// The columns' types are those of the store's own queries, so their
    /// checks are skipped (a mismatch would still fail to decode).
    fn decode(&mut self, row: &PgRow, base: usize) -> Result<RecordedParts, StoreError> {
        let read = |e| backend("decode an event")(e);
        // The columns' types are those of the store's own queries, so the
        // type checks are skipped; a mismatch would still fail to decode.
        let position: i64 = row.try_get_unchecked(base).map_err(read)?;
        let id: Uuid = row.try_get_unchecked(base + 1).map_err(read)?;
        let event_type: &str = row.try_get_unchecked(base + 2).map_err(read)?;
        let stream: &str = row.try_get_unchecked(base + 3).map_err(read)?;
        let version: i64 = row.try_get_unchecked(base + 4).map_err(read)?;
        let recorded_at: DateTime<Utc> = row.try_get_unchecked(base + 5).map_err(read)?;
        let data: &str = row.try_get_unchecked(base + 6).map_err(read)?;
        let correlation_id: Uuid = row.try_get_unchecked(base + 7).map_err(read)?;
        let causation_id: Option<Uuid> = row.try_get_unchecked(base + 8).map_err(read)?;
        let headers: Option<&str> = row.try_get_unchecked(base + 9).map_err(read)?;
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::backend(format!(
                "stored event at position {position} has {what}: {e}"
            ))
        };
        let headers: BTreeMap<String, String> = match headers {
            Some(text) => serde_json::from_str(text).map_err(|e| corrupt("bad headers", &e))?,
            None => BTreeMap::new(),
        };
        let event_type = match self.types.iter().find(|t| t.as_str() == event_type) {
            Some(known) => known.clone(),
            None => {
                let parsed = EventType::new(event_type).map_err(|e| corrupt("a bad type", &e))?;
                if self.types.len() < 16 {
                    self.types.push(parsed.clone());
                }
                parsed
            }
        };
        let stream = match &self.stream {
            Some(last) if **last == *stream => Arc::clone(last),
            _ => {
                let name: Arc<str> = Arc::from(stream);
                self.stream = Some(Arc::clone(&name));
                name
            }
        };
        Ok(RecordedParts {
            id: EventId::from_uuid(id),
            event_type,
            stream: Some(stream),
            version: Some(version as u64),
            position: Some(position as u64),
            recorded_at,
            data: Payload::from_json(Bytes::copy_from_slice(data.as_bytes()))
                .map_err(|e| corrupt("bad data", &e))?,
            metadata: Metadata {
                correlation_id: Some(correlation_id),
                causation_id,
                headers,
            },
            origin: None,
        })
    }
}

/// Reads one event (see [`Decoder::decode`]).
fn decode(row: &PgRow, base: usize) -> Result<RecordedParts, StoreError> {
    Decoder::default().decode(row, base)
}

/// Reads a stream entry: `at` (the version in the stream read), `linked`,
/// then the event's columns.
fn decode_entry(row: &PgRow, stream: &StreamName) -> Result<RecordedEvent, StoreError> {
    let read = |e| backend("decode a stream entry")(e);
    let at: i64 = row.try_get(0).map_err(read)?;
    let linked: bool = row.try_get(1).map_err(read)?;
    let mut parts = decode(row, 2)?;
    if linked {
        parts.origin = Some(Origin {
            stream: parts.stream.take().unwrap_or_else(|| Arc::from("")),
            version: parts.version.unwrap_or_default(),
        });
        parts.stream = Some(Arc::clone(stream.as_arc()));
        parts.version = Some(at as u64);
    }
    Ok(RecordedEvent::from_parts(parts))
}

fn stream_info(row: &PgRow) -> Result<StreamInfo, StoreError> {
    let read = |e| backend("decode stream info")(e);
    let name: String = row.try_get(0).map_err(read)?;
    let version: i64 = row.try_get(1).map_err(read)?;
    let count: i64 = row.try_get(4).map_err(read)?;
    Ok(StreamInfo {
        stream: StreamName::new(&name)?,
        version: version as u64,
        count: count as u64,
        first_recorded_at: row.try_get(2).map_err(read)?,
        last_recorded_at: row.try_get(3).map_err(read)?,
    })
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let mut batch = Batch::new(stream, events)?;
        let mut slot = None;
        if self.inner.config.coalesce && batch.len() > 0 {
            slot = coalesce::alone(&self.inner);
        }
        if self.inner.config.coalesce && batch.len() > 0 && slot.is_none() {
            let (reply, answer) = oneshot::channel();
            coalesce::submit(
                &self.inner,
                Pending {
                    stream: stream.clone(),
                    expected,
                    batch,
                    reply,
                },
            );
            match answer.await {
                Ok(Reply::Done(result)) => return result,
                Ok(Reply::Alone(back)) => batch = back,
                Err(_) => {
                    return Err(StoreError::backend(GroupCommitError::new(
                        "the group task ended without an answer".to_owned(),
                    )));
                }
            }
        }
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(backend("get a connection to append"))?;
        let appended = self
            .inner
            .append_on(&mut conn, stream, expected, &batch, true)
            .await;
        drop((conn, slot));
        let appended = appended?;
        if self.inner.config.notify && !appended.events.is_empty() {
            self.inner.wake.notify_one();
        }
        Ok(appended)
    }

    async fn append_all(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>, StoreError> {
        let batches = appends
            .into_iter()
            .map(|part| {
                let batch = Batch::new(&part.stream, part.events)?;
                Ok((batch, part.stream, part.expected))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(backend("begin a transaction to append to several streams"))?;
        let mut results = Vec::with_capacity(batches.len());
        for (batch, stream, expected) in &batches {
            // One transaction: a failing part aborts it, and dropping it
            // rolls back the parts before.
            let conn: &mut PgConnection = &mut tx;
            results.push(
                self.inner
                    .append_on(conn, stream, *expected, batch, false)
                    .await?,
            );
        }
        tx.commit()
            .await
            .map_err(backend("commit an append to several streams"))?;
        if self.inner.config.notify && results.iter().any(|a| !a.events.is_empty()) {
            self.inner.wake.notify_one();
        }
        Ok(results)
    }

    async fn link(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[EventId],
    ) -> Result<Appended, StoreError> {
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(backend("get a connection to link"))?;
        for _ in 0..RETRIES {
            if let Attempt::Done(appended) = self
                .inner
                .try_link(&mut conn, stream, expected, events)
                .await?
            {
                return Ok(appended);
            }
        }
        Err(StoreError::backend(format!(
            "link into stream {stream} kept losing races with concurrent writers"
        )))
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        query: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (sql, from) = match query.direction {
            Direction::Forward => (&self.inner.sql.read_forward, query.from.unwrap_or(0)),
            Direction::Backward => (
                &self.inner.sql.read_backward,
                query.from.unwrap_or(i64::MAX as u64),
            ),
        };
        let from = from.min(i64::MAX as u64) as i64;
        let limit = query.limit.min(i64::MAX as usize) as i64;
        let rows = sqlx::query(sql)
            .bind(stream.as_str())
            .bind(from)
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(backend("read a stream"))?;
        rows.iter().map(|row| decode_entry(row, stream)).collect()
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
        let batch = query
            .batch_size
            .unwrap_or(self.inner.config.read_batch_size)
            .clamp(1, i64::MAX as usize) as i64;
        let limit = query.limit.unwrap_or(usize::MAX);
        let after = query.after.min(i64::MAX as u64) as i64;
        LogStream::new(&self.inner, Filter::new(&query), after, batch, limit).boxed()
    }

    async fn event(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        let row = sqlx::query(&self.inner.sql.event)
            .bind(id.as_uuid())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(backend("read an event"))?;
        row.map(|row| decode(&row, 0).map(RecordedEvent::from_parts))
            .transpose()
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, StoreError> {
        let row = sqlx::query(&self.inner.sql.stream_info)
            .bind(stream.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(backend("read stream info"))?;
        row.as_ref().map(stream_info).transpose()
    }

    async fn list_streams(&self, query: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        let rows = sqlx::query(&self.inner.sql.streams)
            .bind(query.after.as_deref())
            .bind(query.prefix.as_deref())
            .bind(query.limit.min(i64::MAX as usize) as i64)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(backend("list streams"))?;
        rows.iter().map(stream_info).collect()
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<bool, StoreError> {
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(backend("begin a stream deletion"))?;
        let actual: Option<i64> = sqlx::query_scalar(&self.inner.sql.lock_stream)
            .bind(stream.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend("lock a stream to delete"))?;
        let actual = actual.map(|v| v as u64);
        if !expected.is_met_by(actual) {
            return Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        if actual.is_none() {
            return Ok(false);
        }
        sqlx::query(&self.inner.sql.delete_stream)
            .bind(stream.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend("delete a stream"))?;
        tx.commit()
            .await
            .map_err(backend("commit a stream deletion"))?;
        Ok(true)
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }

    fn watch_head(&self) -> Option<watch::Receiver<u64>> {
        self.inner
            .config
            .notify
            .then(|| self.inner.head.subscribe())
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.durable = true;
        capabilities.shared_between_processes = true;
        capabilities.outbox = true;
        capabilities.inbox = true;
        capabilities.competing_consumers = true;
        capabilities
    }
}

impl Inner {
    /// Sends this schema's notification outside of any append, in one round
    /// trip, with asynchronous commit (it needs no flush to disk).
    pub(crate) async fn send_notification(&self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(&self.sql.notify_async)
            .execute(&self.pool)
            .await
            .map(drop)
    }
}
