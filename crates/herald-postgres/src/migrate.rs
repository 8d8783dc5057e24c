//! The embedded migrations and their runner.
//!
//! Migrations are SQL files in `migrations/NNNN_name.sql`, compiled in. The
//! runner applies the missing ones in one transaction, under an advisory lock
//! per schema (so that processes starting together do not race), with
//! `search_path` set to the schema for that transaction only, and records
//! each in the schema's `herald_migrations` table with a checksum of its
//! text. A recorded migration whose text changed, or one this crate does not
//! know (a newer release migrated the schema), stops the runner with
//! [`ConnectError::SchemaMismatch`].

use sqlx::{Connection, PgPool, Row};

use crate::error::ConnectError;

/// One embedded migration.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../migrations/0001_events.sql"),
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
        name: "append_group",
        sql: include_str!("../migrations/0005_append_group.sql"),
    },
    Migration {
        version: 6,
        name: "inbox",
        sql: include_str!("../migrations/0006_inbox.sql"),
    },
    Migration {
        version: 7,
        name: "leases",
        sql: include_str!("../migrations/0007_leases.sql"),
    },
    Migration {
        version: 8,
        name: "subscriber_states",
        sql: include_str!("../migrations/0008_subscriber_states.sql"),
    },
    Migration {
        version: 9,
        name: "scheduled_retries",
        sql: include_str!("../migrations/0009_scheduled_retries.sql"),
    },
];

/// FNV-1a, 64 bits: a checksum that stays the same across Rust releases.
fn checksum(text: &str) -> i64 {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as i64
}

/// Applies the missing migrations to `schema` (validated, unquoted).
pub(crate) async fn run(pool: &PgPool, schema: &str) -> Result<(), ConnectError> {
    let mut conn = pool.acquire().await.map_err(ConnectError::Connect)?;
    let mut tx = conn.begin().await.map_err(ConnectError::Connect)?;
    let setup = |source| ConnectError::Migration {
        schema: schema.to_owned(),
        version: 0,
        name: "herald_migrations",
        source,
    };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("herald-postgres migrations of {schema}"))
        .execute(&mut *tx)
        .await
        .map_err(setup)?;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         SET LOCAL search_path TO \"{schema}\";
         CREATE TABLE IF NOT EXISTS herald_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             checksum bigint NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .execute(&mut *tx)
    .await
    .map_err(setup)?;
    let applied =
        sqlx::query("SELECT version, name, checksum FROM herald_migrations ORDER BY version")
            .fetch_all(&mut *tx)
            .await
            .map_err(setup)?;
    let mismatch = |detail: String| ConnectError::SchemaMismatch {
        schema: schema.to_owned(),
        detail,
    };
    let mut done = Vec::with_capacity(applied.len());
    for row in &applied {
        let version: i32 = row.get("version");
        let sum: i64 = row.get("checksum");
        let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
            let name: String = row.get("name");
            return Err(mismatch(format!(
                "migration {version} ({name}) is applied but unknown to this release; \
                 a newer herald-postgres migrated the schema"
            )));
        };
        if checksum(known.sql) != sum {
            return Err(mismatch(format!(
                "migration {version} ({}) was applied with other content",
                known.name
            )));
        }
        done.push(version);
    }
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let failed = |source| ConnectError::Migration {
            schema: schema.to_owned(),
            version: migration.version,
            name: migration.name,
            source,
        };
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query("INSERT INTO herald_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(migration.version)
            .bind(migration.name)
            .bind(checksum(migration.sql))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tracing::info!(
            schema,
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    tx.commit().await.map_err(setup)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Numbers may have gaps: migrations written at the same time reserve
    // their numbers, and the runner applies whichever are missing.
    #[test]
    fn migrations_are_numbered_in_increasing_order_from_one() {
        assert_eq!(MIGRATIONS[0].version, 1);
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "{}", pair[1].name);
        }
    }

    #[test]
    fn checksum_is_fnv1a() {
        assert_eq!(checksum(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_ne!(checksum("a"), checksum("b"));
    }
}
