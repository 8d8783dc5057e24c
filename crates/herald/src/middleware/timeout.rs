//! Bounds how long one attempt may take.

use std::time::Duration;

use crate::{Context, Handler, HandlerError, HandlerResult, RecordedEvent};

/// Bounds each call of the inner handler; see [`Timeout`].
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// Each call gets at most `limit`.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<H> tower_layer::Layer<H> for TimeoutLayer {
    type Service = Timeout<H>;

    fn layer(&self, inner: H) -> Timeout<H> {
        Timeout::new(inner, self.limit)
    }
}

/// Fails a call that takes longer than its limit with a retryable
/// [`HandlerError`] of kind [`Timeout`](crate::ErrorKind::Timeout).
///
/// The handler's future is dropped at the deadline, so the handler must be
/// cancel-safe at its await points (as with tower's `Timeout`). It uses
/// tokio's clock, so tests with a paused clock see it fire at once.
#[derive(Clone, Debug)]
pub struct Timeout<H> {
    inner: H,
    limit: Duration,
}

impl<H> Timeout<H> {
    /// Wraps `inner`.
    pub fn new(inner: H, limit: Duration) -> Self {
        Self { inner, limit }
    }

    /// The inner handler.
    pub fn get_ref(&self) -> &H {
        &self.inner
    }

    /// The inner handler, by value.
    pub fn into_inner(self) -> H {
        self.inner
    }
}

impl<H: Handler> Handler for Timeout<H> {
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        // Boxed: a timer entry is large, and the bus keeps room for this
        // layer in every subscriber's future, timeout or not.
        match Box::pin(tokio::time::timeout(
            self.limit,
            self.inner.handle(event, ctx),
        ))
        .await
        {
            Ok(result) => result,
            Err(_) => Err(HandlerError::timeout(self.limit)),
        }
    }
}
