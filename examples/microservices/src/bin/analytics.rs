//! The analytics service: sums the revenue of every order event it
//! receives from the broker as the consumer group `analytics`.
//!
//! `cargo run -p herald-microservices-example --bin analytics -- --expect 10`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use herald::{Bus, DeliveryMode, RecordedEvent, Subscriber, handler_fn};
use herald_microservices_example::{Common, Progress, Result, init_logging};

/// Sums order revenue.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Exit once this many order events were counted (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    expect: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let args = Args::parse();
    let bus = Bus::builder()
        .transport(args.common.transport().await?)
        .build();
    // A real service would keep the revenue in its own database, in the
    // inbox's transaction; counting in memory keeps the example short.
    let revenue = Arc::new(AtomicU64::new(0));
    let counted = Arc::new(Progress::default());
    let handler = {
        let (revenue, counted) = (Arc::clone(&revenue), Arc::clone(&counted));
        handler_fn(move |event: RecordedEvent, _ctx| {
            let (revenue, counted) = (Arc::clone(&revenue), Arc::clone(&counted));
            async move {
                let cents = event.data().to_value()["total_cents"]
                    .as_u64()
                    .unwrap_or_default();
                revenue.fetch_add(cents, Ordering::SeqCst);
                counted.tick();
                Ok(())
            }
        })
    };
    // The inbox ledger in PostgreSQL: an event the broker delivers again is
    // not counted twice.
    bus.subscribe(
        Subscriber::new("analytics", handler)
            .topic("order.#")
            .mode(DeliveryMode::Broker)
            .idempotent(args.common.store().await?),
    )?;
    bus.ready("analytics").await?;
    println!("ready");
    counted.wait(args.expect).await?;
    bus.shutdown().await;
    println!(
        "revenue: {} cents over {} orders",
        revenue.load(Ordering::SeqCst),
        counted.count()
    );
    Ok(())
}
