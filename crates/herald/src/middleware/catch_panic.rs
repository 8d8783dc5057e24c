//! Turns a panic in a handler into an error.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::{Context, Handler, HandlerError, HandlerResult, RecordedEvent};

/// Catches panics of the inner handler; see [`CatchPanic`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CatchPanicLayer;

impl CatchPanicLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<H> tower_layer::Layer<H> for CatchPanicLayer {
    type Service = CatchPanic<H>;

    fn layer(&self, inner: H) -> CatchPanic<H> {
        CatchPanic { inner }
    }
}

/// Turns a panic of the inner handler into a retryable [`HandlerError`] of
/// kind [`Panic`](crate::ErrorKind::Panic) whose message is the panic's.
///
/// The bus also catches panics around every subscriber's whole stack, so a
/// panic never reaches the publisher even without this layer; this layer,
/// placed below the retry layer, makes a panic count as a failed attempt.
#[derive(Clone, Debug)]
pub struct CatchPanic<H> {
    inner: H,
}

impl<H> CatchPanic<H> {
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

impl<H: Handler> Handler for CatchPanic<H> {
    fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
    ) -> impl Future<Output = HandlerResult> + Send {
        AssertUnwindSafe(self.inner.handle(event, ctx))
            .catch_unwind()
            .map(|outcome| match outcome {
                Ok(result) => result,
                Err(panic) => Err(HandlerError::panic(panic_message(&*panic))),
            })
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
