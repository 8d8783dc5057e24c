//! The connection to the broker: opened again with backoff when it drops,
//! and a publisher channel with confirms on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald::EventId;
use herald::transport::TransportError;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::NAME;
use crate::config::{AmqpConfig, Names};

/// One message to publish with a confirm.
pub(crate) struct Outgoing<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    /// Whether a message no queue takes is an error (returned by the
    /// broker) rather than dropped.
    pub(crate) mandatory: bool,
    pub(crate) body: &'a [u8],
    pub(crate) properties: BasicProperties,
    pub(crate) event_id: EventId,
}

pub(crate) struct Link {
    pub(crate) config: AmqpConfig,
    pub(crate) names: Names,
    state: Mutex<State>,
    closed: AtomicBool,
    /// Set to `true` once closed, for tasks waiting on the broker.
    pub(crate) closing: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    connection: Option<Arc<Connection>>,
    publisher: Option<Channel>,
}

/// Whether an error means the connection (not only a channel) is gone, so
/// that waiting for a new one may help.
pub(crate) fn is_connection_error(err: &lapin::Error) -> bool {
    match err.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidChannel(_) => true,
        ErrorKind::ProtocolError(e) => matches!(
            e.kind(),
            AMQPErrorKind::Hard(
                AMQPHardError::CONNECTIONFORCED
                    | AMQPHardError::INTERNALERROR
                    | AMQPHardError::RESOURCEERROR
            )
        ),
        _ => false,
    }
}

/// A lapin error as a transport error of the right kind.
pub(crate) fn classify(err: lapin::Error) -> TransportError {
    if is_connection_error(&err) {
        TransportError::connection(NAME, err)
    } else {
        TransportError::broker(NAME, err)
    }
}

impl Link {
    pub(crate) fn new(config: AmqpConfig) -> Self {
        let names = Names::new(&config.prefix);
        Self {
            config,
            names,
            state: Mutex::new(State::default()),
            closed: AtomicBool::new(false),
            closing: watch::channel(false).0,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.is_closed() {
            Err(TransportError::Closed(NAME))
        } else {
            Ok(())
        }
    }

    /// A live connection: the current one, or a new one opened with
    /// backoff until [`AmqpConfig::reconnect_timeout`] has passed.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, TransportError> {
        let mut state = self.state.lock().await;
        self.live_connection(&mut state).await
    }

    async fn live_connection(&self, state: &mut State) -> Result<Arc<Connection>, TransportError> {
        self.check_open()?;
        if let Some(conn) = &state.connection
            && conn.status().connected()
        {
            return Ok(Arc::clone(conn));
        }
        state.publisher = None;
        if let Some(old) = state.connection.take() {
            // The broker already ended it; this only frees the client side,
            // and a half-dead socket must not hold the reconnect up.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                old.close(200, "reconnecting".into()),
            )
            .await;
        }
        let deadline = Instant::now() + self.config.reconnect_timeout;
        let mut pause = self.config.reconnect_min;
        loop {
            // A broker that takes the TCP connection and never answers must
            // not hold every caller for ever.
            let attempt = tokio::time::timeout(self.config.reconnect_timeout, self.open()).await;
            let attempt = attempt.unwrap_or_else(|_| {
                Err(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the broker did not complete the connection handshake",
                )))
            });
            match attempt {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    state.connection = Some(Arc::clone(&conn));
                    return Ok(conn);
                }
                Err(err) => {
                    if Instant::now() + pause > deadline {
                        return Err(TransportError::connection(NAME, err));
                    }
                    tracing::warn!(
                        transport = NAME,
                        error = %err,
                        retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        "could not connect to the broker; trying again"
                    );
                    let mut closing = self.closing.subscribe();
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = crate::link::closed(&mut closing) => return Err(TransportError::Closed(NAME)),
                    }
                    pause = (pause * 2).min(self.config.reconnect_max);
                }
            }
        }
    }

    /// Connects and declares what every process needs: the events exchange
    /// and the dead-letter queue.
    async fn open(&self) -> Result<Connection, lapin::Error> {
        let name = self
            .config
            .connection_name
            .clone()
            .unwrap_or_else(|| format!("herald:{}", self.config.prefix));
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        let conn = Connection::connect(&self.config.url, props).await?;
        let channel = conn.create_channel().await?;
        self.declare_exchange(&channel).await?;
        channel
            .queue_declare(
                self.names.dead_letters.as_str().into(),
                durable(),
                self.queue_arguments(),
            )
            .await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(conn)
    }

    /// Declares the events exchange: durable; auto-deleted with its last
    /// binding when queues expire (see [`AmqpConfig::queue_expiry`]), so a
    /// throw-away prefix leaves nothing behind.
    async fn declare_exchange(&self, channel: &Channel) -> Result<(), lapin::Error> {
        channel
            .exchange_declare(
                self.names.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    auto_delete: self.config.queue_expiry.is_some(),
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
    }

    /// Arguments of the queues that live as long as their application
    /// (subscriber queues, the dead-letter queue).
    pub(crate) fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(expiry) = self.config.queue_expiry {
            args.insert("x-expires".into(), millis(expiry));
        }
        args
    }

    /// A new channel on a live connection.
    pub(crate) async fn channel(&self) -> Result<Channel, TransportError> {
        let conn = self.connection().await?;
        conn.create_channel().await.map_err(classify)
    }

    /// The channel with publisher confirms, opened again when it closed.
    async fn publisher(&self) -> Result<Channel, TransportError> {
        let mut state = self.state.lock().await;
        if let Some(channel) = &state.publisher
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let conn = self.live_connection(&mut state).await?;
        let channel = conn.create_channel().await.map_err(classify)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(classify)?;
        // A channel closed by the broker is usually a missing exchange
        // (deleted by hand, say): declaring it again heals that.
        self.declare_exchange(&channel).await.map_err(classify)?;
        state.publisher = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes every message, then waits for every confirm: one round
    /// trip for the batch. `Ok` only when the broker confirmed each one.
    ///
    /// When the connection drops, the whole batch is published again on a
    /// new connection until [`AmqpConfig::reconnect_timeout`]: a message
    /// may then reach the broker twice (with the same event id), never
    /// zero times behind an `Ok`.
    pub(crate) async fn publish(&self, messages: &[Outgoing<'_>]) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.config.reconnect_timeout;
        let mut pause = self.config.reconnect_min;
        loop {
            match self.publish_once(messages).await {
                Err(TransportError::Connection { source, .. })
                    if !self.is_closed() && Instant::now() + pause < deadline =>
                {
                    tracing::warn!(
                        transport = NAME,
                        error = %source,
                        "connection lost while publishing; publishing the batch again"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.config.reconnect_max);
                }
                other => return other,
            }
        }
    }

    async fn publish_once(&self, messages: &[Outgoing<'_>]) -> Result<(), TransportError> {
        let channel = self.publisher().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let confirm = channel
                .basic_publish(
                    m.exchange.into(),
                    m.routing_key.into(),
                    BasicPublishOptions {
                        mandatory: m.mandatory,
                        ..BasicPublishOptions::default()
                    },
                    m.body,
                    m.properties.clone(),
                )
                .await
                .map_err(classify)?;
            confirms.push(confirm);
        }
        let mut first_error = None;
        for (m, confirm) in messages.iter().zip(confirms) {
            let outcome = match confirm.await {
                Ok(Confirmation::Ack(None)) => continue,
                Ok(Confirmation::Ack(Some(returned))) => TransportError::NotConfirmed {
                    transport: NAME,
                    event_id: m.event_id,
                    reason: format!(
                        "returned by the broker ({} {}): no queue {:?} takes it",
                        returned.reply_code, returned.reply_text, m.routing_key
                    ),
                },
                Ok(Confirmation::Nack(_)) => TransportError::NotConfirmed {
                    transport: NAME,
                    event_id: m.event_id,
                    reason: "the broker refused it (nack)".into(),
                },
                Ok(Confirmation::NotRequested) => TransportError::NotConfirmed {
                    transport: NAME,
                    event_id: m.event_id,
                    reason: "the channel has no publisher confirms".into(),
                },
                Err(err) if is_connection_error(&err) => TransportError::connection(NAME, err),
                Err(err) => TransportError::NotConfirmed {
                    transport: NAME,
                    event_id: m.event_id,
                    reason: err.to_string(),
                },
            };
            // Every confirm is awaited, so none is left behind on the channel.
            first_error.get_or_insert(outcome);
        }
        match first_error {
            None => Ok(()),
            Some(err) => Err(err),
        }
    }

    /// Closes the connection; later calls fail with `Closed`.
    pub(crate) async fn close(&self) -> Result<(), TransportError> {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.closing.send(true);
        let mut state = self.state.lock().await;
        state.publisher = None;
        if let Some(conn) = state.connection.take()
            && conn.status().connected()
        {
            conn.close(200, "closed by the application".into())
                .await
                .map_err(classify)?;
        }
        Ok(())
    }
}

/// Resolves once the transport is closed.
pub(crate) async fn closed(closing: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = closing.wait_for(|c| *c).await.map(|_| ());
}

pub(crate) fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

pub(crate) fn millis(d: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
