//! What the three services of the microservices example share: how they
//! reach PostgreSQL and the broker.
//!
//! See the README next to this crate for how to run them.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald::transport::Transport;
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_kafka::{KafkaConfig, KafkaTransport};
use herald_nats::{NatsConfig, NatsTransport};
use herald_postgres::{PgConfig, PgStore};

/// Errors of the example's programs.
pub type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// Which broker carries the events between the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Broker {
    /// RabbitMQ, at `HERALD_AMQP_URL`.
    Amqp,
    /// NATS with JetStream, at `HERALD_NATS_URL`.
    Nats,
    /// Kafka (a Kafka-protocol broker), at `HERALD_KAFKA_BROKERS`.
    Kafka,
}

/// The settings every service takes.
#[derive(Clone, Debug, clap::Args)]
pub struct Common {
    /// The broker between the services.
    #[arg(long, value_enum, default_value = "amqp")]
    pub broker: Broker,
    /// Names on the broker start with this, so that several runs can share
    /// one broker.
    #[arg(long, default_value = "shop")]
    pub prefix: String,
    /// The PostgreSQL database of the orders service and of the
    /// subscribers' inbox ledger.
    #[arg(
        long,
        env = "HERALD_EXAMPLE_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres: String,
    /// The PostgreSQL schema the example's tables live in.
    #[arg(long, default_value = "shop")]
    pub schema: String,
}

impl Common {
    /// Connects to the chosen broker.
    pub async fn transport(&self) -> Result<Arc<dyn Transport>> {
        Ok(match self.broker {
            Broker::Amqp => {
                let url = std::env::var("HERALD_AMQP_URL")
                    .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
                Arc::new(AmqpTransport::connect(AmqpConfig::new(url).prefix(&self.prefix)).await?)
            }
            Broker::Nats => {
                let url = std::env::var("HERALD_NATS_URL")
                    .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
                Arc::new(NatsTransport::connect(NatsConfig::new(url).prefix(&self.prefix)).await?)
            }
            Broker::Kafka => {
                let brokers = std::env::var("HERALD_KAFKA_BROKERS")
                    .unwrap_or_else(|_| "127.0.0.1:19092".to_owned());
                // A topic per event type (the default mapping); a consumer
                // finds a topic made after it subscribed at its next
                // metadata refresh, made short here so a demo run is quick.
                let config = KafkaConfig::new(brokers)
                    .prefix(&self.prefix)
                    .metadata_refresh(std::time::Duration::from_millis(500));
                Arc::new(KafkaTransport::connect(config).await?)
            }
        })
    }

    /// Opens the event store (creating its tables on first use).
    pub async fn store(&self) -> Result<Arc<PgStore>> {
        Ok(Arc::new(
            PgStore::connect(PgConfig::new(&self.postgres).schema(&self.schema)).await?,
        ))
    }
}

/// Logs to stderr, at the level `RUST_LOG` gives (warnings by default), so
/// that stdout carries only what the service says it did.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Counts what a service settled, so that `--expect N` can end a run.
#[derive(Default)]
pub struct Progress {
    count: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Progress {
    /// One more settled.
    pub fn tick(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// How many were settled.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until `expect` were settled, or for Ctrl-C when `expect` is 0.
    pub async fn wait(&self, expect: u64) -> Result<()> {
        if expect == 0 {
            tokio::signal::ctrl_c().await?;
            return Ok(());
        }
        // A tick between the check and the wait leaves a permit, so none is
        // missed.
        while self.count() < expect {
            self.changed.notified().await;
        }
        Ok(())
    }
}
