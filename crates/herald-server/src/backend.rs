//! Opening the store a server or a CLI command works on, from a URL.

use std::path::PathBuf;
use std::sync::Arc;

use herald::store::{CheckpointStore, EventStore};
use herald::{Bus, DeadLetterStore, Ledger};
use herald_postgres::{PgConfig, PgStore};
use herald_sqlite::{SqliteConfig, SqliteStore};

/// The default store: a SQLite file in the working directory.
pub const DEFAULT_STORE: &str = "sqlite://herald.db";

/// A store the server runs on, chosen by URL.
///
/// | URL | store |
/// |---|---|
/// | `sqlite://herald.db` | SQLite, the file `herald.db` relative to the working directory |
/// | `sqlite:///var/lib/herald/events.db` | SQLite, an absolute path |
/// | `postgres://user@host/db` (or `postgresql://`) | PostgreSQL, schema `herald` unless `--schema` says otherwise |
#[derive(Clone, Debug)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite(Arc<SqliteStore>),
    /// A PostgreSQL schema.
    Postgres(Arc<PgStore>),
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStoreError {
    /// The URL names no store this server knows.
    #[error("store URL {0:?} is not understood: expected sqlite://PATH or postgres://USER@HOST/DB")]
    UnknownScheme(String),
    /// `sqlite://` with no path.
    #[error("store URL {0:?} names no file: expected sqlite://PATH")]
    NoPath(String),
    /// SQLite could not open the file.
    #[error("cannot open the SQLite store: {0}")]
    Sqlite(#[from] herald_sqlite::OpenError),
    /// PostgreSQL could not be reached or migrated.
    #[error("cannot open the PostgreSQL store: {0}")]
    Postgres(#[from] herald_postgres::ConnectError),
}

impl Backend {
    /// Opens (and migrates) the store at `url`; `schema` is the PostgreSQL
    /// schema (ignored for SQLite).
    ///
    /// # Errors
    ///
    /// [`OpenStoreError`] says what was wrong with the URL or the store.
    pub async fn open(url: &str, schema: &str) -> Result<Self, OpenStoreError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(OpenStoreError::NoPath(url.to_owned()));
            }
            let store = SqliteStore::open(SqliteConfig::new(PathBuf::from(path))).await?;
            return Ok(Self::Sqlite(Arc::new(store)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let store = PgStore::connect(PgConfig::new(url).schema(schema)).await?;
            return Ok(Self::Postgres(Arc::new(store)));
        }
        Err(OpenStoreError::UnknownScheme(url.to_owned()))
    }

    /// A bus on this store: published events are appended to it, durable
    /// subscribers are fed from it, dead letters are kept in it.
    pub fn bus(&self) -> Bus {
        match self {
            Self::Sqlite(store) => Bus::builder()
                .store(Arc::clone(store))
                .dead_letter_store(Arc::clone(store) as Arc<dyn DeadLetterStore>)
                .build(),
            Self::Postgres(store) => Bus::builder()
                .store(Arc::clone(store))
                .dead_letter_store(Arc::clone(store) as Arc<dyn DeadLetterStore>)
                .build(),
        }
    }

    /// The event store.
    pub fn events(&self) -> Arc<dyn EventStore> {
        match self {
            Self::Sqlite(store) => Arc::clone(store) as _,
            Self::Postgres(store) => Arc::clone(store) as _,
        }
    }

    /// Where durable subscribers keep their checkpoints.
    pub fn checkpoints(&self) -> Arc<dyn CheckpointStore> {
        match self {
            Self::Sqlite(store) => Arc::clone(store) as _,
            Self::Postgres(store) => Arc::clone(store) as _,
        }
    }

    /// Where dead letters are kept.
    pub fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        match self {
            Self::Sqlite(store) => Arc::clone(store) as _,
            Self::Postgres(store) => Arc::clone(store) as _,
        }
    }

    /// The idempotency ledger.
    pub fn ledger(&self) -> Arc<dyn Ledger> {
        match self {
            Self::Sqlite(store) => Arc::clone(store) as _,
            Self::Postgres(store) => Arc::clone(store) as _,
        }
    }

    /// `sqlite` or `postgres`, for logs and `/health`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}
