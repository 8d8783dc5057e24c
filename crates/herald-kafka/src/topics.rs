//! Creating topics, idempotently, and the clients' settings.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use herald::transport::TransportError;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;

use crate::NAME;
use crate::config::KafkaConfig;

/// How long an admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the topics a transport writes to, once each.
pub(crate) struct Topics {
    admin: AdminClient<DefaultClientContext>,
    partitions: i32,
    replication: i32,
    /// Topics known to exist; a topic lost by the broker (a restarted
    /// in-memory broker) is forgotten when a publish to it fails, and
    /// created again on the next.
    known: Mutex<HashSet<String>>,
}

impl Topics {
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self, TransportError> {
        let admin = base_config(config)
            .create()
            .map_err(|e| TransportError::connection(NAME, e))?;
        Ok(Self {
            admin,
            partitions: config.partitions,
            replication: config.replication,
            known: Mutex::default(),
        })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates those of `topics` not known to exist, with `partitions` (or
    /// the configured count) and extra topic settings.
    pub(crate) async fn ensure(
        &self,
        topics: &[String],
        partitions: Option<i32>,
        settings: &[(&str, &str)],
    ) -> Result<(), TransportError> {
        let missing: Vec<&String> = {
            let known = self.known();
            topics.iter().filter(|t| !known.contains(*t)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|name| {
                settings.iter().fold(
                    NewTopic::new(
                        name,
                        partitions.unwrap_or(self.partitions),
                        TopicReplication::Fixed(self.replication),
                    ),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .admin
            .create_topics(&new, &options)
            .await
            .map_err(|e| TransportError::connection(NAME, e))?;
        for result in results {
            match result {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    self.known().insert(name);
                }
                Err((name, code)) => {
                    return Err(TransportError::broker(
                        NAME,
                        format!("could not create topic {name}: {code}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Forgets that `topic` exists, so that the next publish creates it.
    pub(crate) fn forget(&self, topic: &str) {
        self.known().remove(topic);
    }
}

/// The settings every client shares.
pub(crate) fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", format!("herald-{}", config.prefix))
        // Quiet by default: librdkafka logs every reconnect attempt, which
        // a restarted broker turns into a flood.
        .set("log_level", "3");
    client
}

/// The producer's settings: idempotent, acknowledged by every in-sync
/// replica, with a bounded wait.
pub(crate) fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = base_config(config);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            config.publish_timeout.as_millis().to_string(),
        );
    for (key, value) in &config.producer {
        client.set(key, value);
    }
    client
}

/// A group member's settings: offsets stored by Herald (only past settled
/// events) and committed by librdkafka in the background, on a rebalance
/// and on close; new groups read topics from their start.
pub(crate) fn consumer_config(config: &KafkaConfig, group: &str) -> ClientConfig {
    let mut client = base_config(config);
    client
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Each topic's partitions are split among the members, so that every
        // member takes part in every topic (the retry topic included). A
        // sticky assignor balances the count of partitions over all topics,
        // and may leave a new member with retry partitions only.
        .set("partition.assignment.strategy", "range")
        .set("heartbeat.interval.ms", "1000")
        .set("session.timeout.ms", "10000")
        .set("fetch.wait.max.ms", "100")
        .set(
            "topic.metadata.refresh.interval.ms",
            config.metadata_refresh.as_millis().to_string(),
        );
    for (key, value) in &config.consumer {
        client.set(key, value);
    }
    client
}

/// The producer, replaced when librdkafka declares it dead.
///
/// An idempotent producer whose broker lost its state (a restarted broker
/// without durable storage) can get a fatal error (an out-of-order
/// sequence); every later send would fail. The next send then takes a new
/// producer, with a new producer id.
pub(crate) struct Producers {
    config: KafkaConfig,
    current: Mutex<rdkafka::producer::FutureProducer>,
}

impl Producers {
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self, TransportError> {
        let producer = producer_config(config)
            .create()
            .map_err(|e| TransportError::connection(NAME, e))?;
        Ok(Self {
            config: config.clone(),
            current: Mutex::new(producer),
        })
    }

    /// The producer to send with.
    pub(crate) fn get(&self) -> rdkafka::producer::FutureProducer {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((code, reason)) = current.client().fatal_error() {
            tracing::warn!(%code, %reason, "the kafka producer failed for good; starting a new one");
            match producer_config(&self.config).create() {
                Ok(fresh) => *current = fresh,
                Err(err) => tracing::warn!(error = %err, "could not start a new kafka producer"),
            }
        }
        current.clone()
    }
}
