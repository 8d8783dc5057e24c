//! Configuration of a [`PgStore`](crate::PgStore).

use std::time::Duration;

/// The shortest dead-letter retention: shorter ones are more likely a unit
/// mistake (milliseconds for seconds) than a wish.
const MIN_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(1);

/// The longest schema name: the notification channel `<schema>.herald_events`
/// must fit PostgreSQL's 63-byte identifier limit.
pub const MAX_SCHEMA_LEN: usize = 49;

/// How to reach PostgreSQL, and where the store keeps its tables.
///
/// # Examples
///
/// ```
/// use herald_postgres::PgConfig;
///
/// let config = PgConfig::new("postgres://app@localhost/app").schema("orders_events");
/// config.validate()?;
/// assert!(PgConfig::new("postgres://app@localhost/app").schema("Bad-Name").validate().is_err());
/// # Ok::<(), herald_postgres::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgConfig {
    /// The connection URL, `postgres://user:password@host:port/database`,
    /// with any option libpq's URLs take (`sslmode`, …).
    pub url: String,
    /// The schema that holds the store's tables, created if missing. Lower
    /// case ASCII letters, digits and `_`, starting with a letter or `_`, at
    /// most 49 bytes. Several stores (applications, tests) share a database
    /// by using different schemas. Default `herald`.
    pub schema: String,
    /// The most connections the store's pool opens. Default 10.
    pub max_connections: u32,
    /// How long to wait for a connection (from the pool, or a new one)
    /// before an operation fails with a backend error. Default 30 s.
    pub acquire_timeout: Duration,
    /// Whether [`PgStore::connect`](crate::PgStore::connect) applies the
    /// embedded migrations. With `false`, call
    /// [`PgStore::migrate`](crate::PgStore::migrate) yourself (say, from a
    /// deploy step with more privileges). Default `true`.
    pub migrate: bool,
    /// Whether appends notify the other processes on the schema's channel
    /// and the store listens to it, so that
    /// [`watch_head`](herald::store::EventStore::watch_head) is offered.
    /// Default `true`.
    pub notify: bool,
    /// How often the listener behind `watch_head` checks the head without a
    /// notification (after a lost connection, or to see past a rolled-back
    /// append). Default 1 s.
    pub poll_interval: Duration,
    /// How many rows [`read_all`](herald::store::EventStore::read_all)
    /// fetches per round trip unless the query says otherwise. Default 2048.
    pub read_batch_size: usize,
    /// Whether concurrent [`append`](herald::store::EventStore::append)
    /// calls share commits (see [Coalesced appends](crate#coalesced-appends)).
    /// A commit waits for a flush to disk, so appends that each commit alone
    /// are bound by the disk; shared commits multiply the throughput of many
    /// concurrent callers. With `false`, each append is its own transaction.
    /// [`append_in_tx`](crate::PgStore::append_in_tx) never coalesces.
    /// Default `true`.
    pub coalesce: bool,
    /// The most appends one shared commit takes. Each is a subtransaction,
    /// and PostgreSQL keeps up to 64 of a transaction's subtransactions in
    /// shared memory; more would slow down every snapshot taken meanwhile.
    /// Default 64.
    pub coalesce_max_appends: usize,
    /// How many shared commits may be in flight at once, each on a
    /// connection of its own; appends gather into the next group while they
    /// commit. Default 1: on the development machine (2 cores, shared) one
    /// and two groups in flight measured alike within the noise (each ahead
    /// in some runs) and four were behind in every run; one group makes the
    /// biggest groups, which cost the least CPU per event. With more cores,
    /// a second group can overlap one group's flush with the next one's
    /// work (see [Coalesced appends](crate#coalesced-appends)).
    pub coalesce_groups: usize,
    /// How long dead letters are kept after their last failure: older ones
    /// are removed when the store connects and, at most once a minute, when
    /// a dead letter is recorded (see
    /// [`PgStore::purge_dead_letters`](crate::PgStore::purge_dead_letters)
    /// to remove them on demand). When set, at least one second. Default:
    /// `None` (kept until removed).
    pub dead_letter_retention: Option<Duration>,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            url: "postgres://localhost/postgres".to_owned(),
            schema: "herald".to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
            migrate: true,
            notify: true,
            poll_interval: Duration::from_secs(1),
            read_batch_size: 2048,
            coalesce: true,
            coalesce_max_appends: 64,
            coalesce_groups: 1,
            dead_letter_retention: None,
        }
    }
}

impl PgConfig {
    /// The defaults, with this connection URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Uses this schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Opens at most this many connections.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Waits at most this long for a connection.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Applies migrations on connect, or not.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Notifies and listens for new events, or not.
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Checks the head this often without a notification.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Fetches this many rows per round trip when reading the global log.
    pub fn read_batch_size(mut self, size: usize) -> Self {
        self.read_batch_size = size;
        self
    }

    /// Coalesces concurrent appends into shared commits, or not.
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// Puts at most this many appends in one shared commit.
    pub fn coalesce_max_appends(mut self, max: usize) -> Self {
        self.coalesce_max_appends = max;
        self
    }

    /// Lets at most this many shared commits be in flight at once.
    pub fn coalesce_groups(mut self, groups: usize) -> Self {
        self.coalesce_groups = groups;
        self
    }

    /// Removes dead letters this long after their last failure.
    ///
    /// ```
    /// use std::time::Duration;
    /// use herald_postgres::PgConfig;
    ///
    /// let config = PgConfig::new("postgres://localhost/app")
    ///     .dead_letter_retention(Duration::from_secs(14 * 24 * 60 * 60));
    /// assert!(config.validate().is_ok());
    /// ```
    pub fn dead_letter_retention(mut self, retention: Duration) -> Self {
        self.dead_letter_retention = Some(retention);
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.url.is_empty() {
            return Err(ConfigError::EmptyUrl);
        }
        validate_schema(&self.schema)?;
        if self.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if self.acquire_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration {
                field: "acquire_timeout",
            });
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::ZeroDuration {
                field: "poll_interval",
            });
        }
        if self.read_batch_size == 0 {
            return Err(ConfigError::ZeroBatchSize);
        }
        if self.coalesce_max_appends == 0 {
            return Err(ConfigError::ZeroLimit {
                field: "coalesce_max_appends",
            });
        }
        if self.coalesce_groups == 0 {
            return Err(ConfigError::ZeroLimit {
                field: "coalesce_groups",
            });
        }
        if let Some(retention) = self.dead_letter_retention {
            if retention < MIN_DEAD_LETTER_RETENTION
                || i64::try_from(retention.as_micros()).is_err()
            {
                return Err(ConfigError::DeadLetterRetention(retention));
            }
        }
        Ok(())
    }
}

fn validate_schema(schema: &str) -> Result<(), ConfigError> {
    let invalid = |reason: &'static str| ConfigError::InvalidSchema {
        schema: schema.to_owned(),
        reason,
    };
    let first = schema
        .bytes()
        .next()
        .ok_or_else(|| invalid("it is empty"))?;
    if schema.len() > MAX_SCHEMA_LEN {
        return Err(invalid("it is longer than 49 bytes"));
    }
    if !(first.is_ascii_lowercase() || first == b'_') {
        return Err(invalid("it must start with a lower case letter or '_'"));
    }
    if !schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            "it may only hold lower case ASCII letters, digits and '_'",
        ));
    }
    if schema.starts_with("pg_") {
        return Err(invalid(
            "names starting with pg_ are reserved by PostgreSQL",
        ));
    }
    Ok(())
}

/// A [`PgConfig`] field that is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL is empty.
    #[error("invalid postgres config: the url is empty")]
    EmptyUrl,
    /// The URL does not parse.
    #[error("invalid postgres config: the url does not parse: {reason}")]
    InvalidUrl {
        /// What the parser said.
        reason: String,
    },
    /// The schema name breaks the rules of [`PgConfig::schema`].
    #[error("invalid postgres config: schema name {schema:?}: {reason}")]
    InvalidSchema {
        /// The schema name.
        schema: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `max_connections` is 0.
    #[error("invalid postgres config: max_connections is 0, the store needs at least 1")]
    NoConnections,
    /// A duration that must be positive is zero.
    #[error("invalid postgres config: {field} is zero")]
    ZeroDuration {
        /// The field.
        field: &'static str,
    },
    /// `read_batch_size` is 0.
    #[error("invalid postgres config: read_batch_size is 0")]
    ZeroBatchSize,
    /// A limit that must be at least 1 is 0.
    #[error("invalid postgres config: {field} is 0, it must be at least 1")]
    ZeroLimit {
        /// The field.
        field: &'static str,
    },
    /// `dead_letter_retention` is under a second (more likely a unit
    /// mistake than a wish) or too long to express.
    #[error(
        "invalid postgres config: dead_letter_retention of {0:?} is out of range (one second to 292,000 years)"
    )]
    DeadLetterRetention(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(PgConfig::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_fields_with_typed_errors() {
        let base = PgConfig::new("postgres://localhost/x");
        assert_eq!(PgConfig::new("").validate(), Err(ConfigError::EmptyUrl));
        for bad in ["", "Upper", "1abc", "a-b", "pg_x", &"a".repeat(50)] {
            assert!(
                matches!(
                    base.clone().schema(bad).validate(),
                    Err(ConfigError::InvalidSchema { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(base.clone().schema("_ok_1").validate(), Ok(()));
        assert_eq!(
            base.clone().max_connections(0).validate(),
            Err(ConfigError::NoConnections)
        );
        assert_eq!(
            base.clone().poll_interval(Duration::ZERO).validate(),
            Err(ConfigError::ZeroDuration {
                field: "poll_interval"
            })
        );
        assert_eq!(
            base.clone().read_batch_size(0).validate(),
            Err(ConfigError::ZeroBatchSize)
        );
        assert_eq!(
            base.clone().coalesce_max_appends(0).validate(),
            Err(ConfigError::ZeroLimit {
                field: "coalesce_max_appends"
            })
        );
        assert_eq!(
            base.clone().coalesce_groups(0).validate(),
            Err(ConfigError::ZeroLimit {
                field: "coalesce_groups"
            })
        );
        assert_eq!(
            base.clone()
                .dead_letter_retention(Duration::from_millis(999))
                .validate(),
            Err(ConfigError::DeadLetterRetention(Duration::from_millis(999)))
        );
        assert_eq!(
            base.dead_letter_retention(Duration::from_secs(1))
                .validate(),
            Ok(())
        );
    }
}
