//! Handlers: what a subscriber runs for each event, and the context it gets.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use uuid::Uuid;

use crate::bus::BusInner;
use crate::error::{HandlerResult, PublishError};
use crate::event::{Event, NewEvent, Payload, RecordedEvent, Typed};
use crate::id::EventId;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Handles events for a subscriber.
///
/// Implement it with an `async fn`. The result says what happens next: `Ok`
/// is done; an error carries a [`Disposition`](crate::Disposition) (retry,
/// dead-letter, skip or stop).
///
/// Closures adapt with [`handler_fn`], and handlers of a typed event with
/// [`typed`].
///
/// # Examples
///
/// ```
/// use herald::{Context, Handler, HandlerError, RecordedEvent};
///
/// struct NotifyUser;
///
/// impl Handler for NotifyUser {
///     async fn handle(&self, event: &RecordedEvent, _ctx: &Context) -> Result<(), HandlerError> {
///         println!("order {} created", event.data());
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles one event.
    fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
    ) -> impl Future<Output = HandlerResult> + Send;
}

/// The object-safe form of [`Handler`], behind [`BoxHandler`].
trait DynHandler: Send + Sync + 'static {
    fn handle_dyn<'a>(
        &'a self,
        event: &'a RecordedEvent,
        ctx: &'a Context,
    ) -> BoxFuture<'a, HandlerResult>;
}

impl<H: Handler> DynHandler for H {
    fn handle_dyn<'a>(
        &'a self,
        event: &'a RecordedEvent,
        ctx: &'a Context,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.handle(event, ctx))
    }
}

/// A type-erased, shareable handler.
///
/// Middleware stacks are generic; the bus erases each subscriber's stack
/// into one `BoxHandler`, so a call costs one allocation for the whole stack.
#[derive(Clone)]
pub struct BoxHandler(Arc<dyn DynHandler>);

impl BoxHandler {
    /// Erases a handler's type.
    pub fn new<H: Handler>(handler: H) -> Self {
        Self(Arc::new(handler))
    }
}

impl fmt::Debug for BoxHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxHandler")
    }
}

impl Handler for BoxHandler {
    // An async fn rather than returning the box: the boxed future names one
    // lifetime, the trait's future captures three.
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        self.0.handle_dyn(event, ctx).await
    }
}

impl<H: Handler> Handler for Arc<H> {
    fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
    ) -> impl Future<Output = HandlerResult> + Send {
        (**self).handle(event, ctx)
    }
}

/// A handler that finishes without awaiting anything: updating an
/// in-memory projection, counting, logging.
///
/// Subscribe one with [`Subscriber::new_sync`](crate::Subscriber::new_sync).
/// An inline sync subscriber with no retry policy, timeout, ledger or layers
/// of its own (and no bus-wide layers) is called directly, with no future
/// and no allocation; its failures go through the same isolation, logging
/// and dead letters as any subscriber's. With any of those, it runs in the
/// ordinary middleware stack. Closures `Fn(&RecordedEvent, &Context) ->
/// HandlerResult` are sync handlers.
///
/// It must not block: it runs on the publisher's task.
///
/// # Examples
///
/// ```
/// use herald::{Bus, Context, RecordedEvent, Subscriber};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = Bus::new();
/// let count = Arc::new(AtomicU64::new(0));
/// let c = Arc::clone(&count);
/// bus.subscribe(
///     Subscriber::new_sync("count", move |_e: &RecordedEvent, _c: &Context| {
///         c.fetch_add(1, Ordering::Relaxed);
///         Ok(())
///     })
///     .topic("#"),
/// ).unwrap();
/// bus.publish("order.created", serde_json::json!({})).await.unwrap();
/// assert_eq!(count.load(Ordering::Relaxed), 1);
/// # }
/// ```
pub trait SyncHandler: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult;
}

impl<F> SyncHandler for F
where
    F: Fn(&RecordedEvent, &Context) -> HandlerResult + Send + Sync + 'static,
{
    fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        self(event, ctx)
    }
}

/// A [`SyncHandler`] used where a [`Handler`] is expected.
pub struct SyncAdapter<H: ?Sized>(pub(crate) Arc<H>);

impl<H: SyncHandler + ?Sized> Handler for SyncAdapter<H> {
    fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
    ) -> impl Future<Output = HandlerResult> + Send {
        std::future::ready(self.0.handle(event, ctx))
    }
}

/// A handler made from a closure; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

/// Makes a handler from a closure that takes the event and the context by
/// value (both are cheap clones) and returns a future.
///
/// # Examples
///
/// ```
/// use herald::{handler_fn, Bus, Subscriber};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = Bus::new();
/// bus.subscribe(
///     Subscriber::new("audit", handler_fn(|event, _ctx| async move {
///         println!("{} {}", event.event_type(), event.data());
///         Ok(())
///     }))
///     .topic("#"),
/// ).unwrap();
/// # }
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(RecordedEvent, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    HandlerFn { f }
}

impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(RecordedEvent, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn handle(
        &self,
        event: &RecordedEvent,
        ctx: &Context,
    ) -> impl Future<Output = HandlerResult> + Send {
        (self.f)(event.clone(), ctx.clone())
    }
}

/// A handler of one typed event; see [`typed`].
pub struct TypedFn<E, F> {
    f: F,
    _event: PhantomData<fn() -> E>,
}

/// Makes a handler that receives the payload decoded into `E`.
///
/// A payload that does not decode is a [`HandlerError`](crate::HandlerError)
/// of kind [`Decode`](crate::ErrorKind::Decode) whose message names the type
/// and the field; it goes to the dead letters at once, as retrying cannot fix
/// it. It never panics.
///
/// # Examples
///
/// ```
/// use herald::{typed, Bus, Event, Subscriber};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Event)]
/// #[event(name = "order.created")]
/// struct OrderCreated { order_id: u64 }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = Bus::new();
/// bus.subscribe(
///     Subscriber::new("notify", typed(|order: herald::Typed<OrderCreated>, _ctx| async move {
///         println!("order {} created", order.order_id);
///         Ok(())
///     }))
///     .topic(OrderCreated::NAME),
/// ).unwrap();
/// bus.publish_event(&OrderCreated { order_id: 7 }).await.unwrap();
/// # }
/// ```
pub fn typed<E, F, Fut>(f: F) -> TypedFn<E, F>
where
    E: Event,
    F: Fn(Typed<E>, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    TypedFn {
        f,
        _event: PhantomData,
    }
}

impl<E, F, Fut> Handler for TypedFn<E, F>
where
    E: Event,
    F: Fn(Typed<E>, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        let decoded = event.decode::<E>()?;
        (self.f)(Typed::new(decoded, event.clone()), ctx.clone()).await
    }
}

/// What a subscriber shares between the contexts of its deliveries.
pub(crate) struct ContextShared {
    pub(crate) subscriber: Arc<str>,
    pub(crate) bus: Weak<BusInner>,
}

/// The context of one delivery: which subscriber, which attempt, and a way to
/// publish follow-up events.
///
/// Events published through the context carry the triggering event's
/// correlation id and have its id as causation id.
///
/// # Examples
///
/// ```
/// use herald::{handler_fn, Bus, Subscriber};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = Bus::new();
/// bus.subscribe(
///     Subscriber::new("ship", handler_fn(|event, ctx| async move {
///         ctx.publish("order.shipped", event.data().clone()).await?;
///         Ok(())
///     }))
///     .topic("order.paid"),
/// ).unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct Context {
    shared: Arc<ContextShared>,
    attempt: u32,
    trigger: Option<(EventId, Uuid)>,
}

impl Context {
    pub(crate) fn for_delivery(shared: &Arc<ContextShared>, event: &RecordedEvent) -> Self {
        Self {
            shared: Arc::clone(shared),
            attempt: 1,
            trigger: Some((event.id(), event.correlation_id())),
        }
    }

    /// A context for calling a handler directly, in a test: attempt 1, no
    /// triggering event, and no bus (publishing returns
    /// [`PublishError::ShutDown`]).
    pub fn detached(subscriber: &str) -> Self {
        Self {
            shared: Arc::new(ContextShared {
                subscriber: Arc::from(subscriber),
                bus: Weak::new(),
            }),
            attempt: 1,
            trigger: None,
        }
    }

    /// The subscriber's name.
    pub fn subscriber(&self) -> &str {
        &self.shared.subscriber
    }

    /// The attempt number, from 1; the retry middleware counts it up.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// This context for another attempt.
    pub fn with_attempt(&self, attempt: u32) -> Self {
        Self {
            attempt,
            ..self.clone()
        }
    }

    /// Publishes a follow-up event.
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`](crate::Bus::publish).
    pub async fn publish(
        &self,
        event_type: &str,
        data: impl Into<Payload>,
    ) -> Result<RecordedEvent, PublishError> {
        self.publish_new(NewEvent::new(event_type.to_owned(), data))
            .await
    }

    /// Publishes a typed follow-up event.
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`](crate::Bus::publish).
    pub async fn publish_event<E: Event>(&self, event: &E) -> Result<RecordedEvent, PublishError> {
        self.publish_new(NewEvent::from_event(event)?).await
    }

    /// Publishes a follow-up event with its own metadata; the correlation and
    /// causation ids are set from the triggering event.
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`](crate::Bus::publish).
    pub async fn publish_new(&self, mut event: NewEvent) -> Result<RecordedEvent, PublishError> {
        let bus = self.shared.bus.upgrade().ok_or(PublishError::ShutDown)?;
        if let Some((id, correlation)) = self.trigger {
            event.metadata.correlation_id = Some(correlation);
            event.metadata.causation_id = Some(*id.as_uuid());
        }
        BusInner::publish_new(&bus, event).await
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("subscriber", &self.subscriber())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
