//! The schema: embedded, versioned migrations, applied on open.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error::OpenError;

/// One schema change.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in order. A database records the ones applied in
/// `herald_migrations`.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "checkpoints",
        sql: include_str!("../migrations/0002_checkpoints.sql"),
    },
    Migration {
        version: 3,
        name: "dead_letters",
        sql: include_str!("../migrations/0003_dead_letters.sql"),
    },
    Migration {
        version: 4,
        name: "ledger",
        sql: include_str!("../migrations/0004_ledger.sql"),
    },
    Migration {
        version: 5,
        name: "subscriber_states",
        sql: include_str!("../migrations/0005_subscriber_states.sql"),
    },
    Migration {
        version: 6,
        name: "scheduled_retries",
        sql: include_str!("../migrations/0006_scheduled_retries.sql"),
    },
];

/// The schema version this crate writes.
pub(crate) const LATEST: u32 = 6;

const CREATE_MIGRATIONS_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS herald_migrations (
        version    INTEGER PRIMARY KEY NOT NULL,
        name       TEXT    NOT NULL,
        -- microseconds since the Unix epoch
        applied_at INTEGER NOT NULL
    )";

/// Brings the database to [`LATEST`], in one transaction that holds the
/// write lock, so that processes opening one file at once do not race.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), OpenError> {
    let database = |source: rusqlite::Error| OpenError::Database {
        path: path.to_owned(),
        source: Box::new(source),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(database)?;
    tx.execute_batch(CREATE_MIGRATIONS_TABLE)
        .map_err(database)?;
    let current: i64 = tx
        .query_row("SELECT max(version) FROM herald_migrations", [], |row| {
            row.get::<_, Option<i64>>(0)
        })
        .optional()
        .map_err(database)?
        .flatten()
        .unwrap_or(0);
    if current > i64::from(LATEST) {
        return Err(OpenError::NewerSchema {
            path: path.to_owned(),
            found: current,
            supported: LATEST,
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| i64::from(m.version) > current) {
        let failed = |source: rusqlite::Error| OpenError::Migration {
            path: path.to_owned(),
            version: migration.version,
            source: Box::new(source),
        };
        tx.execute_batch(migration.sql).map_err(failed)?;
        tx.execute(
            "INSERT INTO herald_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            (
                migration.version,
                migration.name,
                chrono::Utc::now().timestamp_micros(),
            ),
        )
        .map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied herald-sqlite migration"
        );
    }
    tx.commit().map_err(database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_up_to_latest() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST));
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM herald_migrations")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        conn.execute("INSERT INTO herald_migrations VALUES (99, 'future', 0)", [])
            .unwrap();
        let err = migrate(&mut conn, Path::new(":memory:")).unwrap_err();
        assert!(
            matches!(err, OpenError::NewerSchema { found: 99, .. }),
            "{err:?}"
        );
    }
}
