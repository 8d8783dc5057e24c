//! The orders example: one `order.created` event, several independent
//! subscribers, a flaky one that succeeds on its third attempt, and a broken
//! one whose event ends in the dead letters, is listed, and is retried once
//! the cause is fixed.
//!
//! Run it with `cargo run --example orders`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::{
    Bus, Context, DeadLetterQuery, DeliveryMode, Event, Handler, HandlerError, HandlerResult,
    RecordedEvent, RetryOutcome, RetryPolicy, Subscriber,
};
use serde::{Deserialize, Serialize};

/// The fact the order service publishes.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.created")]
struct OrderCreated {
    order_id: u64,
    customer_email: String,
    total_cents: u64,
}

/// The publisher: it knows nothing of who reacts.
struct OrderService {
    bus: Bus,
    next_id: AtomicU64,
}

impl OrderService {
    async fn create(&self, customer_email: &str, total_cents: u64) -> anyhow::Result<u64> {
        let order_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // ... insert the order row here ...
        let event = self
            .bus
            .publish_event(&OrderCreated {
                order_id,
                customer_email: customer_email.to_owned(),
                total_cents,
            })
            .await?;
        println!(
            "order {order_id} created, published order.created {}",
            event.id()
        );
        Ok(order_id)
    }
}

/// Emails the customer.
#[derive(Default)]
struct NotifyUserOnOrder {
    sent: Mutex<Vec<String>>,
}

impl Handler for NotifyUserOnOrder {
    async fn handle(&self, event: &RecordedEvent, _ctx: &Context) -> HandlerResult {
        let order: OrderCreated = event.decode()?;
        println!(
            "  [notify-user] emailing {} about order {}",
            order.customer_email, order.order_id
        );
        self.sent
            .lock()
            .map_err(|_| HandlerError::retry("mailbox lock poisoned"))?
            .push(order.customer_email);
        Ok(())
    }
}

/// Adds up revenue, in the background.
#[derive(Default)]
struct TrackOrderAnalytics {
    revenue_cents: AtomicU64,
}

impl Handler for TrackOrderAnalytics {
    async fn handle(&self, event: &RecordedEvent, _ctx: &Context) -> HandlerResult {
        let order: OrderCreated = event.decode()?;
        self.revenue_cents
            .fetch_add(order.total_cents, Ordering::Relaxed);
        println!("  [track-analytics] +{} cents", order.total_cents);
        Ok(())
    }
}

/// Syncs the warehouse, whose API times out twice before it answers.
#[derive(Default)]
struct SyncWarehouse {
    attempts: AtomicU64,
}

impl Handler for SyncWarehouse {
    async fn handle(&self, _event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if ctx.attempt() < 3 {
            println!(
                "  [sync-warehouse] attempt {} failed: gateway timeout",
                ctx.attempt()
            );
            return Err(HandlerError::retry("warehouse gateway timeout"));
        }
        println!("  [sync-warehouse] attempt {} succeeded", ctx.attempt());
        Ok(())
    }
}

/// Awards loyalty points through a service that is down until someone fixes
/// it.
#[derive(Default)]
struct AwardLoyaltyPoints {
    service_up: AtomicBool,
}

impl Handler for AwardLoyaltyPoints {
    async fn handle(&self, _event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        if !self.service_up.load(Ordering::Relaxed) {
            println!(
                "  [award-loyalty] attempt {} failed: service unreachable",
                ctx.attempt()
            );
            return Err(HandlerError::retry("loyalty service unreachable"));
        }
        println!(
            "  [award-loyalty] points awarded on attempt {}",
            ctx.attempt()
        );
        Ok(())
    }
}

/// What the example observed, for its test.
#[derive(Debug)]
struct Report {
    emails_sent: usize,
    revenue_cents: u64,
    warehouse_attempts: u64,
    dead_letters_before_retry: usize,
    dead_letter_attempts: u32,
    retry_outcome: RetryOutcome,
    dead_letters_after_retry: usize,
}

impl Report {
    /// Fails unless everything happened as the example describes.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.emails_sent == 1,
            "expected 1 email, sent {}",
            self.emails_sent
        );
        anyhow::ensure!(
            self.revenue_cents == 4_200,
            "revenue {}",
            self.revenue_cents
        );
        anyhow::ensure!(
            self.warehouse_attempts == 3,
            "warehouse sync took {} attempts, expected 3",
            self.warehouse_attempts
        );
        anyhow::ensure!(
            self.dead_letters_before_retry == 1 && self.dead_letter_attempts == 3,
            "expected one dead letter after 3 attempts"
        );
        anyhow::ensure!(
            self.retry_outcome == RetryOutcome::Handled && self.dead_letters_after_retry == 0,
            "the retried dead letter was not handled: {:?}",
            self.retry_outcome
        );
        Ok(())
    }
}

async fn run() -> anyhow::Result<Report> {
    let bus = Bus::new();
    let notify = Arc::new(NotifyUserOnOrder::default());
    let analytics = Arc::new(TrackOrderAnalytics::default());
    let warehouse = Arc::new(SyncWarehouse::default());
    let loyalty = Arc::new(AwardLoyaltyPoints::default());
    let quick_retries =
        RetryPolicy::exponential(Duration::from_millis(5), Duration::from_millis(50))
            .max_attempts(3);

    bus.subscribe(Subscriber::new("notify-user", Arc::clone(&notify)).topic("order.created"))?;
    bus.subscribe(
        Subscriber::new("track-analytics", Arc::clone(&analytics))
            .topic("order.*")
            .mode(DeliveryMode::Async),
    )?;
    bus.subscribe(
        Subscriber::new("sync-warehouse", Arc::clone(&warehouse))
            .topic("order.created")
            .retry(quick_retries.clone()),
    )?;
    bus.subscribe(
        Subscriber::new("award-loyalty", Arc::clone(&loyalty))
            .topic("order.created")
            .retry(quick_retries),
    )?;

    let orders = OrderService {
        bus: bus.clone(),
        next_id: AtomicU64::new(1001),
    };
    orders.create("ada@example.com", 4_200).await?;

    let letters = bus.dead_letters(&DeadLetterQuery::default()).await?;
    println!("\ndead letters: {}", letters.len());
    for letter in &letters {
        println!(
            "  {} for {} on {} after {} attempts: {}",
            letter.id,
            letter.subscriber,
            letter.event.event_type(),
            letter.attempts,
            letter.reason
        );
    }
    let letter = letters
        .first()
        .ok_or_else(|| anyhow::anyhow!("expected a dead letter from award-loyalty"))?;

    println!("\nthe loyalty service is back; retrying the dead letter");
    loyalty.service_up.store(true, Ordering::Relaxed);
    let retry_outcome = bus.retry_dead_letter(letter.id).await?;
    println!("retry: {retry_outcome:?}");
    let remaining = bus.dead_letters(&DeadLetterQuery::default()).await?.len();
    println!("dead letters now: {remaining}");

    bus.shutdown().await;
    let report = Report {
        emails_sent: notify.sent.lock().map(|s| s.len()).unwrap_or(0),
        revenue_cents: analytics.revenue_cents.load(Ordering::Relaxed),
        warehouse_attempts: warehouse.attempts.load(Ordering::Relaxed),
        dead_letters_before_retry: letters.len(),
        dead_letter_attempts: letter.attempts,
        retry_outcome,
        dead_letters_after_retry: remaining,
    };
    println!("\n{report:#?}");
    Ok(report)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    run().await?.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_example_runs_as_described() {
        let report = run().await.unwrap();
        report.check().unwrap();
    }
}
