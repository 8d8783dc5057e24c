//! The embedded event store of Herald: [`SqliteStore`], an
//! [`EventStore`](herald::store::EventStore) in one SQLite file.
//!
//! It is the default store of the Herald server and CLI: nothing to run
//! beside the application, the history in one file, and it passes the same
//! conformance suites (`herald-testkit`) as every other store. It also
//! implements [`CheckpointStore`](herald::store::CheckpointStore),
//! [`DeadLetterStore`](herald::DeadLetterStore) and [`Ledger`](herald::Ledger),
//! so a bus built on it keeps its durable subscribers' checkpoints, its dead
//! letters and its idempotency ledger in the same file:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use herald::{Bus, Subscriber, handler_fn};
//! use herald_sqlite::{SqliteConfig, SqliteStore};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(SqliteStore::open(SqliteConfig::new(dir.path().join("events.db"))).await?);
//! let bus = Bus::builder()
//!     .store(store.clone())
//!     .dead_letter_store(store.clone())
//!     .build();
//! bus.subscribe(
//!     Subscriber::new("charge", handler_fn(|_, _| async { Ok(()) }))
//!         .topic("order.created")
//!         .idempotent(store.clone()),
//! )?;
//! # bus.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::TryStreamExt;
//! use herald::store::{EventStore, ExpectedVersion, ReadAll, ReadStream, StreamName};
//! use herald::NewEvent;
//! use herald_sqlite::{SqliteConfig, SqliteStore, Synchronous};
//! use serde_json::json;
//!
//! let dir = tempfile::tempdir()?;
//! let config = SqliteConfig::new(dir.path().join("events.db")).synchronous(Synchronous::Full);
//! let store = SqliteStore::open(config).await?;
//!
//! let order = StreamName::new("order-42")?;
//! store
//!     .append(
//!         &order,
//!         ExpectedVersion::NoStream,
//!         vec![
//!             NewEvent::new("order.created", json!({"total": 10})),
//!             NewEvent::new("order.paid", json!({"amount": 10})),
//!         ],
//!     )
//!     .await?;
//!
//! let events = store.read_stream(&order, ReadStream::forward()).await?;
//! assert_eq!(events.len(), 2);
//! assert_eq!(events[1].version(), Some(1));
//!
//! let log: Vec<_> = store.read_all(ReadAll::after(0)).try_collect().await?;
//! assert_eq!(log[0].event_type(), "order.created");
//! # Ok(()) }
//! ```
//!
//! # Why rusqlite, with SQLite bundled
//!
//! The store talks to SQLite through `rusqlite` with its `bundled` feature,
//! which compiles SQLite into the crate:
//!
//! - **Speed.** Statements are prepared once per connection and reused; an
//!   append of N events is one transaction running one prepared `INSERT` N
//!   times; all writes run on one thread that owns its connection, so there
//!   is no pool to check out of and no per-call async machinery around each
//!   statement (an async driver would add a task hop per query on top of the
//!   same blocking SQLite calls).
//! - **Portability.** A fresh machine needs no system SQLite, and every
//!   machine runs the same SQLite version, with WAL and `UPSERT`.
//!
//! # How it works
//!
//! - **One writer.** SQLite lets one connection write at a time, so every
//!   write (append, link, delete) goes to a dedicated writer thread as a
//!   command on a bounded channel, with a oneshot reply. Checkpoint saves,
//!   scheduled retries, dead-letter records, removals and purges, and
//!   ledger inserts are writes too.
//! - **Group commit.** The writer takes every command waiting in the queue
//!   (up to [`SqliteConfig::max_group_commit`]) and runs them in one
//!   transaction, each inside a savepoint so that a failing command (a
//!   version conflict, say) undoes only its own work. The replies go out
//!   after the commit. Concurrent appenders so share one commit, and with
//!   [`Synchronous::Full`] one fsync.
//! - **Readers beside it.** The database is in WAL mode, so reads run on a
//!   small pool of read-only connections (each on its own thread,
//!   [`SqliteConfig::read_connections`]) at the same time as the writer.
//!   Each read sees every commit made before it started.
//! - **The global log in batches.** `read_all` fetches
//!   [`ReadAll::batch_size`](herald::store::ReadAll::batch_size) events per
//!   round trip (512 by default, at most 10 000), never the whole log. A
//!   filter of up to 8 exact event types walks the type index; wildcards
//!   (`order.*`, `order.#`) are matched while walking the log by position.
//! - **The head.** [`watch_head`](herald::store::EventStore::watch_head)
//!   moves after each committed append of this store (in-process wakeups);
//!   appends by other processes are seen by
//!   [`head`](herald::store::EventStore::head) and by reads, not by the
//!   watch.
//!
//! The store needs no particular async runtime: its futures wait on
//! channels that its own threads answer.
//!
//! # Ordering
//!
//! Positions come from an `AUTOINCREMENT` key assigned while the writer
//! holds SQLite's write lock, so they increase in commit order, also across
//! processes: a reader of the global log never sees a position and later a
//! smaller one. `AUTOINCREMENT` also means a position is never given out
//! twice, even after the events holding the highest positions are deleted,
//! and the head never goes down.
//!
//! # Durability
//!
//! Once `append` returns `Ok`, the events are committed. What a commit
//! survives is [`SqliteConfig::synchronous`]:
//!
//! | [`Synchronous`] | process crash (`kill -9`) | power loss | cost |
//! |---|---|---|---|
//! | `Normal` (default) | nothing lost | may lose the last commits, never corrupts | no fsync per commit |
//! | `Full` | nothing lost | nothing lost | one fsync per commit (group) |
//!
//! `Normal` is the default because a process crash, the common failure,
//! loses nothing with it, and because it makes an append about as cheap as
//! a write into the OS's cache; choose `Full` where the last moments before
//! a power loss matter.
//!
//! With either setting, the WAL is copied back into the database file (and
//! synced) by a checkpoint. A background thread with its own connection
//! runs one every half second when something was committed (SQLite's
//! `PASSIVE` checkpoint, which never blocks the writer), so appends do not
//! wait for it; should it fall behind, the commit that makes the WAL pass
//! [`SqliteConfig::checkpoint_pages`] pages runs one itself. Over HTTP, with
//! 64 clients appending one event each, this took the p99 from 34–35 ms to
//! 26–30 ms and left throughput as it was (BENCHMARKS.md).
//!
//! # Capabilities
//!
//! | capability | | |
//! |---|---|---|
//! | durable | yes | the history is in the file |
//! | shared between processes | yes | processes may open one file; their writes take turns on SQLite's lock, waiting up to [`SqliteConfig::busy_timeout`] |
//! | outbox | no | not yet: appends do not join the caller's transaction |
//! | inbox | no | not yet |
//! | competing consumers | no | not yet |
//!
//! Beside the [`EventStore`](herald::store::EventStore), in the same file:
//!
//! | trait | kept in | |
//! |---|---|---|
//! | [`CheckpointStore`](herald::store::CheckpointStore) | `checkpoints`, `subscriber_states`, `scheduled_retries` | durable subscribers resume where they were, stay disabled once disabled, and keep their scheduled retries |
//! | [`DeadLetterStore`](herald::DeadLetterStore) | `dead_letters` | see [Dead letters](#dead-letters) |
//! | [`Ledger`](herald::Ledger) | `ledger` | idempotent subscribers skip what they handled, also after a restart; kept for good (one small row per subscriber and event) |
//!
//! # Dead letters
//!
//! Dead letters are rows of `dead_letters`, one per subscriber and event:
//! the same event failing again for the same subscriber updates its row
//! (attempts added, errors appended, reason and last failure updated, id and
//! first failure kept). The event is kept as its JSON, so a dead letter
//! outlives the deletion of its stream. `list` is oldest first by first
//! failure; it filters by subscriber and failure time in SQL and by event
//! type and error text as it reads, and its limit counts only the dead
//! letters that pass. Times are kept to the microsecond.
//!
//! Dead letters are kept until they are retried or removed, unless
//! [`SqliteConfig::dead_letter_retention`] is set: then those whose last
//! failure is older are removed when the store opens and each time a dead
//! letter is recorded. [`SqliteStore::purge_dead_letters`] removes them on
//! demand.
//!
//! # Schema
//!
//! Migrations are embedded and applied on open, in one transaction that
//! holds the write lock; the table `herald_migrations` records each one
//! (version, name, time). Tables: `events` (the global log, one row per
//! event, payload and metadata as the exact JSON text given), `streams` (one
//! row per stream: version, count, first and last times),
//! `stream_entries` (links; a `NULL` position is the hole a deleted event
//! leaves), `checkpoints` and `subscriber_states` (one row each per
//! durable subscriber), `scheduled_retries` (one row per subscriber and
//! event waiting for its next attempt), `dead_letters` (one row per subscriber and event it gave up on) and
//! `ledger` (one row per subscriber and event it handled).
//!
//! # Errors
//!
//! Bad input gets the typed [`StoreError`](herald::store::StoreError) that
//! the [`EventStore`](herald::store::EventStore) contract names, and writes
//! nothing; SQLite failures become `StoreError::Backend` saying what the
//! store was doing. Opening fails with an [`OpenError`].

mod config;
mod dead_letters;
mod error;
mod ledger;
mod reader;
mod retries;
mod rows;
mod schema;
mod store;
mod writer;

pub use crate::config::{ConfigError, SqliteConfig, Synchronous};
pub use crate::error::OpenError;
pub use crate::store::SqliteStore;
