//! Test stores, each in a schema of its own.
//!
//! Schemas are named `herald_test_<unix seconds>_<random>` and left behind
//! (dropping one when its store goes away would need a task at drop time,
//! which a test runtime that is shutting down may never run). Each test
//! process drops, once, the test schemas older than a quarter of an hour (a
//! test process runs for seconds).

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_postgres::{PgConfig, PgStore};
use sqlx::Connection;
use tokio::sync::OnceCell;

/// The variable that points the tests at PostgreSQL.
pub const URL_VAR: &str = "HERALD_TEST_POSTGRES_URL";

/// The database the tests use.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn unreachable(error: impl std::fmt::Display) -> ! {
    panic!(
        "PostgreSQL is not reachable at {} (set {URL_VAR} to a reachable database): {error}",
        url()
    )
}

/// A fresh schema name.
pub fn schema() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("herald_test_{secs}_{:08x}", rand::random::<u32>())
}

/// Drops test (and interrupted bench) schemas older than a quarter of an
/// hour, once per process.
async fn clean_up_old_schemas() {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let mut conn = sqlx::PgConnection::connect(&url())
            .await
            .unwrap_or_else(|e| unreachable(e));
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace \
             WHERE nspname LIKE 'herald\\_test\\_%' OR nspname LIKE 'herald\\_bench\\_%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| unreachable(e));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let old: Vec<String> = names
            .into_iter()
            .filter(|name| {
                name.split('_')
                    .nth(2)
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|created| created + 15 * 60 < now)
            })
            .map(|name| format!("\"{name}\""))
            .collect();
        for chunk in old.chunks(50) {
            // Another process may drop some at the same time: ignore errors.
            let _ = sqlx::query(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                chunk.join(", ")
            ))
            .execute(&mut conn)
            .await;
        }
    })
    .await;
}

/// The test config for a fresh schema.
pub fn config() -> PgConfig {
    PgConfig::new(url())
        .schema(schema())
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(20))
        .poll_interval(Duration::from_millis(200))
}

/// A store in a fresh schema.
pub async fn store() -> PgStore {
    store_with(config()).await
}

/// A store with this config.
pub async fn store_with(config: PgConfig) -> PgStore {
    clean_up_old_schemas().await;
    PgStore::connect(config)
        .await
        .unwrap_or_else(|e| unreachable(e))
}
