//! The PostgreSQL store passes the store, durable-subscriber, dead-letter
//! and lease conformance suites, each scenario in a schema of its own.

mod support;

use std::sync::Arc;

use herald_postgres::PgStore;

herald_testkit::store_conformance!(support::store);

async fn shared_store() -> Arc<PgStore> {
    Arc::new(support::store().await)
}

herald_testkit::durable_conformance!(shared_store);

herald_testkit::dead_letter_conformance!(support::store);

herald_testkit::lease_conformance!(support::store);

/// The same store scenarios with each append its own transaction
/// ([`PgConfig::coalesce`](herald_postgres::PgConfig::coalesce) off), the
/// path that coalesced appends also fall back on.
mod separate_commits {
    use herald_postgres::PgStore;

    use super::support;

    async fn store() -> PgStore {
        support::store_with(support::config().coalesce(false)).await
    }

    herald_testkit::store_conformance!(store);
}
