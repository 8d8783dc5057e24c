//! Middleware: layers that wrap a [`Handler`] into a new handler.
//!
//! Middleware follows tower's shape: a `XxxLayer` (a [`Layer`]) wraps a handler
//! into an `Xxx<H>` that is itself a [`Handler`]. Layers compose with
//! [`Stack`], or per subscriber with
//! [`Subscriber::layer`](crate::Subscriber::layer) and for the whole bus with
//! [`BusBuilder::layer`](crate::BusBuilder::layer).
//!
//! # Order
//!
//! The bus builds each subscriber's stack in this order, outermost first:
//!
//! 1. layers added to the bus with [`BusBuilder::layer`](crate::BusBuilder::layer), in the order added;
//! 2. [`TracingLayer`]: a span per delivery with the event id, type, subscriber and attempt;
//! 3. [`IdempotencyLayer`], when the subscriber has a ledger: skips an event id already handled;
//! 4. [`DeadLetterLayer`]: parks the event when the layers below give up;
//! 5. [`RetryLayer`]: retries per the subscriber's [`RetryPolicy`];
//! 6. layers added to the subscriber with [`Subscriber::layer`](crate::Subscriber::layer), in the order added;
//! 7. [`CatchPanicLayer`]: turns a panic into a retryable error;
//! 8. [`TimeoutLayer`], when the subscriber has a timeout: each attempt gets that long;
//! 9. the handler.
//!
//! So each attempt is timed on its own, a panic is retried like an error,
//! the dead letter records every attempt, and an event skipped as a
//! duplicate never reaches the retry or dead-letter logic.
//!
//! # Writing middleware
//!
//! ```
//! use herald::middleware::Layer;
//! use herald::{Context, Handler, HandlerResult, RecordedEvent};
//!
//! /// Counts deliveries.
//! struct Count<H> { inner: H, n: std::sync::atomic::AtomicU64 }
//!
//! impl<H: Handler> Handler for Count<H> {
//!     async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
//!         self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!         self.inner.handle(event, ctx).await
//!     }
//! }
//!
//! struct CountLayer;
//!
//! impl<H> Layer<H> for CountLayer {
//!     type Service = Count<H>;
//!     fn layer(&self, inner: H) -> Count<H> {
//!         Count { inner, n: Default::default() }
//!     }
//! }
//! ```
//!
//! # tower's layers
//!
//! [`TowerLayer`] runs any tower layer (rate limit, concurrency limit, load
//! shedding, …) around a handler.

use std::future::Future;

use futures_util::future::Either as EitherFuture;
pub use tower_layer::{Identity, Layer, LayerFn, Stack, layer_fn};

use crate::{Context, Handler, HandlerResult, RecordedEvent};

mod catch_panic;
mod dead_letter;
mod idempotency;
mod retry;
mod timeout;
mod tower;
mod tracing;

pub(crate) use self::catch_panic::panic_message;
pub use self::catch_panic::{CatchPanic, CatchPanicLayer};
pub(crate) use self::dead_letter::park;
pub use self::dead_letter::{DeadLetterLayer, DeadLetters};
pub use self::idempotency::{Idempotency, IdempotencyLayer, Ledger, MemoryLedger};
pub use self::retry::{Backoff, Retry, RetryLayer, RetryPolicy};
pub use self::timeout::{Timeout, TimeoutLayer};
pub use self::tower::{Delivery, HandlerService, TowerHandler, TowerLayer};
pub(crate) use self::tracing::delivery_span;
pub use self::tracing::{Tracing, TracingLayer};

/// One of two handlers: what an `Option<Layer>` makes.
#[derive(Clone, Debug)]
pub enum Either<A, B> {
    /// The first.
    Left(A),
    /// The second.
    Right(B),
}

impl<A: Handler, B: Handler> Handler for Either<A, B> {
    fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
    ) -> impl Future<Output = HandlerResult> + Send {
        match self {
            Either::Left(a) => EitherFuture::Left(a.handle(event, ctx)),
            Either::Right(b) => EitherFuture::Right(b.handle(event, ctx)),
        }
    }
}

/// Applies `layer` when it is `Some`, else passes the handler through.
pub(crate) fn optional<L: Layer<H>, H>(layer: Option<L>, inner: H) -> Either<L::Service, H> {
    match layer {
        Some(l) => Either::Left(l.layer(inner)),
        None => Either::Right(inner),
    }
}
