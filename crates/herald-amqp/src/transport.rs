//! [`AmqpTransport`]: the [`Transport`] on RabbitMQ.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald::transport::{Consumer, ConsumerSpec, Transport, TransportError};
use herald::{DeadLetterStore, RecordedEvent};
use tokio::time::Instant;

use crate::NAME;
use crate::codec;
use crate::config::AmqpConfig;
use crate::consumer::{self, AmqpConsumer};
use crate::dead_letters::AmqpDeadLetterStore;
use crate::link::{Link, Outgoing};

/// What the transport, its consumers, ackers and dead-letter store share.
pub(crate) struct Shared {
    pub(crate) link: Link,
    /// Retry queues this process declared, and when.
    pub(crate) retry_queues: Mutex<HashMap<String, Instant>>,
    /// Serializes this process's dead-letter operations; the broker-side
    /// lock (see [`crate::dead_letters`]) serializes processes, but it is
    /// held per connection, so it cannot tell two tasks of one apart.
    pub(crate) dead_letter_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Herald's transport on RabbitMQ (AMQP 0-9-1).
///
/// See the [crate docs](crate) for how events, subscribers, retries and
/// dead letters map onto exchanges and queues.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use herald::Bus;
/// use herald_amqp::{AmqpConfig, AmqpTransport};
/// use std::sync::Arc;
///
/// let transport = AmqpTransport::connect(AmqpConfig::default().prefix("shop")).await?;
/// let bus = Bus::builder().transport(Arc::new(transport)).build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("prefix", &self.shared.link.config.prefix)
            .finish_non_exhaustive()
    }
}

impl AmqpTransport {
    /// Connects, and declares the events exchange and the dead-letter
    /// queue (idempotently: what exists is left as it is).
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidName`] for a prefix the broker cannot take;
    /// [`TransportError::Connection`] when the broker is not reachable
    /// within [`AmqpConfig::reconnect_timeout`].
    pub async fn connect(config: AmqpConfig) -> Result<Self, TransportError> {
        config.validate()?;
        let shared = Arc::new(Shared {
            link: Link::new(config),
            retry_queues: Mutex::new(HashMap::new()),
            dead_letter_lock: Arc::new(tokio::sync::Mutex::new(())),
        });
        shared.link.connection().await?;
        Ok(Self { shared })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &AmqpConfig {
        &self.shared.link.config
    }

    /// The topic exchange events are published to: `<prefix>.events`.
    pub fn exchange(&self) -> &str {
        &self.shared.link.names.exchange
    }

    /// The durable queue of `subscriber`: `<prefix>.q.<subscriber>`.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidName`] for a name that makes no queue name.
    pub fn queue(&self, subscriber: &str) -> Result<String, TransportError> {
        self.shared.link.names.queue(subscriber)
    }

    /// The queue holding dead letters: `<prefix>.dead-letters`.
    pub fn dead_letter_queue(&self) -> &str {
        &self.shared.link.names.dead_letters
    }

    /// The retry queue a retry after `delay` of `subscriber` goes to:
    /// `<prefix>.retry.<subscriber>.<bucket>ms`, the delay rounded up to
    /// one of a few buckets (50 ms, 100 ms, 250 ms, 500 ms, 1 s, 2 s, 5 s,
    /// 10 s, 30 s, 1 min, 2 min, 5 min, 10 min, 30 min, 1 h, then whole
    /// hours).
    pub fn retry_queue(&self, subscriber: &str, delay: std::time::Duration) -> String {
        self.shared
            .link
            .names
            .retry_queue(subscriber, crate::config::bucket(delay))
    }

    /// The dead letters on the broker, as their own type.
    pub fn broker_dead_letters(&self) -> AmqpDeadLetterStore {
        AmqpDeadLetterStore::new(Arc::clone(&self.shared))
    }
}

fn check(event: &RecordedEvent) -> Result<(), TransportError> {
    codec::check_short_strings(event).map_err(|reason| TransportError::InvalidName {
        transport: NAME,
        name: event.event_type().to_owned(),
        reason,
    })
}

#[async_trait]
impl Transport for AmqpTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Publishes to `<prefix>.events` with the event type as routing key,
    /// pipelined: every message is sent, then every confirm awaited.
    ///
    /// An event no subscriber's queue is bound for is dropped by the broker
    /// (and confirmed), as an in-process event without subscribers is.
    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), TransportError> {
        if self.shared.link.is_closed() {
            return Err(TransportError::Closed(NAME));
        }
        events.iter().try_for_each(check)?;
        let exchange = self.shared.link.names.exchange.as_str();
        let messages: Vec<Outgoing<'_>> = events
            .iter()
            .map(|event| Outgoing {
                exchange,
                routing_key: event.event_type(),
                mandatory: false,
                body: event.data().as_bytes(),
                properties: codec::properties(event),
                event_id: event.id(),
            })
            .collect();
        if messages.is_empty() {
            return Ok(());
        }
        self.shared.link.publish(&messages).await
    }

    /// Declares `<prefix>.q.<name>` and binds it to each topic pattern,
    /// then consumes it with a prefetch of `spec.prefetch`.
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, TransportError> {
        let queue = self.shared.link.names.queue(&spec.name)?;
        if let Some(p) = spec.topics.iter().find(|p| p.as_str().len() > 255) {
            return Err(TransportError::InvalidName {
                transport: NAME,
                name: p.as_str().to_owned(),
                reason: "a binding key holds at most 255 bytes".into(),
            });
        }
        let opened = consumer::open(&self.shared, spec, &queue).await?;
        Ok(Box::new(AmqpConsumer::new(
            Arc::clone(&self.shared),
            spec.clone(),
            queue,
            opened,
        )))
    }

    /// Publishes to the default exchange with the subscriber's queue as
    /// routing key, mandatory: a queue that does not exist is an error.
    async fn redeliver(
        &self,
        subscriber: &str,
        event: &RecordedEvent,
    ) -> Result<(), TransportError> {
        let queue = self.shared.link.names.queue(subscriber)?;
        check(event)?;
        self.shared
            .link
            .publish(&[Outgoing {
                exchange: "",
                routing_key: &queue,
                mandatory: true,
                body: event.data().as_bytes(),
                properties: codec::properties(event),
                event_id: event.id(),
            }])
            .await
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(self.broker_dead_letters())
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.shared.link.close().await
    }
}
