//! Integration tests of the in-process bus.

mod broker;
mod competing;
mod dead_letters;
mod delivery;
mod failures;
mod middleware;
mod publish;
mod recorder;
mod support;
mod sync_handlers;
