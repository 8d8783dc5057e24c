//! Errors of connecting and of the database.

use std::sync::Arc;

use herald::store::StoreError;

use crate::config::ConfigError;

/// Why [`PgStore::connect`](crate::PgStore::connect) or
/// [`PgStore::migrate`](crate::PgStore::migrate) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// PostgreSQL could not be reached, or refused the connection.
    #[error("cannot connect to postgres: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed; the schema is left as it was before it.
    #[error("postgres migration {version} ({name}) failed in schema {schema}: {source}")]
    Migration {
        /// The schema.
        schema: String,
        /// The migration's version.
        version: i32,
        /// The migration's name.
        name: &'static str,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
    /// The schema holds migrations this version of the crate does not know,
    /// or knows with other content.
    #[error("postgres schema {schema} does not match this herald-postgres: {detail}")]
    SchemaMismatch {
        /// The schema.
        schema: String,
        /// What differs.
        detail: String,
    },
    /// Removing the dead letters past
    /// [`PgConfig::dead_letter_retention`](crate::PgConfig::dead_letter_retention)
    /// failed.
    #[error("cannot remove the dead letters past their retention: {0}")]
    Purge(#[source] herald::DeadLetterError),
}

/// A database error, with the store operation that met it; the payload of
/// [`StoreError::Backend`]. Its [`source`](std::error::Error::source) is the
/// [`sqlx::Error`].
#[derive(Debug, thiserror::Error)]
#[error("postgres failed to {operation}: {source}")]
pub struct DatabaseError {
    operation: &'static str,
    #[source]
    source: sqlx::Error,
}

impl DatabaseError {
    /// What the store was doing, such as `append to stream order-42`
    /// (without the stream name).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The error sqlx reported.
    pub fn sqlx(&self) -> &sqlx::Error {
        &self.source
    }
}

/// Wraps a sqlx error as a backend failure of `operation`.
pub(crate) fn backend(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::backend(DatabaseError { operation, source })
}

/// The SQLSTATE and constraint of a database error, if it is one.
pub(crate) fn violation(error: &sqlx::Error) -> Option<(String, Option<String>)> {
    match error {
        sqlx::Error::Database(db) => Some((
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.constraint().map(str::to_owned),
        )),
        _ => None,
    }
}

/// SQLSTATE of a unique violation.
pub(crate) const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE of a foreign key violation.
pub(crate) const FOREIGN_KEY_VIOLATION: &str = "23503";

/// A coalesced group of appends failed as a whole; the payload of
/// [`StoreError::Backend`] for each append of the group.
///
/// Every append of the group gets one, sharing the cause. When the
/// connection failed while the group was in flight, whether it committed
/// is not known (as for an uncoalesced append whose connection fails): read
/// the stream before appending again, or append with ids of your own, which
/// makes a repeat idempotent.
#[derive(Clone, Debug, thiserror::Error)]
#[error("postgres failed to append a coalesced group: {message}")]
pub struct GroupCommitError {
    message: String,
    #[source]
    source: Option<Arc<sqlx::Error>>,
}

impl GroupCommitError {
    pub(crate) fn new(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }

    pub(crate) fn from_sqlx(error: sqlx::Error) -> Self {
        Self {
            message: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }

    /// The error sqlx reported, if the group failed in the database client.
    pub fn sqlx(&self) -> Option<&sqlx::Error> {
        self.source.as_deref()
    }
}
