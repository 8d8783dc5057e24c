//! Retries a failed handler per a policy: immediately, after a fixed delay,
//! or with exponential backoff and jitter.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::error::{AttemptError, ConfigError};
use crate::{Context, Disposition, Handler, HandlerError, HandlerResult, RecordedEvent};

/// How long to wait between attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// Retry at once.
    Immediate,
    /// Wait the same delay before every retry.
    Fixed(Duration),
    /// Wait `initial`, then `initial × multiplier`, … up to `max`, each
    /// shortened by a random fraction of up to `jitter` (0 to 1), so that
    /// many subscribers failing together do not retry in lockstep.
    Exponential {
        /// Delay before the first retry.
        initial: Duration,
        /// Largest delay.
        max: Duration,
        /// Growth factor per retry (at least 1).
        multiplier: f64,
        /// Fraction of each delay that is randomised (0 to 1).
        jitter: f64,
    },
}

type Predicate = Arc<dyn Fn(&HandlerError) -> bool + Send + Sync>;

/// When and how often to retry.
///
/// The handler's error decides first: only a
/// [`Retry`](Disposition::Retry) disposition is retried, after its own delay
/// when it gives one. Then the optional predicate decides, then the attempt
/// count.
///
/// # Examples
///
/// ```
/// use herald::{ErrorKind, RetryPolicy};
/// use std::time::Duration;
///
/// let policy = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(10))
///     .max_attempts(8)
///     .jitter(0.2)
///     .retry_if(|err| err.kind() != ErrorKind::Panic);
/// policy.validate().unwrap();
///
/// let bad = RetryPolicy::exponential(Duration::from_secs(10), Duration::from_secs(1));
/// assert!(bad.validate().is_err());
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    predicate: Option<Predicate>,
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            backoff: Backoff::Immediate,
            predicate: None,
        }
    }

    /// Up to `max_attempts` attempts in all, with no wait between them.
    pub fn immediate(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            backoff: Backoff::Immediate,
            predicate: None,
        }
    }

    /// Up to `max_attempts` attempts in all, `delay` apart.
    pub fn fixed(delay: Duration, max_attempts: u32) -> Self {
        Self {
            max_attempts,
            backoff: Backoff::Fixed(delay),
            predicate: None,
        }
    }

    /// Exponential backoff from `initial` to `max`, doubling, with 10 %
    /// jitter and 5 attempts in all; change them with the builder methods.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Self {
            max_attempts: 5,
            backoff: Backoff::Exponential {
                initial,
                max,
                multiplier: 2.0,
                jitter: 0.1,
            },
            predicate: None,
        }
    }

    /// Sets the number of attempts in all (the first included).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets the jitter of an exponential backoff (0 to 1; 0 makes delays
    /// exact). No effect on other backoffs.
    pub fn jitter(mut self, fraction: f64) -> Self {
        if let Backoff::Exponential { jitter, .. } = &mut self.backoff {
            *jitter = fraction;
        }
        self
    }

    /// Sets the growth factor of an exponential backoff.
    pub fn multiplier(mut self, factor: f64) -> Self {
        if let Backoff::Exponential { multiplier, .. } = &mut self.backoff {
            *multiplier = factor;
        }
        self
    }

    /// Retries only errors for which `predicate` is true; the others go to
    /// the dead letters at once.
    pub fn retry_if(
        mut self,
        predicate: impl Fn(&HandlerError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.predicate = Some(Arc::new(predicate));
        self
    }

    /// The number of attempts in all.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when there are zero attempts, or an exponential
    /// backoff has `initial > max`, a multiplier below 1 or a jitter outside
    /// 0 to 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::Zero("retry max_attempts"));
        }
        if let Backoff::Exponential {
            initial,
            max,
            multiplier,
            jitter,
        } = self.backoff
        {
            if initial > max {
                return Err(ConfigError::MinAboveMax {
                    name: "retry backoff",
                    min: initial,
                    max,
                });
            }
            if !(1.0..=1000.0).contains(&multiplier) {
                return Err(ConfigError::OutOfRange {
                    name: "retry backoff multiplier",
                    value: multiplier,
                    min: 1.0,
                    max: 1000.0,
                });
            }
            if !(0.0..=1.0).contains(&jitter) {
                return Err(ConfigError::OutOfRange {
                    name: "retry backoff jitter",
                    value: jitter,
                    min: 0.0,
                    max: 1.0,
                });
            }
        }
        Ok(())
    }

    /// Whether an error that failed attempt `attempt` (counting from 1) is
    /// retried.
    pub fn should_retry(&self, attempt: u32, error: &HandlerError) -> bool {
        matches!(error.disposition(), Disposition::Retry { .. })
            && attempt < self.max_attempts
            && self.predicate.as_ref().is_none_or(|p| p(error))
    }

    /// The delay after failed attempt `attempt` (counting from 1), before
    /// jitter is applied when `jittered` is false.
    pub fn delay(&self, attempt: u32, jittered: bool) -> Duration {
        match self.backoff {
            Backoff::Immediate => Duration::ZERO,
            Backoff::Fixed(d) => d,
            Backoff::Exponential {
                initial,
                max,
                multiplier,
                jitter,
            } => {
                let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
                let raw = initial.as_secs_f64() * multiplier.powi(exp);
                let capped = raw.min(max.as_secs_f64());
                let factor = if jittered && jitter > 0.0 {
                    1.0 - jitter * rand::rng().random::<f64>()
                } else {
                    1.0
                };
                Duration::try_from_secs_f64(capped * factor).unwrap_or(max)
            }
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::none()
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("predicate", &self.predicate.is_some())
            .finish()
    }
}

/// Retries the inner handler; see [`Retry`].
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// A layer retrying per `policy`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the policy is invalid; see
    /// [`RetryPolicy::validate`].
    pub fn new(policy: RetryPolicy) -> Result<Self, ConfigError> {
        policy.validate()?;
        Ok(Self { policy })
    }
}

impl<H> tower_layer::Layer<H> for RetryLayer {
    type Service = Retry<H>;

    fn layer(&self, inner: H) -> Retry<H> {
        Retry {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Calls the inner handler again while it fails with a retryable error,
/// per the [`RetryPolicy`].
///
/// Each failed attempt that will be retried is logged at `WARN` with the
/// event id, type, subscriber, attempt, error and the delay. When it gives up
/// it returns the last error, carrying every attempt's error in
/// [`HandlerError::history`]. The wait uses tokio's clock, so tests can
/// pause it.
#[derive(Clone, Debug)]
pub struct Retry<H> {
    inner: H,
    policy: RetryPolicy,
}

impl<H> Retry<H> {
    /// The inner handler.
    pub fn get_ref(&self) -> &H {
        &self.inner
    }

    /// The inner handler, by value.
    pub fn into_inner(self) -> H {
        self.inner
    }
}

impl<H: Handler> Handler for Retry<H> {
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        match self.inner.handle(event, ctx).await {
            Ok(()) => Ok(()),
            // The retry loop lives in its own boxed future, so that the
            // future of a delivery that succeeds stays small (it is moved
            // and boxed once per delivery).
            Err(err) => Box::pin(self.after_failure(event, ctx, err)).await,
        }
    }
}

impl<H: Handler> Retry<H> {
    async fn after_failure(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
        first_error: HandlerError,
    ) -> HandlerResult {
        let first = ctx.attempt();
        let mut history: Vec<AttemptError> = Vec::new();
        let mut attempt = first;
        let mut failure = first_error;
        loop {
            let mut err = failure;
            if err.disposition() == Disposition::Skip {
                return Err(err);
            }
            let inner_history = err.take_history();
            if inner_history.is_empty() {
                history.push(AttemptError::new(attempt, &err));
            } else {
                history.extend(inner_history);
            }
            let tries = attempt - first + 1;
            if !self.policy.should_retry(tries, &err) {
                return Err(err.with_history(history));
            }
            let delay = match err.disposition() {
                Disposition::Retry { after: Some(d) } => d,
                _ => self.policy.delay(tries, true),
            };
            tracing::warn!(
                event_id = %event.id(),
                event_type = event.event_type(),
                subscriber = ctx.subscriber(),
                attempt,
                error = %err,
                retry_in = ?delay,
                "handler failed, will retry"
            );
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            attempt += 1;
            let retry_ctx = ctx.with_attempt(attempt);
            failure = match self.inner.handle(event, &retry_ctx).await {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_delays_double_and_cap() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_millis(500))
            .jitter(0.0);
        let delays: Vec<_> = (1..=5).map(|a| p.delay(a, true)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 500, 500]
                .map(Duration::from_millis)
                .to_vec()
        );
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = RetryPolicy::exponential(Duration::from_millis(1000), Duration::from_secs(60))
            .jitter(0.5);
        for _ in 0..1000 {
            let d = p.delay(1, true);
            assert!(
                d <= Duration::from_millis(1000) && d >= Duration::from_millis(500),
                "{d:?}"
            );
        }
    }

    #[test]
    fn invalid_policies_are_rejected() {
        assert_eq!(
            RetryPolicy::immediate(0).validate(),
            Err(ConfigError::Zero("retry max_attempts"))
        );
        assert!(matches!(
            RetryPolicy::exponential(Duration::from_secs(2), Duration::from_secs(1)).validate(),
            Err(ConfigError::MinAboveMax { .. })
        ));
        assert!(
            RetryPolicy::exponential(Duration::ZERO, Duration::ZERO)
                .jitter(1.5)
                .validate()
                .is_err()
        );
        assert!(
            RetryPolicy::exponential(Duration::ZERO, Duration::ZERO)
                .multiplier(0.5)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn only_retry_dispositions_are_retried() {
        let p = RetryPolicy::immediate(3);
        assert!(p.should_retry(1, &HandlerError::retry("x")));
        assert!(p.should_retry(2, &HandlerError::retry("x")));
        assert!(!p.should_retry(3, &HandlerError::retry("x")));
        assert!(!p.should_retry(1, &HandlerError::dead_letter("x")));
        assert!(!p.should_retry(1, &HandlerError::stop("x")));
        let p = p.retry_if(|e| e.to_string() != "fatal");
        assert!(!p.should_retry(1, &HandlerError::retry("fatal")));
    }
}
