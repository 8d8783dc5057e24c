//! The PostgreSQL event store for Herald: [`PgStore`].
//!
//! A durable [`EventStore`](herald::store::EventStore) that several
//! processes share, with appends that can join the application's own
//! transaction (the outbox), and a global log that readers can tail without
//! ever skipping an event, however writers interleave their commits.
//!
//! # Examples
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::TryStreamExt;
//! use herald::NewEvent;
//! use herald::store::{EventStore, ExpectedVersion, ReadAll, ReadStream, StreamName};
//! use herald_postgres::{PgConfig, PgStore};
//! use serde_json::json;
//!
//! let store = PgStore::connect(PgConfig::new("postgres://app@localhost/app").schema("shop")).await?;
//! let order = StreamName::new("order-42")?;
//! store
//!     .append(&order, ExpectedVersion::NoStream, vec![NewEvent::new("order.created", json!({"total": 1999}))])
//!     .await?;
//! let events = store.read_stream(&order, ReadStream::forward()).await?;
//! assert_eq!(events[0].version(), Some(0));
//! let log: Vec<_> = store.read_all(ReadAll::after(0)).try_collect().await?;
//! # Ok(()) }
//! ```
//!
//! For the outbox, see [`PgStore::append_in_tx`].
//!
//! It also implements [`CheckpointStore`](herald::store::CheckpointStore),
//! [`DeadLetterStore`](herald::DeadLetterStore) and [`Ledger`](herald::Ledger),
//! so a bus built on it keeps its durable subscribers' checkpoints, its dead
//! letters and its idempotency ledger in the store's schema, shared by every
//! process that uses it:
//!
//! ```no_run
//! # async fn example(store: herald_postgres::PgStore) {
//! use std::sync::Arc;
//! use herald::Bus;
//!
//! let store = Arc::new(store);
//! let bus = Bus::builder()
//!     .store(store.clone())
//!     .dead_letter_store(store.clone())
//!     .build();
//! # }
//! ```
//!
//! # Capabilities
//!
//! | capability | |
//! |---|---|
//! | durable | yes: an append returns once its transaction committed |
//! | shared between processes | yes |
//! | outbox | yes: [`PgStore::append_in_tx`] joins the caller's transaction |
//! | inbox | yes: an [`Inbox`] handler records the event in the transaction of the handler's own writes |
//! | competing consumers | yes: [`LeaseStore`](herald::store::LeaseStore), see [Competing consumers](#competing-consumers) |
//! | head watch | yes (LISTEN/NOTIFY), unless [`PgConfig::notify`] is off |
//!
//! Beside the [`EventStore`](herald::store::EventStore), in the same schema:
//!
//! | trait | kept in | |
//! |---|---|---|
//! | [`CheckpointStore`](herald::store::CheckpointStore) | `checkpoints`, `subscriber_states`, `scheduled_retries` | durable subscribers resume where they were, stay disabled once disabled, and keep their scheduled retries; a save is one upsert |
//! | [`DeadLetterStore`](herald::DeadLetterStore) | `dead_letters` | see [Dead letters](#dead-letters) |
//! | [`LeaseStore`](herald::store::LeaseStore) | `group_members`, `group_partitions` | competing subscribers share their partitions between processes |
//! | [`Ledger`](herald::Ledger) | `ledger` | idempotent subscribers skip what they handled, in any process on the schema; kept for good (one small row per subscriber and event) |
//!
//! # Schema
//!
//! All tables live in one schema ([`PgConfig::schema`], default `herald`),
//! created and migrated by [`PgStore::connect`] (or
//! [`PgStore::migrate`]) from the SQL files embedded in the crate, recorded
//! in its `herald_migrations` table. Several applications, or parallel
//! tests, share a database by using different schemas. Every statement names
//! the schema, so the store needs no `search_path`, and its statements run on
//! any connection, the application's own included.
//!
//! - `events`: one row per event, in the stream it was appended to:
//!   position (from a sequence), id (unique), type, stream, version,
//!   recorded-at time, `data` (type `json`, which keeps the payload's text
//!   byte for byte), correlation and causation ids, headers.
//! - `streams`: per stream, the version of its last entry and its first and
//!   last times; its row is the lock that orders appends to the stream.
//! - `links`: an existing event at a version of another stream.
//! - `erased`: the positions of deleted events.
//! - `checkpoints`: per durable subscriber, its position and when it was
//!   saved.
//! - `subscriber_states`: per durable subscriber, whether it is enabled, and
//!   when that was saved.
//! - `scheduled_retries`: per durable subscriber and event waiting for its
//!   next attempt, the event's position, its failed attempts' errors
//!   (`jsonb`) and when the next attempt is due.
//! - `group_members`, `group_partitions`: the members of competing
//!   subscribers, and their partitions' leases and checkpoints.
//! - `dead_letters`: one row per subscriber and event given up on (see
//!   below).
//! - `ledger`: per subscriber, the ids of the events it handled, and when.
//! - `inbox`: per subscriber, the ids of the events an [`Inbox`] handled,
//!   and when, each written in the transaction of the handler's writes.
//!
//! # Appends
//!
//! An append that runs alone is one statement, so outside a transaction it
//! is its own transaction and costs one round trip (plus one more when the
//! batch repeats stored ids and the store must say whether it is an
//! idempotent retry); concurrent appends share commits (see
//! [Coalesced appends](#coalesced-appends)). The statement first writes the stream's row — inserting it, or
//! moving its version on if it meets the expected version — which locks it
//! until commit, so appends to one stream serialize and of N racing
//! `Exact(v)` appends exactly one wins; then it inserts the whole batch with
//! one `INSERT … SELECT … FROM unnest(…)`. When the stream's row does not
//! meet the expectation, or a given id is stored already, the statement
//! writes nothing and the store finds out why: an idempotent repeat (same
//! ids, stream, order, type, data and metadata, the correlation id filled
//! with the event's id when missing, as the memory store does) returns the
//! stored positions, anything else is [`StoreError::DuplicateEvent`] or
//! [`StoreError::WrongExpectedVersion`]. Conflicts draw no position.
//!
//! [`StoreError::DuplicateEvent`]: herald::store::StoreError::DuplicateEvent
//! [`StoreError::WrongExpectedVersion`]: herald::store::StoreError::WrongExpectedVersion
//!
//! # Coalesced appends
//!
//! Every commit waits for a flush to disk, a few milliseconds on the
//! development machine, so appends that each commit alone are bound by the
//! disk however many connections run them: 64 concurrent callers appending
//! one event per call reached about 3,900 events/s that way. With
//! [`PgConfig::coalesce`] (the default), concurrent
//! [`append`](herald::store::EventStore::append) calls share commits:
//!
//! - an append joins a queue. When fewer than
//!   [`PgConfig::coalesce_groups`] groups are in flight, a task takes what
//!   is queued (at most [`PgConfig::coalesce_max_appends`] appends) and
//!   sends it as one call of the schema's `append_group` function: one
//!   round trip, one transaction, one flush. Appends that arrive meanwhile
//!   gather into the next group. There is no timer, so nothing waits for
//!   company; and a lone append (nothing queued, no group in flight) runs
//!   as the single statement above, which is a little faster for one.
//! - `append_group` first applies the whole group set-based, in one
//!   subtransaction: it locks the group's existing streams in name order
//!   and reads their versions, works out every append's versions and
//!   conflicts in memory (each against the versions the earlier appends of
//!   the group left), then moves the streams on with one `UPDATE`, creates
//!   the new ones with one `INSERT` and writes every event with one
//!   `INSERT`. If that raises — one of the ids was stored concurrently, two
//!   appends of the group share an id, a stream stayed locked longer than
//!   100 ms (an open outbox transaction, say), any database error — it
//!   rolls back and each append is applied again in a subtransaction of its
//!   own (`BEGIN … EXCEPTION`), so that only the failing ones fail.
//! - Every append is settled on its own: a wrong expected version fails
//!   only that append, with the stream's version, and writes nothing of it.
//!   An append that gives an id the store holds already, lost a race
//!   without a verdict (a concurrent creator of its stream) or failed in
//!   its subtransaction wrote nothing, and its caller runs it again alone,
//!   through the single statement, which gives the same answers as without
//!   coalescing (an idempotent repeat returns the stored positions; a
//!   reused id with other content is a duplicate). A caller hears back only
//!   after its group committed.
//! - Groups lock streams in name order, so groups in flight together never
//!   deadlock each other; a group waits at most 100 ms for any lock
//!   (`lock_timeout`, for its transaction only).
//! - The watermark needs nothing new: a group writes its streams' rows,
//!   which gives its transaction an id, before it draws any position, and
//!   holds the lock on `events` from its first position to its commit,
//!   exactly as a single append does; a rolled-back set-based attempt
//!   leaves a gap that readers pass like any rolled-back append's.
//!
//! [`append_in_tx`](PgStore::append_in_tx) and
//! [`link`](herald::store::EventStore::link) never coalesce.
//!
//! What it costs and gives, measured by `benches/postgres.rs`
//! (`single_event_appends_*`) on the development machine (2 cores shared
//! with other builds and test suites, PostgreSQL 15, fsync on); 64 callers
//! each appending one event per call to a stream of its own, latency per
//! call:
//!
//! | 64 callers, one run (load average 8 to 9) | events/s | p50 | p99 |
//! |---|---|---|---|
//! | coalesced, one group in flight (the default) | 8,000 | 7.4 ms | 30 ms |
//! | coalesced, two groups in flight | 9,300 | 5.0 ms | 23 ms |
//! | coalesced, four groups in flight | 7,100 | 6.8 ms | 34 ms |
//! | each append its own transaction (`coalesce` off) | 3,600 | 15 ms | 43 ms |
//! | raw single-row `INSERT`s on 64 connections | 3,100 | 14 ms | 119 ms |
//!
//! The machine was shared with other builds and test suites, and coalesced
//! appends are bound by the CPU where separate commits are bound by the
//! flushes, so the coalesced figures follow the load: an earlier run at a
//! load average of 5 (two groups in flight) gave 11,400 events/s coalesced
//! (p50 4.7 ms, p99 15 ms) against 3,900 for separate commits (p50 15 ms,
//! p99 35 ms) and 5,200 for raw `INSERT`s (p50 11 ms, p99 29 ms); other runs
//! at load 9 to 12 gave 6,300 to 9,600 coalesced against 2,000 to 3,500
//! separate. One and two groups in flight measured alike within that noise
//! (each ahead in some runs); four were behind in every run. One caller
//! alone gets the single statement either way (p50 0.75 ms coalesced, 0.89
//! ms not, in the run above).
//!
//! The trade-off that [`PgConfig::coalesce`] turns off: an append whose
//! stream is locked by another transaction holds up the rest of its group
//! (up to 100 ms per attempt, then it goes alone); and a group whose
//! set-based attempt fails pays for the per-append attempt too. Without
//! coalescing, each append is its own transaction, and waits only for its
//! own stream.
//!
//! # The global log never skips an event
//!
//! Positions come from a sequence when rows are inserted, but become
//! visible when their transactions commit, in any order: a reader could see
//! position 11 while 10 is still in flight, move its checkpoint to 11, and
//! never see 10. The two known fixes are to serialize appends (an advisory
//! lock held from the append to the commit) or to read only below a safe
//! watermark computed from transaction ids. This store uses a watermark,
//! chosen by measurement (below), but not the usual one: "the row's
//! transaction id is below the snapshot's `xmin`" is only safe when the log
//! is read in transaction-id order. Read in position order, it skips events
//! when a transaction takes its id before another but draws a higher
//! position (an outbox transaction that wrote a business row first, say):
//! the test `a_reader_waits_for_a_younger_transaction_that_drew_a_lower_position`
//! builds that case.
//!
//! Instead, a reader returns events in position order only while the
//! positions are *settled*:
//!
//! 1. every position after its checkpoint is there (an event, or the erased
//!    position of a deleted one): then no transaction can still commit one
//!    of them, and they are returned at once — the common case, at no cost;
//! 2. or the gap before a position is known to be final. A reader that
//!    stops at a gap takes a *mark*: in one short read-only transaction it
//!    reads the sequence's last value `q`, then takes a transaction id `m`,
//!    then lists the transactions holding the lock every append takes on
//!    the `events` table before it draws a position, and rolls back. Every
//!    transaction that drew a position ≤ `q` and still runs is in that list
//!    and has an id below `m`; once none of the listed transactions holds
//!    the lock any more (asked of `pg_locks` when a reader stops at the gap
//!    again), or once a snapshot's `xmin` reaches `m`, the gaps up to `q`
//!    are final (rolled-back appends).
//!
//! A gap that is an append in flight is therefore waited for, however long
//! its transaction takes (an outbox transaction held open for seconds holds
//! readers at its first position, and no longer); a gap left by a
//! rolled-back append is passed as soon as the appends that were in flight
//! when a reader first met it have ended — other transactions of the
//! cluster do not hold it up. A settled position only counts for statements
//! issued after it was established, so that a reader whose snapshot is
//! older never relies on it. [`head`](herald::store::EventStore::head)
//! follows the same rules, so a reader can always read everything up to the
//! head.
//!
//! ## What it costs
//!
//! Measured by `benches/postgres.rs` on the development machine (2 cores
//! shared with other work, PostgreSQL 15, fsync on), 8 writers each
//! committing transactions of 10 events; two runs:
//!
//! | technique | events/s, run 1 | events/s, run 2 |
//! |---|---|---|
//! | settled-gap watermark (this store) | 16,000 | 10,700 |
//! | advisory lock held from append to commit | 3,000 | 2,700 |
//! | the watermark, notifying inside each transaction | 8,700 | 8,500 |
//!
//! The lock serializes the commits, and so the flushes to disk, of every
//! writer: 4 to 5 times slower with 8 writers, and every append would wait for
//! an outbox transaction to commit, however long the application keeps it
//! open. The watermark lets PostgreSQL flush concurrent commits together
//! and costs writers nothing (no extra column, no extra statement); readers
//! pay one `pg_current_snapshot()` per batch, and a mark (one round trip)
//! only when they stop at a gap. The last line is why appends notify after
//! their commit (see below): `NOTIFY` takes a lock at commit that
//! serializes the committing transactions the same way.
//!
//! # Deleting a stream
//!
//! [`delete_stream`](herald::store::EventStore::delete_stream) deletes the
//! stream's events and links and its row in one transaction; links to its
//! events from other streams go with them (holes), and the positions are
//! recorded as erased, so readers pass the gap at once.
//!
//! # Dead letters
//!
//! Dead letters are rows of `dead_letters`, one per subscriber and event
//! (unique together): recording the same event for the same subscriber
//! again updates its row in one `INSERT … ON CONFLICT … DO UPDATE`
//! (attempts added, errors appended, reason and last failure updated, id
//! and first failure kept), so concurrent records never make two. The event
//! is kept as its JSON, so a dead letter outlives the deletion of its
//! stream. `list` is oldest first by first failure, then id; it filters by
//! subscriber and failure time in SQL and by event type and error text as
//! it reads, and its limit counts only the dead letters that pass. Times are
//! kept to the microsecond, as PostgreSQL does: the attempts' times are
//! rounded down to it when recorded, so they read back as recorded. Dead
//! letters are kept until they are retried or removed.
//!
//! # Competing consumers
//!
//! A durable subscriber declared
//! [`competing`](herald::Subscriber::competing) in several processes on one
//! schema shares its partitions between them, through the store's
//! [`LeaseStore`](herald::store::LeaseStore): build the bus with
//! `.lease_store(store.clone())` as well. Each member's heartbeat is a row
//! of `group_members`; each partition is a row of `group_partitions` with
//! its owner, the lease's expiry and the partition's checkpoint. Expiry
//! times come from the database's `now()`, never from a process's clock. A
//! renewal is one statement (heartbeat, leases and the list of live
//! members), sent every third of the lease TTL; a takeover is an upsert
//! that succeeds only once the lease expired; a checkpoint save names the
//! owner, the epoch and an unexpired lease, and the row lock orders it with
//! any takeover, so a member that lost its lease cannot move the
//! checkpoint of the one that took over.
//!
//! ```no_run
//! # async fn example(store: herald_postgres::PgStore) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use herald::{handler_fn, Bus, DeliveryMode, Subscriber};
//!
//! let store = Arc::new(store);
//! let bus = Bus::builder().store(store.clone()).lease_store(store.clone()).build();
//! bus.subscribe(
//!     Subscriber::new("ship-orders", handler_fn(|_, _| async { Ok(()) }))
//!         .topic("order.paid")
//!         .mode(DeliveryMode::Durable)
//!         .competing(16)
//!         .lease_ttl(Duration::from_secs(10)),
//! )?;
//! # Ok(()) }
//! ```
//!
//! # The head watch
//!
//! With [`PgConfig::notify`] (the default), the store sends a notification
//! on the channel `<schema>.herald_events` after each append — after the
//! commit, from a background task that coalesces them, in an asynchronously
//! committed transaction, so that appends do not take PostgreSQL's
//! notification lock, which would serialize their commits. An append in the
//! caller's transaction notifies within it (delivered if it commits; this
//! serializes the commits of concurrent outbox transactions, see the table
//! above — turn [`PgConfig::notify`] off to avoid it, and rely on polling). A
//! background listener computes the head on each notification, and every
//! [`PgConfig::poll_interval`] without one, and publishes it to
//! [`watch_head`](herald::store::EventStore::watch_head)'s receivers. It
//! reconnects by itself.
//!
//! # Inbox
//!
//! Delivery is at least once: a durable subscriber killed mid-batch gets
//! the batch again, a replay delivers old events again, a broker redelivers
//! what was not acknowledged. An [`Inbox`] makes a handler's database
//! writes happen once anyway. It is a [`Handler`](herald::Handler) that, per
//! delivery, opens a transaction, inserts `(subscriber, event id)` into the
//! `inbox` table (`ON CONFLICT DO NOTHING`), and then either finds the event
//! handled already — rolls back and returns `Ok` — or runs your function with
//! the transaction and commits the entry and your writes together. When
//! your function fails, both roll back and the error goes to the
//! subscriber's retry and dead-letter policy. Two deliveries of one event
//! at the same moment are serialized by the table's primary key: the second
//! waits for the first to commit, then skips.
//!
//! The [`Ledger`](herald::Ledger) above works for any handler, but checks
//! and records in two steps around it, so a crash between the handler's
//! writes and the record, or two deliveries at once, can still run it
//! twice; the inbox closes both gaps, for writes made through its
//! transaction. Writes elsewhere (an HTTP call, an email) stay at least once.
//!
//! ```no_run
//! # async fn example(store: herald_postgres::PgStore) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use herald::{Bus, DeliveryMode, HandlerError, Subscriber};
//! use herald_postgres::{Inbox, inbox_fn};
//!
//! let ship = Inbox::new(
//!     store.clone(),
//!     inbox_fn(|event, _ctx, tx| {
//!         Box::pin(async move {
//!             sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
//!                 .bind(event.data().to_value()["order_id"].as_i64())
//!                 .execute(&mut **tx)
//!                 .await
//!                 .map_err(HandlerError::retry)?;
//!             Ok(())
//!         })
//!     }),
//! );
//! let store = Arc::new(store);
//! let bus = Bus::builder().store(store.clone()).dead_letter_store(store).build();
//! bus.subscribe(
//!     Subscriber::new("shipping", ship)
//!         .topic("order.paid")
//!         .mode(DeliveryMode::Durable),
//! )?;
//! # Ok(()) }
//! ```
//!
//! The transaction is an ordinary `sqlx::Transaction`, so the function can
//! also append follow-up events in it with [`PgStore::append_in_tx`]: the
//! effects, the record and the new events commit together. Entries are kept
//! until [`PgStore::purge_inbox`] removes old ones; see
//! [Retention](Inbox#retention) for why that is a choice to make with care.
//!
//! # Errors
//!
//! Database failures are [`StoreError::Backend`](herald::store::StoreError::Backend)
//! holding a [`DatabaseError`] that names the operation and keeps the
//! [`sqlx::Error`] as its source. [`PgStore::connect`] fails with a
//! [`ConnectError`].
#![warn(missing_docs)]

mod checkpoint;
mod coalesce;
mod config;
mod dead_letters;
mod error;
mod inbox;
mod leases;
mod ledger;
mod listener;
mod log;
mod migrate;
mod sql;
mod store;
mod watermark;

pub use crate::config::{ConfigError, MAX_SCHEMA_LEN, PgConfig};
pub use crate::error::{ConnectError, DatabaseError, GroupCommitError};
pub use crate::inbox::{Inbox, InboxError, InboxFn, InboxHandler, inbox_fn};
pub use crate::store::PgStore;
