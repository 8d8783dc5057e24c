//! Parks events the layers below gave up on.

use std::sync::Arc;

use crate::dead_letter::{DeadLetterStore, NewDeadLetter};
use crate::error::AttemptError;
use crate::{Context, Disposition, Handler, HandlerError, HandlerResult, RecordedEvent};

/// Writes given-up events to a dead-letter store; see [`DeadLetters`].
#[derive(Clone)]
pub struct DeadLetterLayer {
    store: Arc<dyn DeadLetterStore>,
}

impl DeadLetterLayer {
    /// A layer writing to `store`.
    pub fn new(store: Arc<dyn DeadLetterStore>) -> Self {
        Self { store }
    }
}

impl<H> tower_layer::Layer<H> for DeadLetterLayer {
    type Service = DeadLetters<H>;

    fn layer(&self, inner: H) -> DeadLetters<H> {
        DeadLetters {
            inner,
            store: Arc::clone(&self.store),
        }
    }
}

/// When the inner handler fails for good (any error but a
/// [`Skip`](Disposition::Skip)), records the event, the subscriber, every
/// attempt's error and the times in the dead-letter store, logs it at
/// `ERROR`, and returns the error marked with the dead letter's id
/// ([`HandlerError::dead_letter_id`](crate::HandlerError::dead_letter_id)).
///
/// If the store itself fails, the error is logged and returned unmarked.
pub struct DeadLetters<H> {
    inner: H,
    store: Arc<dyn DeadLetterStore>,
}

impl<H> DeadLetters<H> {
    /// The inner handler.
    pub fn get_ref(&self) -> &H {
        &self.inner
    }

    /// The inner handler, by value.
    pub fn into_inner(self) -> H {
        self.inner
    }
}

impl<H: Handler> Handler for DeadLetters<H> {
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        match self.inner.handle(event, ctx).await {
            Ok(()) => Ok(()),
            Err(err) if err.disposition() == Disposition::Skip => Err(err),
            // Out of line and boxed: keeps the success path's future small.
            Err(err) => Box::pin(park(&*self.store, event, ctx, err)).await,
        }
    }
}

/// Records a given-up event in `store`; returns the error, marked with the
/// dead letter's id when the store took it. Skips are not parked.
pub(crate) async fn park(
    store: &dyn DeadLetterStore,
    event: &RecordedEvent,
    ctx: &Context,
    mut err: HandlerError,
) -> HandlerResult {
    if err.disposition() == Disposition::Skip {
        return Err(err);
    }
    let mut history = err.take_history();
    if history.is_empty() {
        history.push(AttemptError::new(ctx.attempt(), &err));
    }
    let attempt = history.last().map_or(ctx.attempt(), |a| a.attempt);
    let letter = NewDeadLetter {
        subscriber: ctx.subscriber().to_owned(),
        event: event.clone(),
        reason: err.to_string(),
        errors: history.clone(),
    };
    match store.record(letter).await {
        Ok(dead) => {
            crate::metrics::dead_letter_recorded(ctx.subscriber());
            tracing::error!(
                event_id = %event.id(),
                event_type = event.event_type(),
                subscriber = ctx.subscriber(),
                attempt,
                error = %err,
                dead_letter_id = %dead.id,
                "handler gave up, event dead-lettered"
            );
            Err(err.with_history(history).with_dead_letter(dead.id))
        }
        Err(store_err) => {
            tracing::error!(
                event_id = %event.id(),
                event_type = event.event_type(),
                subscriber = ctx.subscriber(),
                attempt,
                error = %err,
                store_error = %store_err,
                "handler gave up and the dead-letter store failed"
            );
            Err(err.with_history(history))
        }
    }
}
