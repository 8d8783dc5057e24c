//! Benchmarks of the PostgreSQL store.

fn main() {}
