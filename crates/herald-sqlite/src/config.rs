//! The store's configuration.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The most read connections a store opens.
const MAX_READ_CONNECTIONS: usize = 64;

/// The shortest dead-letter retention: shorter ones are more likely a unit
/// mistake (milliseconds for seconds) than a wish.
const MIN_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(1);

/// How hard SQLite works to make a commit survive a crash (`PRAGMA
/// synchronous`), in WAL mode.
///
/// # Durability
///
/// | setting | process crash (`kill -9`) | power loss, kernel panic | cost |
/// |---|---|---|---|
/// | [`Normal`](Self::Normal) (default) | loses nothing | may lose the last commits (never corrupts) | no fsync per commit; the WAL is synced at checkpoints |
/// | [`Full`](Self::Full) | loses nothing | loses nothing | one fsync of the WAL per commit (about 1–4 ms) |
///
/// With `Full`, group commit matters: appends that arrive together share one
/// transaction and so one fsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous=NORMAL`: a commit is in the WAL file when `append`
    /// returns, so it survives the process; the WAL is synced to disk at
    /// checkpoints, so a power loss can undo the last commits.
    #[default]
    Normal,
    /// `synchronous=FULL`: the WAL is synced to disk before `append`
    /// returns.
    Full,
}

impl Synchronous {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

impl fmt::Display for Synchronous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Full => "full",
        })
    }
}

/// How to open a [`SqliteStore`](crate::SqliteStore).
///
/// Every field has a default; [`SqliteConfig::new`] sets the path, and the
/// other fields can be set directly or with the chained setters.
/// [`validate`](Self::validate) (called by
/// [`SqliteStore::open`](crate::SqliteStore::open)) rejects values that
/// cannot work.
///
/// # Examples
///
/// ```
/// use herald_sqlite::{SqliteConfig, Synchronous};
///
/// let config = SqliteConfig::new("events.db")
///     .synchronous(Synchronous::Full)
///     .read_connections(2);
/// assert!(config.validate().is_ok());
/// assert!(SqliteConfig::new("events.db").read_connections(0).validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file; created, with its schema, if it does not exist.
    /// SQLite keeps two more files beside it while it is open (`-wal` and
    /// `-shm`). Default: `herald.db` in the working directory.
    pub path: PathBuf,
    /// What a commit survives; see [`Synchronous`]. Default:
    /// [`Synchronous::Normal`].
    pub synchronous: Synchronous,
    /// How many read connections (each on its own thread) serve reads beside
    /// the one writer; 1 to 64. Default: 2.
    pub read_connections: usize,
    /// How long a connection waits for a lock held by another connection
    /// (another process appending to the same file, say) before the
    /// operation fails. At most `i32::MAX` milliseconds. Default: 5 seconds.
    pub busy_timeout: Duration,
    /// The most writes (appends, links, deletes) that the writer commits in
    /// one transaction when they are queued together (group commit); at
    /// least 1. Default: 256.
    pub max_group_commit: usize,
    /// How many writes may wait for the writer before `append` waits for
    /// room; at least 1. Default: 1024.
    pub write_queue: usize,
    /// The page cache of each connection, in KiB. Default: 8192 (8 MiB).
    pub cache_kib: u32,
    /// The size of the write-ahead log, in pages (4 KiB each), at which a
    /// commit copies it back into the database file (SQLite's
    /// `wal_autocheckpoint`); 0 never does, and turns the store's
    /// background checkpoints off too (then run checkpoints yourself).
    /// With the background checkpoints (every half second when something
    /// was committed) the WAL rarely gets this large: this is the fallback.
    /// A checkpoint syncs the file, so it is the one append in many that
    /// pays for an fsync: a larger value means cheaper appends on average,
    /// a larger `-wal` file, and a longer pause for the append that runs
    /// it. Default: 10 000 (about 40 MiB; SQLite's own default is 1000,
    /// measured here to make small appends about twice as slow).
    pub checkpoint_pages: u32,
    /// How long a dead letter is kept after its last failure; `None` keeps
    /// dead letters until they are retried or removed. Older ones are
    /// removed when the store opens and each time a dead letter is recorded
    /// (see [`SqliteStore::purge_dead_letters`](crate::SqliteStore::purge_dead_letters)
    /// to remove them on demand). When set, at least one second and at most
    /// `i64::MAX` microseconds. Default: `None`.
    pub dead_letter_retention: Option<Duration>,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("herald.db"),
            synchronous: Synchronous::default(),
            read_connections: 2,
            busy_timeout: Duration::from_secs(5),
            max_group_commit: 256,
            write_queue: 1024,
            cache_kib: 8192,
            checkpoint_pages: 10_000,
            dead_letter_retention: None,
        }
    }
}

impl SqliteConfig {
    /// The default configuration for the database file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }

    /// Sets [`synchronous`](Self::synchronous).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets [`read_connections`](Self::read_connections).
    pub fn read_connections(mut self, count: usize) -> Self {
        self.read_connections = count;
        self
    }

    /// Sets [`busy_timeout`](Self::busy_timeout).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets [`max_group_commit`](Self::max_group_commit).
    pub fn max_group_commit(mut self, count: usize) -> Self {
        self.max_group_commit = count;
        self
    }

    /// Sets [`write_queue`](Self::write_queue).
    pub fn write_queue(mut self, capacity: usize) -> Self {
        self.write_queue = capacity;
        self
    }

    /// Sets [`cache_kib`](Self::cache_kib).
    pub fn cache_kib(mut self, kib: u32) -> Self {
        self.cache_kib = kib;
        self
    }

    /// Sets [`checkpoint_pages`](Self::checkpoint_pages).
    pub fn checkpoint_pages(mut self, pages: u32) -> Self {
        self.checkpoint_pages = pages;
        self
    }

    /// Sets [`dead_letter_retention`](Self::dead_letter_retention).
    pub fn dead_letter_retention(mut self, retention: Option<Duration>) -> Self {
        self.dead_letter_retention = retention;
        self
    }

    /// Checks that the configuration can work.
    ///
    /// # Errors
    ///
    /// The first problem found, as a [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath);
        }
        if !(1..=MAX_READ_CONNECTIONS).contains(&self.read_connections) {
            return Err(ConfigError::ReadConnections {
                count: self.read_connections,
            });
        }
        if self.busy_timeout_ms().is_none() {
            return Err(ConfigError::BusyTimeoutTooLong {
                timeout: self.busy_timeout,
            });
        }
        if self.max_group_commit == 0 {
            return Err(ConfigError::ZeroGroupCommit);
        }
        if self.write_queue == 0 {
            return Err(ConfigError::ZeroWriteQueue);
        }
        if let Some(retention) = self.dead_letter_retention {
            if retention < MIN_DEAD_LETTER_RETENTION
                || i64::try_from(retention.as_micros()).is_err()
            {
                return Err(ConfigError::DeadLetterRetention { retention });
            }
        }
        Ok(())
    }

    /// The busy timeout in milliseconds, if SQLite can take it.
    pub(crate) fn busy_timeout_ms(&self) -> Option<i32> {
        i32::try_from(self.busy_timeout.as_millis()).ok()
    }
}

/// A [`SqliteConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The path is empty.
    #[error("invalid sqlite config: the database path is empty")]
    EmptyPath,
    /// `read_connections` is not between 1 and 64.
    #[error("invalid sqlite config: read_connections must be between 1 and 64, not {count}")]
    ReadConnections {
        /// The value given.
        count: usize,
    },
    /// `busy_timeout` is longer than SQLite can take.
    #[error(
        "invalid sqlite config: busy_timeout of {timeout:?} is longer than {} ms",
        i32::MAX
    )]
    BusyTimeoutTooLong {
        /// The value given.
        timeout: Duration,
    },
    /// `max_group_commit` is 0.
    #[error("invalid sqlite config: max_group_commit must be at least 1")]
    ZeroGroupCommit,
    /// `write_queue` is 0.
    #[error("invalid sqlite config: write_queue must be at least 1")]
    ZeroWriteQueue,
    /// `dead_letter_retention` is shorter than a second or longer than
    /// `i64::MAX` microseconds.
    #[error(
        "invalid sqlite config: dead_letter_retention of {retention:?} must be at least 1 s and at most {} µs",
        i64::MAX
    )]
    DeadLetterRetention {
        /// The value given.
        retention: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_normal() {
        let config = SqliteConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.synchronous, Synchronous::Normal);
        assert_eq!(config.dead_letter_retention, None);
    }

    #[test]
    fn validation_names_the_problem() {
        let base = SqliteConfig::new("x.db");
        assert_eq!(
            SqliteConfig::new("").validate(),
            Err(ConfigError::EmptyPath)
        );
        assert_eq!(
            base.clone().read_connections(65).validate(),
            Err(ConfigError::ReadConnections { count: 65 })
        );
        let long = Duration::from_secs(u64::MAX);
        let err = base.clone().busy_timeout(long).validate().unwrap_err();
        assert_eq!(err, ConfigError::BusyTimeoutTooLong { timeout: long });
        assert!(err.to_string().contains("busy_timeout"), "{err}");
        assert_eq!(
            base.clone().max_group_commit(0).validate(),
            Err(ConfigError::ZeroGroupCommit)
        );
        assert_eq!(
            base.clone().write_queue(0).validate(),
            Err(ConfigError::ZeroWriteQueue)
        );
        for retention in [Duration::ZERO, Duration::from_millis(999), Duration::MAX] {
            let err = base
                .clone()
                .dead_letter_retention(Some(retention))
                .validate()
                .unwrap_err();
            assert_eq!(err, ConfigError::DeadLetterRetention { retention });
            assert!(err.to_string().contains("dead_letter_retention"), "{err}");
        }
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(base.dead_letter_retention(day).validate(), Ok(()));
    }
}
