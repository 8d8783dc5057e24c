//! Conformance suites that every Herald backend passes.
//!
//! A backend proves it keeps the contract of a core trait by running the
//! suite for it: the scenarios are plain `pub async fn`s named as sentences,
//! and a macro turns the list into one named test each, so a backend's
//! `tests/conformance.rs` is one macro call:
//!
//! ```text
//! async fn new_store() -> MyStore { MyStore::connect(...).await.unwrap() }
//!
//! herald_testkit::store_conformance!(new_store);
//! ```
//!
//! The factory is called once per scenario and must return an empty store
//! of the scenario's own (a fresh schema, file or instance), so that the
//! scenarios run in parallel. A scenario that needs a service that is not
//! reachable fails; it never skips.

pub mod dead_letters;
pub mod durable;
pub mod leases;
pub mod process;
pub mod store;
pub mod transports;
