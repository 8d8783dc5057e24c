//! The SQLite store passes the store, durable-subscriber and dead-letter
//! conformance suites, each scenario in a database file of its own.

mod common;

use std::sync::Arc;

use common::TempStore;

async fn new_store() -> TempStore {
    TempStore::with(|config| config).await
}

herald_testkit::store_conformance!(new_store);

async fn new_shared_store() -> Arc<TempStore> {
    Arc::new(new_store().await)
}

herald_testkit::durable_conformance!(new_shared_store);

herald_testkit::dead_letter_conformance!(new_store);
