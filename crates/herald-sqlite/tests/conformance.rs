//! The SQLite store passes the store conformance suite, each scenario in a
//! database file of its own.

mod common;

use common::TempStore;

async fn new_store() -> TempStore {
    TempStore::with(|config| config).await
}

herald_testkit::store_conformance!(new_store);
