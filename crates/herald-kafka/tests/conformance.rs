//! The transport and dead-letter conformance suites against a real
//! Kafka-protocol broker (tansu; see `.ci/kafka`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald::async_trait;
use herald::transport::Transport;
use herald_kafka::{KafkaDeadLetters, KafkaTransport};
use herald_testkit::transports::TransportHarness;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::Mutex;

/// Every scenario runs in a namespace of its own; the namespace is the
/// transport's prefix, so topics and groups never meet.
///
/// The scenario that restarts the broker (its namespaces start with
/// `reconnect-`) gets a broker of its own, so that the restart disrupts no
/// other scenario.
struct KafkaHarness {
    private: Mutex<Option<support::PrivateBroker>>,
}

async fn harness() -> KafkaHarness {
    KafkaHarness {
        private: Mutex::new(None),
    }
}

impl KafkaHarness {
    async fn brokers_for(&self, namespace: &str) -> String {
        if !namespace.starts_with("reconnect-") {
            return support::brokers();
        }
        let mut private = self.private.lock().await;
        if private.is_none() {
            *private = Some(support::PrivateBroker::start().await);
        }
        private.as_ref().map(|b| b.address()).unwrap_or_default()
    }
}

#[async_trait]
impl TransportHarness for KafkaHarness {
    async fn connect(&self, namespace: &str) -> Arc<dyn Transport> {
        let brokers = self.brokers_for(namespace).await;
        Arc::new(
            KafkaTransport::connect(support::config(&brokers, namespace))
                .await
                .expect("connect to Kafka"),
        )
    }

    /// Restarts the scenario's private broker (the process is killed).
    ///
    /// tansu 0.6 built with `dynostore` keeps data only in memory (its other
    /// engine is S3), so a restart loses topics, offsets and messages. To
    /// test reconnection rather than the broker's durability, the restart
    /// waits until every group of the namespace has committed everything
    /// published so far; afterwards the producer and the consumer must
    /// carry on by themselves against an empty broker: publishing recreates
    /// the topic, the consumer rejoins its group and finds the topic again.
    async fn disrupt(&self, namespace: &str) {
        let mut private = self.private.lock().await;
        let broker = private.as_mut().expect("the private broker was started");
        wait_until_committed(&broker.address(), namespace).await;
        broker.restart().await;
    }
}

/// Waits until every group under `prefix` has committed the end of every
/// partition of every event topic under `prefix`.
async fn wait_until_committed(brokers: &str, prefix: &str) {
    let brokers = brokers.to_owned();
    let prefix = prefix.to_owned();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(5);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let admin: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("a client");
        loop {
            let metadata = admin.fetch_metadata(None, timeout).expect("metadata");
            let groups = admin.fetch_group_list(None, timeout).expect("group list");
            let mut behind = Vec::new();
            for group in groups.groups() {
                if !group.name().starts_with(&format!("{prefix}.")) {
                    continue;
                }
                let member: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .set("group.id", group.name())
                    .create()
                    .expect("a client");
                for topic in metadata.topics() {
                    if !topic.name().starts_with(&format!("{prefix}.")) {
                        continue;
                    }
                    for partition in topic.partitions() {
                        let (_, high) = admin
                            .fetch_watermarks(topic.name(), partition.id(), timeout)
                            .expect("watermarks");
                        let mut tpl = rdkafka::TopicPartitionList::new();
                        tpl.add_partition(topic.name(), partition.id());
                        let committed = member
                            .committed_offsets(tpl, timeout)
                            .expect("committed offsets");
                        let at = committed
                            .elements()
                            .first()
                            .and_then(|e| e.offset().to_raw())
                            .unwrap_or(-1)
                            .max(0);
                        if at < high {
                            behind.push(format!(
                                "{}/{}: {at} < {high}",
                                topic.name(),
                                partition.id()
                            ));
                        }
                    }
                }
            }
            if behind.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the consumer did not catch up before the restart: {behind:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("the commit check");
}

herald_testkit::transport_conformance!(harness);

/// An empty dead-letter store of the scenario's own: a transport under a
/// new prefix, so a new dead-letter topic.
async fn dead_letters() -> KafkaDeadLetters {
    support::transport(&support::prefix("dlq"))
        .await
        .dead_letter_store()
}

mod dead_letter_store {
    use super::dead_letters;
    herald_testkit::dead_letter_conformance!(dead_letters);
}
