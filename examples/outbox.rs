//! The outbox: an order row and its `order.created` event commit together,
//! or neither does.
//!
//! The order service inserts the row and appends the event in one
//! PostgreSQL transaction (`PgStore::append_in_tx`). When the transaction
//! commits, both are there; when it rolls back (here, because the order id
//! is taken), neither is, so no subscriber ever hears of an order that does
//! not exist.
//!
//! Run it with `cargo run -p herald-postgres --example outbox` against a
//! PostgreSQL given by `HERALD_EXAMPLE_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). It works in a schema of its
//! own, which it drops at the end.

use std::error::Error;

use herald::NewEvent;
use herald::store::{EventStore, ExpectedVersion, ReadStream, StreamName};
use herald_postgres::{PgConfig, PgStore};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// What happened, for the test.
#[derive(Debug, PartialEq)]
struct Report {
    committed_rows: i64,
    committed_events: usize,
    rejected: bool,
    rows_after_rejection: i64,
    events_after_rejection: usize,
}

/// Places an order: the row and its event in one transaction.
async fn place_order(store: &PgStore, schema: &str, order_id: i64, total_cents: i64) -> Result<()> {
    let mut tx = store.pool().begin().await?;
    let stream = StreamName::new(format!("order-{order_id}"))?;
    // The event first, then the row: if the row fails, the event must not
    // survive either.
    store
        .append_in_tx(
            &mut tx,
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::new(
                "order.created",
                json!({"order_id": order_id, "total_cents": total_cents}),
            )],
        )
        .await?;
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".orders (id, total_cents) VALUES ($1, $2)"
    ))
    .bind(order_id)
    .bind(total_cents)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn count_rows(store: &PgStore, schema: &str) -> Result<i64> {
    let (n,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM \"{schema}\".orders"))
        .fetch_one(store.pool())
        .await?;
    Ok(n)
}

async fn count_events(store: &PgStore) -> Result<usize> {
    Ok(store
        .read_stream(&StreamName::new("order-1")?, ReadStream::forward())
        .await?
        .len())
}

async fn run(url: &str, schema: &str) -> Result<Report> {
    let store = PgStore::connect(PgConfig::new(url).schema(schema)).await?;
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".orders (id BIGINT PRIMARY KEY, total_cents BIGINT NOT NULL)"
    ))
    .execute(store.pool())
    .await?;

    place_order(&store, schema, 1, 4_200).await?;
    let committed_rows = count_rows(&store, schema).await?;
    let committed_events = count_events(&store).await?;
    println!("order 1 placed: {committed_rows} row, {committed_events} event in stream order-1");

    // The same order id again: the row fails, and the event appended in the
    // same transaction goes with it.
    let rejected = match place_order(&store, schema, 1, 99).await {
        Ok(()) => false,
        Err(err) => {
            println!("order 1 placed again: rejected ({err})");
            true
        }
    };
    let rows_after_rejection = count_rows(&store, schema).await?;
    let events_after_rejection = count_events(&store).await?;
    println!(
        "after the rejection: {rows_after_rejection} row, {events_after_rejection} event in stream order-1"
    );
    Ok(Report {
        committed_rows,
        committed_events,
        rejected,
        rows_after_rejection,
        events_after_rejection,
    })
}

async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    let pool = sqlx::PgPool::connect(url).await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&pool)
        .await?;
    Ok(())
}

/// Runs the example in a fresh schema and drops it afterwards.
async fn example() -> Result<Report> {
    let url = std::env::var("HERALD_EXAMPLE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    // Unique per run (the id's random tail), within the store's limit on
    // schema names.
    let id = herald::EventId::new().as_uuid().simple().to_string();
    let schema = format!("herald_outbox_{}", &id[id.len() - 12..]);
    let report = run(&url, &schema).await;
    let dropped = drop_schema(&url, &schema).await;
    let report = report.map_err(|e| {
        format!("the outbox example failed (PostgreSQL at HERALD_EXAMPLE_POSTGRES_URL): {e}")
    })?;
    dropped?;
    Ok(report)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let report = example().await?;
    let expected = Report {
        committed_rows: 1,
        committed_events: 1,
        rejected: true,
        rows_after_rejection: 1,
        events_after_rejection: 1,
    };
    if report != expected {
        return Err(format!("unexpected outcome: {report:?}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_row_and_the_event_commit_together_or_not_at_all() {
        let report = example().await.unwrap();
        assert_eq!(report.committed_rows, 1);
        assert_eq!(report.committed_events, 1);
        assert!(report.rejected);
        assert_eq!(report.rows_after_rejection, 1);
        assert_eq!(
            report.events_after_rejection, 1,
            "the rolled-back event is not stored"
        );
    }
}
