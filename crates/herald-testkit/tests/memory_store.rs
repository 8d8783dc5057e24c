//! The memory store passes the store conformance suite.

use herald::store::MemoryStore;

async fn new_store() -> MemoryStore {
    MemoryStore::new()
}

herald_testkit::store_conformance!(new_store);
