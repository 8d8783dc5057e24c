//! The memory store passes the store conformance suite.

use herald::store::MemoryStore;

async fn new_store() -> MemoryStore {
    MemoryStore::new()
}

herald_testkit::store_conformance!(new_store);

async fn new_shared_store() -> std::sync::Arc<MemoryStore> {
    std::sync::Arc::new(MemoryStore::new())
}

herald_testkit::durable_conformance!(new_shared_store);

async fn new_dead_letter_store() -> herald::MemoryDeadLetterStore {
    herald::MemoryDeadLetterStore::new()
}

herald_testkit::dead_letter_conformance!(new_dead_letter_store);

herald_testkit::lease_conformance!(new_store);
