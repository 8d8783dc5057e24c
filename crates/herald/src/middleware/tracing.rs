//! A tracing span around each delivery.

use std::future::Future;

use futures_util::future::Either;
use tracing::Instrument;

use crate::{Context, Handler, HandlerResult, RecordedEvent};

/// Opens a span per delivery; see [`Tracing`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLayer;

impl TracingLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<H> tower_layer::Layer<H> for TracingLayer {
    type Service = Tracing<H>;

    fn layer(&self, inner: H) -> Tracing<H> {
        Tracing { inner }
    }
}

/// Runs the inner handler in a `herald.deliver` span (level `DEBUG`) with the
/// fields `event_id`, `event_type`, `subscriber`, `correlation_id` and
/// `attempt`.
///
/// When no tracing subscriber wants the span, this costs a check of a cached
/// flag.
#[derive(Clone, Debug)]
pub struct Tracing<H> {
    inner: H,
}

impl<H> Tracing<H> {
    /// Wraps `inner`.
    pub fn new(inner: H) -> Self {
        Self { inner }
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

impl<H: Handler> Handler for Tracing<H> {
    // Not an async fn: with the span disabled, the inner future is returned
    // as it is, without a state machine or a span held around it.
    fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
    ) -> impl Future<Output = HandlerResult> + Send {
        let span = delivery_span(event, ctx);
        if span.is_disabled() {
            Either::Left(self.inner.handle(event, ctx))
        } else {
            Either::Right(self.inner.handle(event, ctx).instrument(span))
        }
    }
}

/// The span of one delivery (see [`Tracing`]).
pub(crate) fn delivery_span(event: &RecordedEvent, ctx: &Context) -> tracing::Span {
    tracing::debug_span!(
        "herald.deliver",
        event_id = %event.id(),
        event_type = event.event_type(),
        subscriber = ctx.subscriber(),
        correlation_id = %event.correlation_id(),
        attempt = ctx.attempt(),
    )
}
