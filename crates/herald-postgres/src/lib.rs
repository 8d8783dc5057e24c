//! The PostgreSQL event store for Herald.
#![warn(missing_docs)]

mod config;
mod error;
mod listener;
mod migrate;
mod sql;
mod store;
mod watermark;

pub use crate::config::{ConfigError, MAX_SCHEMA_LEN, PgConfig};
pub use crate::error::{ConnectError, DatabaseError};
pub use crate::store::PgStore;
