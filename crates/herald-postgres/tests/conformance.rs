//! The PostgreSQL store passes the store conformance suite, each scenario in
//! a schema of its own.

mod support;

herald_testkit::store_conformance!(support::store);
