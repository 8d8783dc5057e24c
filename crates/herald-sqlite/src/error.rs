//! Errors of opening a store, and how SQLite failures become
//! [`StoreError::Backend`].

use std::fmt;
use std::path::PathBuf;

use herald::BoxError;
use herald::store::StoreError;

use crate::config::ConfigError;

/// Why a [`SqliteStore`](crate::SqliteStore) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// SQLite could not open or set up the database file.
    #[error("cannot open sqlite database {}: {source}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: BoxError,
    },
    /// A schema migration failed; the database is left at the version
    /// before it.
    #[error("cannot migrate sqlite database {} to schema version {version}: {source}", path.display())]
    Migration {
        /// The database file.
        path: PathBuf,
        /// The migration that failed.
        version: u32,
        /// What SQLite said.
        #[source]
        source: BoxError,
    },
    /// The database was migrated by a newer herald-sqlite, whose schema this
    /// one does not know.
    #[error(
        "sqlite database {} has schema version {found}, newer than the {supported} this herald-sqlite knows",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The database's schema version.
        found: i64,
        /// The newest version this crate knows.
        supported: u32,
    },
    /// A writer or reader thread could not be started.
    #[error("cannot start a sqlite {role} thread: {source}")]
    Thread {
        /// `writer` or `reader`.
        role: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A backend failure with what the store was doing.
#[derive(Debug)]
pub(crate) struct Failure {
    context: String,
    source: Option<BoxError>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sqlite: {}", self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A SQLite error while doing `context`.
pub(crate) fn backend(context: impl fmt::Display, source: rusqlite::Error) -> StoreError {
    StoreError::Backend(Box::new(Failure {
        context: context.to_string(),
        source: Some(Box::new(source)),
    }))
}

/// A failure with no error value behind it (a stopped thread, a stored row
/// that does not decode).
pub(crate) fn failure(context: impl fmt::Display) -> StoreError {
    StoreError::Backend(Box::new(Failure {
        context: context.to_string(),
        source: None,
    }))
}

/// Adds context to SQLite results.
pub(crate) trait Context<T> {
    /// Maps an error to [`StoreError::Backend`] saying what was being done.
    fn context(self, context: impl fmt::Display) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn context(self, context: impl fmt::Display) -> Result<T, StoreError> {
        self.map_err(|e| backend(context, e))
    }
}
