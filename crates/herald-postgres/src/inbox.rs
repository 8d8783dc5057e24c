//! The inbox: a handler's writes and the record that it handled the event,
//! committed in one PostgreSQL transaction.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald::{BoxFuture, Context, ErrorKind, Handler, HandlerError, HandlerResult, RecordedEvent};
use sqlx::{Postgres, Transaction};

use crate::store::PgStore;

/// A handler that writes to PostgreSQL in the transaction an [`Inbox`]
/// opens for it.
///
/// Implement it with an `async fn`, or make one from a closure with
/// [`inbox_fn`]. Everything it writes through `tx` commits together with
/// the inbox's record of the event, or not at all.
///
/// # Examples
///
/// ```
/// use herald::{Context, HandlerError, RecordedEvent};
/// use herald_postgres::InboxHandler;
/// use sqlx::{Postgres, Transaction};
///
/// struct Ship;
///
/// impl InboxHandler for Ship {
///     async fn handle(
///         &self,
///         event: &RecordedEvent,
///         _ctx: &Context,
///         tx: &mut Transaction<'static, Postgres>,
///     ) -> Result<(), HandlerError> {
///         sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
///             .bind(event.data().to_value()["order_id"].as_i64())
///             .execute(&mut **tx)
///             .await
///             .map_err(HandlerError::retry)?;
///         Ok(())
///     }
/// }
/// ```
pub trait InboxHandler: Send + Sync + 'static {
    /// Handles one event, writing through `tx`.
    ///
    /// The transaction is the inbox's: it commits it when this returns `Ok`
    /// and rolls it back otherwise, so do not end it here.
    fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
        tx: &mut Transaction<'static, Postgres>,
    ) -> impl Future<Output = HandlerResult> + Send;
}

impl<H: InboxHandler> InboxHandler for Arc<H> {
    fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
        tx: &mut Transaction<'static, Postgres>,
    ) -> impl Future<Output = HandlerResult> + Send {
        (**self).handle(event, ctx, tx)
    }
}

/// An [`InboxHandler`] made from a closure; see [`inbox_fn`].
#[derive(Clone)]
pub struct InboxFn<F> {
    f: F,
}

/// Makes an [`InboxHandler`] from a closure that borrows the event, the
/// context and the transaction, and returns a boxed future holding those
/// borrows (the shape of sqlx's own `Connection::transaction`).
///
/// # Examples
///
/// ```
/// use herald::HandlerError;
/// use herald_postgres::inbox_fn;
///
/// let handler = inbox_fn(|event, _ctx, tx| {
///     Box::pin(async move {
///         sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
///             .bind(event.data().to_value()["order_id"].as_i64())
///             .execute(&mut **tx)
///             .await
///             .map_err(HandlerError::retry)?;
///         Ok(())
///     })
/// });
/// ```
pub fn inbox_fn<F>(f: F) -> InboxFn<F>
where
    F: for<'a> Fn(
            &'a RecordedEvent,
            &'a Context,
            &'a mut Transaction<'static, Postgres>,
        ) -> BoxFuture<'a, HandlerResult>
        + Send
        + Sync
        + 'static,
{
    InboxFn { f }
}

impl<F> InboxHandler for InboxFn<F>
where
    F: for<'a> Fn(
            &'a RecordedEvent,
            &'a Context,
            &'a mut Transaction<'static, Postgres>,
        ) -> BoxFuture<'a, HandlerResult>
        + Send
        + Sync
        + 'static,
{
    // An async fn rather than returning the box: the box names one
    // lifetime, the trait's future captures four.
    async fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
        tx: &mut Transaction<'static, Postgres>,
    ) -> HandlerResult {
        (self.f)(event, ctx, tx).await
    }
}

/// Why the inbox itself failed (not the handler it runs).
///
/// The [`Inbox`] returns it inside a retryable [`HandlerError`] of kind
/// [`ErrorKind::Ledger`]; [`PgStore::purge_inbox`] returns it as is. Each
/// variant keeps the [`sqlx::Error`] as its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// No transaction could be started (no connection, say).
    #[error("inbox of subscriber {subscriber}: postgres failed to begin a transaction: {source}")]
    Begin {
        /// The subscriber.
        subscriber: String,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
    /// The event could not be recorded, or looked up, in the inbox.
    #[error(
        "inbox of subscriber {subscriber}: postgres failed to record event {event_id}: {source}"
    )]
    Record {
        /// The subscriber.
        subscriber: String,
        /// The event.
        event_id: herald::EventId,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
    /// The handler returned `Ok`, but its transaction can no longer commit:
    /// a statement in it failed and the handler went on, or the handler ended
    /// the transaction itself. Nothing of it is kept.
    #[error(
        "inbox of subscriber {subscriber}: the handler of event {event_id} returned Ok, \
         but its transaction cannot commit: {source}"
    )]
    Aborted {
        /// The subscriber.
        subscriber: String,
        /// The event.
        event_id: herald::EventId,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
    /// The handler returned `Ok`, but the event's inbox entry is no longer
    /// in its transaction: the handler deleted it, or ended the transaction
    /// and started another. Nothing of it is committed by the inbox.
    #[error(
        "inbox of subscriber {subscriber}: the handler of event {event_id} returned Ok, \
         but the event's inbox entry is gone from its transaction"
    )]
    EntryLost {
        /// The subscriber.
        subscriber: String,
        /// The event.
        event_id: herald::EventId,
    },
    /// The commit failed. Whether it took effect is unknown when the
    /// connection broke; retrying is safe either way, as a committed event
    /// is then found in the inbox and skipped.
    #[error(
        "inbox of subscriber {subscriber}: postgres failed to commit the handling of event \
         {event_id}: {source}"
    )]
    Commit {
        /// The subscriber.
        subscriber: String,
        /// The event.
        event_id: herald::EventId,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
    /// [`PgStore::purge_inbox`] failed.
    #[error("inbox of subscriber {subscriber}: postgres failed to purge old entries: {source}")]
    Purge {
        /// The subscriber.
        subscriber: String,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
}

impl InboxError {
    /// The error sqlx reported, if the database reported one.
    pub fn sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Begin { source, .. }
            | Self::Record { source, .. }
            | Self::Aborted { source, .. }
            | Self::Commit { source, .. }
            | Self::Purge { source, .. } => Some(source),
            Self::EntryLost { .. } => None,
        }
    }
}

impl From<InboxError> for HandlerError {
    fn from(error: InboxError) -> Self {
        HandlerError::retry(error).with_kind(ErrorKind::Ledger)
    }
}

/// The inbox's statements, for one schema.
struct Statements {
    record: String,
    check: String,
}

impl Statements {
    fn new(schema: &str) -> Self {
        Self {
            record: format!(
                "INSERT INTO \"{schema}\".inbox (subscriber, event_id, handled_at) \
                 VALUES ($1::text, $2::uuid, now()) \
                 ON CONFLICT (subscriber, event_id) DO NOTHING"
            ),
            check: format!(
                "SELECT EXISTS (SELECT 1 FROM \"{schema}\".inbox \
                 WHERE subscriber = $1::text AND event_id = $2::uuid)"
            ),
        }
    }
}

struct Shared<H> {
    store: PgStore,
    handler: H,
    sql: Statements,
    duplicates: AtomicU64,
}

/// A [`Handler`] that runs an [`InboxHandler`] in a PostgreSQL transaction
/// together with a record, in the store's `inbox` table, that the
/// subscriber handled the event: the handler's writes happen exactly once
/// per subscriber and event, however often the event is delivered.
///
/// The subscriber is the one in the delivery's [`Context`], so one `Inbox`
/// may serve several subscribers, each with its own records. It is a
/// handler like any other: it works for a durable subscriber fed from the
/// store as for events that come from anywhere else (a broker, an async
/// subscriber), and takes the subscriber's middleware (retry, dead letters)
/// around it. Clones share the handler and the duplicate count.
///
/// # Delivery guarantees
///
/// For each delivery, in one transaction:
///
/// 1. it inserts `(subscriber, event id)` into the inbox, unless it is
///    there; a second delivery of the same event waits here, on the primary
///    key, until the first one's transaction ends (and goes on as if alone
///    if that one rolled back);
/// 2. if the row was there (a committed earlier delivery), it rolls back,
///    counts a [duplicate](Self::duplicates), logs it at DEBUG and returns
///    `Ok` without calling the handler;
/// 3. otherwise it calls the handler with the transaction; on `Ok` it
///    checks that the transaction is still alive (a statement that failed
///    in it, its error swallowed by the handler, would make the commit a
///    silent rollback) and commits; on an error of any disposition it rolls
///    back — no record, no writes — and returns the error, so the
///    subscriber's retry and dead-letter policy apply, and a later delivery
///    runs the handler again.
///
/// So what the handler writes through the transaction happens once. What it
/// does outside it (an HTTP call, an email) is at least once, as without an
/// inbox. A failure of the inbox itself is [`InboxError`], returned as a
/// retryable [`HandlerError`] of kind [`ErrorKind::Ledger`]; a failed
/// commit is safe to retry, whether or not it took effect.
///
/// The transaction uses PostgreSQL's default isolation (`READ COMMITTED`)
/// and holds a pool connection while the handler runs.
///
/// # Crash safety
///
/// A process killed while a handler runs leaves its transaction open, and
/// PostgreSQL rolls it back when the connection drops: neither the entry nor
/// the writes stay, and the redelivery runs the handler. A process killed
/// after the commit but before the delivery was acknowledged (a durable
/// subscriber's checkpoint saved) gets the event again and skips it. The test
/// `a_killed_consumer_restarted_has_every_effect_exactly_once` kills a
/// consumer process mid-batch and checks both.
///
/// # Retention
///
/// Entries are kept for good by default, one small row per subscriber and
/// handled event, because forgetting one reopens the door to a duplicate: an
/// event delivered again after its entry went is handled again.
/// [`PgStore::purge_inbox`] removes a subscriber's entries older than an
/// age you choose; choose it longer than any redelivery can come late (a
/// broker's redelivery window, how long dead letters wait for a retry), and
/// do not replay a durable subscriber from before it.
///
/// # Examples
///
/// ```no_run
/// # async fn example(store: herald_postgres::PgStore) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use herald::{Bus, DeliveryMode, HandlerError, Subscriber};
/// use herald_postgres::{Inbox, inbox_fn};
///
/// let inbox = Inbox::new(
///     store.clone(),
///     inbox_fn(|event, _ctx, tx| {
///         Box::pin(async move {
///             sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
///                 .bind(event.data().to_value()["amount"].as_i64())
///                 .bind(event.data().to_value()["account"].as_i64())
///                 .execute(&mut **tx)
///                 .await
///                 .map_err(HandlerError::retry)?;
///             Ok(())
///         })
///     }),
/// );
/// let store = Arc::new(store);
/// let bus = Bus::builder().store(store.clone()).dead_letter_store(store).build();
/// bus.subscribe(
///     Subscriber::new("balances", inbox.clone())
///         .topic("payment.received")
///         .mode(DeliveryMode::Durable),
/// )?;
/// // Each payment moves its balance once, even when delivered again.
/// # Ok(()) }
/// ```
pub struct Inbox<H> {
    shared: Arc<Shared<H>>,
}

impl<H> Clone for Inbox<H> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<H> std::fmt::Debug for Inbox<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("schema", &self.shared.store.config().schema)
            .field("duplicates", &self.duplicates())
            .finish_non_exhaustive()
    }
}

impl<H> Inbox<H> {
    /// An inbox in `store`'s schema, running `handler`.
    pub fn new(store: PgStore, handler: H) -> Self {
        let sql = Statements::new(&store.config().schema);
        Self {
            shared: Arc::new(Shared {
                store,
                handler,
                sql,
                duplicates: AtomicU64::new(0),
            }),
        }
    }

    /// The handler.
    pub fn get_ref(&self) -> &H {
        &self.shared.handler
    }

    /// How many deliveries this inbox (and its clones) skipped because the
    /// event was handled already.
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }
}

impl<H: InboxHandler> Handler for Inbox<H> {
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        let shared = &*self.shared;
        let subscriber = ctx.subscriber();
        let id = event.id();
        let mut tx = shared
            .store
            .pool()
            .begin()
            .await
            .map_err(|source| InboxError::Begin {
                subscriber: subscriber.to_owned(),
                source,
            })?;
        let record = |source| InboxError::Record {
            subscriber: subscriber.to_owned(),
            event_id: id,
            source,
        };
        let inserted = sqlx::query(&shared.sql.record)
            .bind(subscriber)
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(record)?
            .rows_affected();
        if inserted == 0 {
            // Nothing was written; a failed rollback loses nothing.
            let _ = tx.rollback().await;
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                event_id = %id,
                event_type = event.event_type(),
                subscriber,
                "event already in the inbox, skipped"
            );
            return Ok(());
        }
        if let Err(error) = shared.handler.handle(event, ctx, &mut tx).await {
            if let Err(rollback) = tx.rollback().await {
                // The connection is dropped then, which rolls back too.
                tracing::debug!(
                    event_id = %id,
                    subscriber,
                    error = %rollback,
                    "inbox rollback failed"
                );
            }
            return Err(error);
        }
        // A failed statement aborts the transaction, and COMMIT then rolls
        // back without an error: this check turns that into an error.
        let alive: Result<bool, sqlx::Error> = sqlx::query_scalar(&shared.sql.check)
            .bind(subscriber)
            .bind(id.as_uuid())
            .fetch_one(&mut *tx)
            .await;
        match alive {
            Ok(true) => {}
            Ok(false) => {
                return Err(InboxError::EntryLost {
                    subscriber: subscriber.to_owned(),
                    event_id: id,
                }
                .into());
            }
            Err(source) => {
                return Err(InboxError::Aborted {
                    subscriber: subscriber.to_owned(),
                    event_id: id,
                    source,
                }
                .into());
            }
        }
        tx.commit().await.map_err(|source| InboxError::Commit {
            subscriber: subscriber.to_owned(),
            event_id: id,
            source,
        })?;
        Ok(())
    }
}

impl PgStore {
    /// Removes `subscriber`'s inbox entries recorded more than `older_than`
    /// ago (by the database's clock); returns how many.
    ///
    /// An event delivered again after its entry is gone is handled again:
    /// see [Retention](Inbox#retention). Nothing purges on its own; call it
    /// from a periodic task if the table's growth matters.
    ///
    /// # Errors
    ///
    /// [`InboxError::Purge`] when the statement fails.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(store: herald_postgres::PgStore) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// // Here nothing is delivered again more than 30 days late.
    /// let purged = store.purge_inbox("balances", Duration::from_secs(30 * 24 * 3600)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn purge_inbox(
        &self,
        subscriber: &str,
        older_than: Duration,
    ) -> Result<u64, InboxError> {
        let sql = format!(
            "DELETE FROM \"{}\".inbox WHERE subscriber = $1::text \
             AND handled_at < now() - make_interval(secs => $2::float8)",
            self.config().schema
        );
        let done = sqlx::query(&sql)
            .bind(subscriber)
            .bind(older_than.as_secs_f64())
            .execute(self.pool())
            .await
            .map_err(|source| InboxError::Purge {
                subscriber: subscriber.to_owned(),
                source,
            })?;
        Ok(done.rows_affected())
    }
}
