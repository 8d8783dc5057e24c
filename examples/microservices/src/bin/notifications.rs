//! The notifications service: emails customers about new orders. It
//! consumes `order.created` from the broker as the consumer group
//! `notifications`, retries a busy mail server with backoff, skips events
//! it already handled (its inbox ledger in PostgreSQL), and leaves the
//! orders it must not email about in the broker's dead letters.
//!
//! `cargo run -p herald-microservices-example --bin notifications -- --expect 10`

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use herald::{
    Bus, DeadLetterQuery, DeliveryMode, HandlerError, RecordedEvent, RetryPolicy, Subscriber,
    handler_fn,
};
use herald_microservices_example::{Common, Progress, Result, init_logging};

/// Emails customers about their orders.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Exit once this many orders were emailed about or dead-lettered (0:
    /// run until Ctrl-C).
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
    let ledger = args.common.store().await?;
    // Orders settled (emailed about, or refused); the ledger keeps a
    // redelivered event from counting twice.
    let settled = Arc::new(Progress::default());
    let handler = {
        let settled = Arc::clone(&settled);
        handler_fn(move |event: RecordedEvent, ctx| {
            let settled = Arc::clone(&settled);
            async move {
                let order = event.data().to_value();
                let id = order["order_id"].as_u64().unwrap_or_default();
                if order["total_cents"].as_u64() == Some(0) {
                    settled.tick();
                    return Err(HandlerError::dead_letter(format!(
                        "order {id} has a zero total: refusing to send an invoice for nothing"
                    )));
                }
                if id % 4 == 0 && ctx.attempt() == 1 {
                    return Err(HandlerError::retry("mail server busy (421)"));
                }
                println!(
                    "emailed the customer of order {id} (attempt {})",
                    ctx.attempt()
                );
                settled.tick();
                Ok(())
            }
        })
    };
    bus.subscribe(
        Subscriber::new("notifications", handler)
            .topic("order.created")
            .mode(DeliveryMode::Broker)
            .retry(RetryPolicy::exponential(
                Duration::from_millis(100),
                Duration::from_secs(1),
            ))
            .idempotent(ledger),
    )?;
    bus.ready("notifications").await?;
    println!("ready");

    settled.wait(args.expect).await?;
    // Waits for the delivery in hand to be settled with the broker (the
    // last dead letter recorded).
    bus.shutdown().await;
    for letter in bus
        .dead_letters(&DeadLetterQuery::default().subscriber("notifications"))
        .await?
    {
        println!(
            "dead letter: order {} after {} attempt(s): {}",
            letter.event.data().to_value()["order_id"],
            letter.attempts,
            letter.reason
        );
    }
    Ok(())
}
