//! [`NatsConfig`].

use std::time::Duration;

use herald::transport::TransportError;

use crate::NAME;

/// How to connect, and what to name things on the server.
///
/// # Examples
///
/// ```
/// use herald_nats::NatsConfig;
/// use std::time::Duration;
///
/// let config = NatsConfig {
///     prefix: "shop".into(),
///     ack_wait: Duration::from_secs(60),
///     ..NatsConfig::new("nats://127.0.0.1:4222")
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// The server, as `nats://host:port`.
    pub url: String,
    /// What every stream, subject and consumer is named under (ASCII
    /// letters, digits, `_` and `-`; 1 to 64 bytes). Streams take it in
    /// upper case (`HERALD_EVENTS`), subjects as it is (`herald.ev.…`), so
    /// two prefixes that differ only in case share streams: do not.
    pub prefix: String,
    /// How long the server remembers an event id (`Nats-Msg-Id`) to drop
    /// a second publish of it.
    pub duplicate_window: Duration,
    /// How long a delivery may stay unsettled before the server delivers
    /// it again (to any process of the group): longer than the slowest
    /// handler, timeouts and all. A crashed process's deliveries come back
    /// after it.
    pub ack_wait: Duration,
    /// How long the events stream keeps events; `None` keeps them until
    /// deleted by hand. Consumers that fall further behind lose events.
    pub max_age: Option<Duration>,
    /// How long to wait for the server when connecting.
    pub connect_timeout: Duration,
    /// How long to wait for a JetStream answer (a publish ack, an API
    /// call) before failing.
    pub request_timeout: Duration,
}

impl NatsConfig {
    /// The defaults, for the server at `url`: prefix `herald`, a
    /// two-minute duplicate window, a 30-second ack wait, events kept
    /// seven days.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "herald".to_owned(),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Checks the prefix and the durations.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidName`] for a bad prefix or a zero duration
    /// (named by its field).
    pub fn validate(&self) -> Result<(), TransportError> {
        crate::names::check_prefix(&self.prefix)?;
        for (field, value) in [
            ("ack_wait", self.ack_wait),
            ("duplicate_window", self.duplicate_window),
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(TransportError::InvalidName {
                    transport: NAME,
                    name: field.to_owned(),
                    reason: "must be longer than zero".to_owned(),
                });
            }
        }
        if let Some(max_age) = self.max_age
            && max_age < self.duplicate_window
        {
            return Err(TransportError::InvalidName {
                transport: NAME,
                name: "max_age".to_owned(),
                reason: "must be at least the duplicate window".to_owned(),
            });
        }
        Ok(())
    }
}

impl Default for NatsConfig {
    /// The defaults for the server on `nats://127.0.0.1:4222`.
    fn default() -> Self {
        Self::new("nats://127.0.0.1:4222")
    }
}
