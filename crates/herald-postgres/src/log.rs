//! The stream behind `read_all`: batches of the global log, one fetched
//! ahead while the previous one is consumed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::future::BoxFuture;
use herald::RecordedEvent;
use herald::store::StoreError;

use crate::store::{Filter, Inner};

/// What one batch brought: the settled events that pass the filters, the
/// last settled position, and whether the log may go on.
pub(crate) type Batch = (Vec<RecordedEvent>, i64, bool);

/// Reads the global log in batches. As soon as a batch arrives, the next
/// one is requested, so that the database works on it while the caller
/// consumes this one.
pub(crate) struct LogStream<'a> {
    inner: &'a Inner,
    filter: Arc<Filter>,
    /// Rows per batch.
    batch: i64,
    /// At most this many events in all.
    limit: usize,
    /// Events handed out or buffered.
    taken: usize,
    /// The position the next batch starts after.
    after: i64,
    /// No batch is to be requested any more.
    last_requested: bool,
    buffer: VecDeque<RecordedEvent>,
    next: Option<BoxFuture<'a, Result<Batch, StoreError>>>,
    /// A failed batch, reported after the buffered events.
    error: Option<StoreError>,
}

impl<'a> LogStream<'a> {
    pub(crate) fn new(
        inner: &'a Inner,
        filter: Filter,
        after: i64,
        batch: i64,
        limit: usize,
    ) -> Self {
        Self {
            inner,
            filter: Arc::new(filter),
            batch,
            limit,
            taken: 0,
            after,
            last_requested: limit == 0,
            buffer: VecDeque::new(),
            next: None,
            error: None,
        }
    }

    /// Requests the batch after `self.after`, unless none is to come.
    fn request(&mut self) {
        if self.last_requested || self.next.is_some() || self.taken >= self.limit {
            return;
        }
        // Without filters every row is an event to yield: fetch no more
        // than the limit leaves.
        let fetch = if self.filter.is_empty() {
            self.batch
                .min((self.limit - self.taken).min(i64::MAX as usize) as i64)
        } else {
            self.batch
        };
        let (inner, filter, after) = (self.inner, Arc::clone(&self.filter), self.after);
        self.next = Some(Box::pin(async move {
            inner.read_batch(after, fetch, &filter).await
        }));
    }
}

impl Stream for LogStream<'_> {
    type Item = Result<RecordedEvent, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            // Drive the batch being fetched, even while events are buffered.
            if let Some(next) = this.next.as_mut() {
                if let Poll::Ready(result) = next.as_mut().poll(cx) {
                    this.next = None;
                    match result {
                        Ok(batch) => {
                            this.accept(batch);
                            // Send the request for the batch after it.
                            continue;
                        }
                        Err(e) => {
                            this.error = Some(e);
                            this.last_requested = true;
                        }
                    }
                }
            }
            if let Some(event) = this.buffer.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if let Some(e) = this.error.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if this.next.is_none() {
                this.request();
                if this.next.is_none() {
                    return Poll::Ready(None);
                }
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl LogStream<'_> {
    /// Buffers a batch that arrived, and requests the one after it.
    fn accept(&mut self, (events, last, more): Batch) {
        let room = self.limit - self.taken;
        let before = self.buffer.len();
        self.buffer.extend(events.into_iter().take(room));
        self.taken += self.buffer.len() - before;
        self.after = last;
        self.last_requested = !more;
        self.request();
    }
}
