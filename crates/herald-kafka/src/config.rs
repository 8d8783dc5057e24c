//! The transport's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use herald::transport::TransportError;

use crate::NAME;

/// How event types map to topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicMapping {
    /// One topic per event type: `order.created` goes to
    /// `<prefix>.order.created`. Patterns subscribe to exactly the matching
    /// topics, so a group reads only what it handles.
    #[default]
    PerType,
    /// One topic per category (the type's first segment): `order.created`
    /// and `order.line.added` both go to `<prefix>.order`, with the type in
    /// a header. Fewer topics; a group reads its categories whole and skips
    /// (and commits past) the types its patterns do not match.
    PerCategory,
    /// One topic for every event: `<prefix>.events`, type in a header. It
    /// exists from the first subscribe, so every group is assigned its
    /// partitions when it joins and never waits for a new topic to be
    /// found; and events published one after another reach a consumer in
    /// that order, whatever their types (Kafka orders only within a
    /// partition, and a consumer takes what the partitions of one topic
    /// bring together, merged by time). Every group reads every event and
    /// skips (and commits past) the types it does not handle.
    Single,
}

/// Settings of a [`KafkaTransport`](crate::KafkaTransport).
///
/// # Examples
///
/// ```
/// use herald_kafka::{KafkaConfig, TopicMapping};
/// use std::time::Duration;
///
/// let config = KafkaConfig::new("127.0.0.1:9092")
///     .prefix("shop")
///     .mapping(TopicMapping::PerCategory)
///     .metadata_refresh(Duration::from_secs(1));
/// assert_eq!(config.prefix, "shop");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// The bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Every topic and consumer group this transport names starts with it,
    /// so that several applications (or parallel tests) share one cluster.
    /// ASCII letters, digits, `_` and `-` (no `.`: the dot separates the
    /// prefix from the event type in topic names and patterns).
    pub prefix: String,
    /// How event types map to topics.
    pub mapping: TopicMapping,
    /// Partitions of the topics this transport creates. Events of one
    /// stream share a partition whatever the count.
    pub partitions: i32,
    /// Replication factor of the topics this transport creates.
    pub replication: i32,
    /// How often consumers look for new topics matching their patterns
    /// (`topic.metadata.refresh.interval.ms`): a topic created after a group
    /// subscribed is read within this delay plus one group rebalance.
    pub metadata_refresh: Duration,
    /// How long a publish waits for the broker's acknowledgement before it
    /// fails (`message.timeout.ms`).
    pub publish_timeout: Duration,
    /// When partitions are taken away from a consumer (another member
    /// joined), how long it waits for the deliveries it handed out from
    /// them to be settled, so that the new owner does not handle them again.
    /// Past it, the unsettled ones are handled again by the new owner.
    pub revoke_drain: Duration,
    /// When partitions are assigned to a consumer, how long it gathers what
    /// they bring before handing it out, merged in publish order. Kafka
    /// orders events only within a partition; without this, events of
    /// topics assigned together (new topics found by one metadata refresh)
    /// come in the order librdkafka fetched their partitions. Zero turns it
    /// off.
    pub assignment_gather: Duration,
    /// Extra librdkafka settings for the producer (they win over Herald's).
    pub producer: BTreeMap<String, String>,
    /// Extra librdkafka settings for consumers (they win over Herald's).
    pub consumer: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Defaults for the cluster at `brokers`: prefix `herald`, a topic per
    /// event type, 3 partitions, replication 1, new topics found within
    /// 5 s, publishes that fail after 30 s, 10 s to drain on a rebalance,
    /// 250 ms to gather what newly assigned partitions bring.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            prefix: "herald".to_owned(),
            mapping: TopicMapping::PerType,
            partitions: 3,
            replication: 1,
            metadata_refresh: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(30),
            revoke_drain: Duration::from_secs(10),
            assignment_gather: Duration::from_millis(250),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }

    /// Sets the prefix of topics and groups.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the topic mapping.
    pub fn mapping(mut self, mapping: TopicMapping) -> Self {
        self.mapping = mapping;
        self
    }

    /// Sets the partition count of created topics.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets how often consumers look for new matching topics.
    pub fn metadata_refresh(mut self, every: Duration) -> Self {
        self.metadata_refresh = every;
        self
    }

    /// Sets how long a publish waits for the broker.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets how long a consumer drains revoked partitions.
    pub fn revoke_drain(mut self, timeout: Duration) -> Self {
        self.revoke_drain = timeout;
        self
    }

    /// Adds a librdkafka producer setting.
    pub fn producer_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer.insert(key.into(), value.into());
        self
    }

    /// Adds a librdkafka consumer setting.
    pub fn consumer_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer.insert(key.into(), value.into());
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidName`] naming the setting that is wrong.
    pub fn validate(&self) -> Result<(), TransportError> {
        let invalid = |name: &str, reason: &str| TransportError::InvalidName {
            transport: NAME,
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        if self.brokers.trim().is_empty() {
            return Err(invalid("brokers", "no bootstrap server given"));
        }
        if self.prefix.is_empty() || self.prefix.len() > 100 {
            return Err(invalid(&self.prefix, "a prefix has 1 to 100 characters"));
        }
        if !self
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                &self.prefix,
                "a prefix has ASCII letters, digits, '_' and '-' only",
            ));
        }
        if self.partitions < 1 {
            return Err(invalid("partitions", "at least one partition"));
        }
        if self.replication < 1 {
            return Err(invalid("replication", "a replication factor of at least 1"));
        }
        let millis = |d: Duration| d.as_millis() >= 1 && d.as_millis() <= i32::MAX as u128;
        if !millis(self.metadata_refresh) || !millis(self.publish_timeout) {
            return Err(invalid(
                "metadata_refresh/publish_timeout",
                "between 1 ms and 24 days",
            ));
        }
        Ok(())
    }
}
