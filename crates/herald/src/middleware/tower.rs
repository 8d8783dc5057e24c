//! Runs tower layers around a handler.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, ErrorKind};
use crate::handler::BoxFuture;
use crate::{Context, Handler, HandlerError, HandlerResult, RecordedEvent};

/// What a handler turned into a tower service receives.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event.
    pub event: RecordedEvent,
    /// The delivery's context.
    pub ctx: Context,
}

/// A handler as a tower [`Service`] of [`Delivery`].
pub struct HandlerService<H> {
    inner: Arc<H>,
}

impl<H> Clone for HandlerService<H> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<H: Handler> Service<Delivery> for HandlerService<H> {
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, HandlerResult>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.handle(&delivery.event, &delivery.ctx).await })
    }
}

/// Applies a tower layer to a handler; see [`TowerHandler`].
///
/// # Examples
///
/// ```
/// use herald::middleware::TowerLayer;
/// use herald::{handler_fn, Subscriber};
///
/// // At most 4 deliveries of this subscriber run at once, whatever its
/// // concurrency.
/// let limit = TowerLayer::new(tower::limit::ConcurrencyLimitLayer::new(4));
/// let sub = Subscriber::new("s", handler_fn(|_, _| async { Ok(()) }))
///     .topic("#")
///     .layer(limit);
/// ```
#[derive(Clone, Debug)]
pub struct TowerLayer<L> {
    layer: L,
}

impl<L> TowerLayer<L> {
    /// Wraps a tower layer.
    pub fn new(layer: L) -> Self {
        Self { layer }
    }
}

impl<H, L> Layer<H> for TowerLayer<L>
where
    H: Handler,
    L: Layer<HandlerService<H>>,
{
    type Service = TowerHandler<L::Service>;

    fn layer(&self, inner: H) -> Self::Service {
        TowerHandler {
            service: tokio::sync::Mutex::new(self.layer.layer(HandlerService {
                inner: Arc::new(inner),
            })),
        }
    }
}

/// A tower service of [`Delivery`] used as a handler.
///
/// The service is shared by every delivery: readiness is awaited under a
/// lock, so layers that keep state in the service (rate limits, concurrency
/// limits) see every call. An error of the service that is a
/// [`HandlerError`] keeps its disposition; any other error (a tower timeout's
/// `Elapsed`, a load shed) becomes a retryable error of kind
/// [`Service`](ErrorKind::Service).
pub struct TowerHandler<S> {
    service: tokio::sync::Mutex<S>,
}

fn to_handler_error(error: impl Into<BoxError>) -> HandlerError {
    match error.into().downcast::<HandlerError>() {
        Ok(e) => *e,
        Err(other) => HandlerError::retry(other).with_kind(ErrorKind::Service),
    }
}

impl<S> Handler for TowerHandler<S>
where
    S: Service<Delivery, Response = ()> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        let future = {
            let mut service = self.service.lock().await;
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(to_handler_error)?;
            service.call(Delivery {
                event: event.clone(),
                ctx: ctx.clone(),
            })
        };
        future.await.map_err(to_handler_error)
    }
}
