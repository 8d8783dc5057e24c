//! The orders service: places orders, each row and its `order.created`
//! event in one PostgreSQL transaction (the outbox), and runs the relay
//! that forwards committed events to the broker.
//!
//! `cargo run -p herald-microservices-example --bin orders -- --orders 10`

use std::sync::Arc;

use clap::Parser;
use herald::NewEvent;
use herald::relay::Relay;
use herald::store::{EventStore, ExpectedVersion, LeaseStore, StreamName};
use herald_microservices_example::{Common, Result, init_logging};
use herald_postgres::PgStore;
use serde_json::json;

/// Places orders and forwards their events to the broker.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// How many orders to place.
    #[arg(long, default_value_t = 10)]
    orders: u32,
    /// Keep relaying after the orders were placed, until Ctrl-C.
    #[arg(long)]
    follow: bool,
}

/// The order's total: every third order is free, which the notifications
/// service refuses to email about (a dead letter to look at).
fn total_cents(order: u32) -> u64 {
    if order % 3 == 0 {
        0
    } else {
        u64::from(order) * 1_000
    }
}

/// One order: its row and its event commit together, or neither does.
async fn place(store: &PgStore, schema: &str, order: u32) -> Result<()> {
    let mut tx = store.pool().begin().await?;
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".orders (id, total_cents) VALUES ($1, $2)"
    ))
    .bind(i64::from(order))
    .bind(i64::try_from(total_cents(order))?)
    .execute(&mut *tx)
    .await?;
    store
        .append_in_tx(
            &mut tx,
            &StreamName::new(format!("order-{order}"))?,
            ExpectedVersion::NoStream,
            vec![NewEvent::new(
                "order.created",
                json!({"order_id": order, "total_cents": total_cents(order)}),
            )],
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    init_logging();
    let args = Args::parse();
    let store = args.common.store().await?;
    let schema = &args.common.schema;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".orders (id BIGINT PRIMARY KEY, total_cents BIGINT NOT NULL)"
    ))
    .execute(store.pool())
    .await?;

    // The relay reads committed events only, so it may start before the
    // orders are placed; with a lease, one relay of many is active.
    let relay = Relay::builder(
        "orders-outbox",
        Arc::clone(&store),
        args.common.transport().await?,
    )
    .lease_store(Arc::clone(&store) as Arc<dyn LeaseStore>)
    .spawn()?;

    for order in 1..=args.orders {
        place(&store, schema, order).await?;
        println!("placed order {order} ({} cents)", total_cents(order));
    }
    let head = store.head().await?;
    relay.wait_forwarded(head).await;
    println!("forwarded every event up to position {head} to the broker");
    if args.follow {
        tokio::signal::ctrl_c().await?;
    }
    relay.stop().await;
    Ok(())
}
