//! Configuration, and the broker names derived from it.

use std::time::Duration;

use herald::transport::TransportError;

use crate::NAME;

/// The URL used when none is given: the local broker's default vhost.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How an [`AmqpTransport`](crate::AmqpTransport) connects, and where its
/// exchanges and queues live.
///
/// # Examples
///
/// ```
/// use herald_amqp::AmqpConfig;
///
/// let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f").prefix("shop");
/// assert_eq!(config.prefix, "shop");
/// assert!(config.validate().is_ok());
/// assert!(AmqpConfig::default().prefix("amq.x").validate().is_err());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// The broker's URL (`amqp://user:password@host:port/vhost`, the vhost
    /// URL-encoded: `%2f` is `/`).
    pub url: String,
    /// Every exchange and queue is named under this prefix
    /// (`<prefix>.events`, `<prefix>.q.<subscriber>`, ...), so that several
    /// applications, or parallel tests, share one vhost. ASCII letters,
    /// digits, `-`, `_`, `.` and `:`; not starting with `amq.`.
    pub prefix: String,
    /// The connection's name as the broker shows it (`connection_name`
    /// client property); `herald:<prefix>` when `None`.
    pub connection_name: Option<String>,
    /// The first pause before connecting again after a failure; doubled on
    /// each failure up to [`reconnect_max`](Self::reconnect_max).
    pub reconnect_min: Duration,
    /// The longest pause between two connection attempts.
    pub reconnect_max: Duration,
    /// How long a publish (or a dead-letter operation) waits for the broker
    /// to be reachable again before it fails.
    pub reconnect_timeout: Duration,
    /// When set, subscriber queues and the dead-letter queue are deleted by
    /// the broker after being unused this long (`x-expires`), and the events
    /// exchange is auto-deleted once its last queue is gone. Meant for tests
    /// and throw-away environments; production keeps it `None`. Every
    /// process of one prefix must agree on it (the broker refuses to declare
    /// a queue again with other arguments).
    pub queue_expiry: Option<Duration>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            prefix: "herald".to_owned(),
            connection_name: None,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            reconnect_timeout: Duration::from_secs(30),
            queue_expiry: None,
        }
    }
}

impl AmqpConfig {
    /// The defaults, with the broker at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the [`prefix`](Self::prefix).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the [`connection_name`](Self::connection_name).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// Sets the [`reconnect_timeout`](Self::reconnect_timeout).
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// Sets the [`queue_expiry`](Self::queue_expiry).
    pub fn queue_expiry(mut self, expiry: Duration) -> Self {
        self.queue_expiry = Some(expiry);
        self
    }

    /// Checks the prefix and the reconnect pauses.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidName`] saying what is wrong with the prefix,
    /// or [`TransportError::Broker`] for pauses out of order.
    pub fn validate(&self) -> Result<(), TransportError> {
        let invalid = |reason: &str| TransportError::InvalidName {
            transport: NAME,
            name: self.prefix.clone(),
            reason: reason.to_owned(),
        };
        let prefix = &self.prefix;
        if prefix.is_empty() {
            return Err(invalid("the prefix is empty"));
        }
        if prefix.len() > MAX_PREFIX {
            return Err(invalid(&format!(
                "the prefix is longer than {MAX_PREFIX} bytes"
            )));
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(invalid(&format!(
                "the prefix may hold ASCII letters, digits, '-', '_', '.' and ':', not {c:?}"
            )));
        }
        if prefix.starts_with('.') || prefix.ends_with('.') || prefix.contains("..") {
            return Err(invalid(
                "the prefix may not start or end with '.' nor hold '..'",
            ));
        }
        if prefix.starts_with("amq.") {
            return Err(invalid(
                "names starting with 'amq.' are reserved by the broker",
            ));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err(TransportError::broker(
                NAME,
                format!(
                    "reconnect pauses out of order: min {:?}, max {:?}",
                    self.reconnect_min, self.reconnect_max
                ),
            ));
        }
        Ok(())
    }
}

/// Longer prefixes would leave little of a queue name's 255 bytes to the
/// subscriber's name.
const MAX_PREFIX: usize = 64;
/// AMQP short strings (queue names, routing keys) hold at most 255 bytes.
const MAX_SHORT: usize = 255;

/// The broker names of one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    prefix: String,
    pub(crate) exchange: String,
    pub(crate) dead_letters: String,
    pub(crate) lock: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            exchange: format!("{prefix}.events"),
            dead_letters: format!("{prefix}.dead-letters"),
            lock: format!("{prefix}.dead-letters.lock"),
        }
    }

    /// The durable queue of subscriber `name`, after checking that the
    /// broker can take it.
    pub(crate) fn queue(&self, subscriber: &str) -> Result<String, TransportError> {
        let invalid = |reason: String| TransportError::InvalidName {
            transport: NAME,
            name: subscriber.to_owned(),
            reason,
        };
        if subscriber.is_empty() {
            return Err(invalid("a subscriber needs a name for its queue".into()));
        }
        if let Some(c) = subscriber
            .chars()
            .find(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(format!(
                "a queue name may not hold whitespace or control characters ({c:?})"
            )));
        }
        let queue = format!("{}.q.{subscriber}", self.prefix);
        // The longest name derived from it is a retry queue's.
        let longest = self.retry_queue_len(subscriber);
        if longest > MAX_SHORT {
            return Err(invalid(format!(
                "the subscriber's queue names would be {longest} bytes long; the broker takes {MAX_SHORT}"
            )));
        }
        Ok(queue)
    }

    /// The retry queue of `subscriber` for delays of `bucket`.
    pub(crate) fn retry_queue(&self, subscriber: &str, bucket: Duration) -> String {
        format!(
            "{}.retry.{subscriber}.{}ms",
            self.prefix,
            bucket.as_millis()
        )
    }

    fn retry_queue_len(&self, subscriber: &str) -> usize {
        // ".retry." + name + "." + up to 13 digits + "ms"
        self.prefix.len() + 7 + subscriber.len() + 1 + 13 + 2
    }
}

/// The delays retries are rounded up to, so that a subscriber has a few
/// retry queues rather than one per distinct delay.
const BUCKETS_MS: [u64; 15] = [
    50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
    1_800_000, 3_600_000,
];

/// The bucket `delay` goes to: the smallest one at least as long (a retry
/// never comes early), whole hours past the last.
pub(crate) fn bucket(delay: Duration) -> Duration {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    match BUCKETS_MS.iter().find(|&&b| b >= ms) {
        Some(&b) => Duration::from_millis(b),
        None => {
            let hour = 3_600_000;
            Duration::from_millis(ms.div_ceil(hour).saturating_mul(hour))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_delays_up_to_a_few_buckets() {
        assert_eq!(bucket(Duration::from_millis(1)), Duration::from_millis(50));
        assert_eq!(
            bucket(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        assert_eq!(
            bucket(Duration::from_millis(101)),
            Duration::from_millis(250)
        );
        assert_eq!(bucket(Duration::from_secs(3)), Duration::from_secs(5));
        assert_eq!(bucket(Duration::from_secs(3601)), Duration::from_secs(7200));
        let distinct: std::collections::BTreeSet<_> =
            (0..4000).map(|s| bucket(Duration::from_secs(s))).collect();
        assert!(distinct.len() <= 16, "{} buckets", distinct.len());
    }

    #[test]
    fn rejects_prefixes_the_broker_cannot_take() {
        for bad in ["", "amq.x", "a b", ".a", "a.", "a..b", "é"] {
            let err = AmqpConfig::default().prefix(bad).validate().unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(
            AmqpConfig::default()
                .prefix("shop-1.test:x")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn rejects_subscriber_names_that_make_no_queue() {
        let names = Names::new("p");
        assert_eq!(names.queue("mailer").unwrap(), "p.q.mailer");
        for bad in [String::new(), "a b".into(), "x\n".into(), "x".repeat(240)] {
            let err = names.queue(&bad).unwrap_err();
            assert!(matches!(err, TransportError::InvalidName { .. }), "{err}");
        }
    }
}
