//! Runs a broker subscriber: pulls deliveries from a consumer and settles
//! them through the subscriber's stack.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::{ConsumerSpec, Delivery, Transport};

/// The first pause before opening a consumer again; doubled up to
/// [`MAX_PAUSE`] while it keeps failing.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Settles deliveries; implemented by the bus's subscriber core.
pub(crate) trait Settle: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn is_enabled(&self) -> bool;
    /// Marked changed whenever the subscriber is enabled, disabled or
    /// stopped.
    fn watch_state(&self) -> watch::Receiver<()>;
    fn settle(&self, delivery: Delivery) -> impl std::future::Future<Output = ()> + Send;
}

/// A running broker subscriber.
pub(crate) struct BrokerRunner {
    stop: watch::Sender<bool>,
    open: watch::Receiver<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl BrokerRunner {
    pub(crate) fn spawn<S: Settle>(
        runtime: &tokio::runtime::Handle,
        core: Arc<S>,
        transport: Arc<dyn Transport>,
        spec: ConsumerSpec,
        concurrency: usize,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let (opened, open) = watch::channel(false);
        let task = runtime.spawn(run(core, transport, spec, concurrency, stopped, opened));
        Self {
            stop,
            open,
            task: Mutex::new(Some(task)),
        }
    }

    /// Waits until the consumer group is declared and consumed from; `false`
    /// if the runner ended first.
    pub(crate) async fn ready(&self) -> bool {
        let mut open = self.open.clone();
        open.wait_for(|open| *open).await.is_ok()
    }

    /// Stops pulling; deliveries taken and not yet started are given back
    /// to the broker; waits for those being handled.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "broker subscriber ended abnormally");
            }
        }
    }
}

async fn run<S: Settle>(
    core: Arc<S>,
    transport: Arc<dyn Transport>,
    spec: ConsumerSpec,
    concurrency: usize,
    mut stop: watch::Receiver<bool>,
    opened: watch::Sender<bool>,
) {
    let mut state = core.watch_state();
    let mut pause = FIRST_PAUSE;
    let lanes = concurrency.max(1);
    // Each lane gets a share of the prefetch, so what this process holds
    // stays bounded by it.
    let depth = (spec.prefetch / lanes).max(1);
    loop {
        if *stop.borrow() {
            return;
        }
        state.borrow_and_update();
        // A disabled subscriber holds no consumer, so the group's other
        // processes get its share.
        if !core.is_enabled() {
            tokio::select! {
                _ = stop.changed() => {}
                _ = state.changed() => {}
            }
            continue;
        }
        let opening = tokio::select! {
            _ = stop.changed() => continue,
            opening = transport.subscribe(&spec) => opening,
        };
        let mut consumer = match opening {
            Ok(consumer) => consumer,
            Err(err) => {
                tracing::warn!(
                    subscriber = core.name(),
                    transport = transport.name(),
                    error = %err,
                    retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                    "could not open the broker consumer; trying again"
                );
                tokio::select! {
                    _ = stop.changed() => {}
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_PAUSE);
                continue;
            }
        };
        pause = FIRST_PAUSE;
        let _ = opened.send(true);

        let mut senders = Vec::with_capacity(lanes);
        let mut workers = JoinSet::new();
        for _ in 0..lanes {
            let (tx, rx) = mpsc::channel(depth);
            senders.push(tx);
            workers.spawn(lane(Arc::clone(&core), rx, stop.clone()));
        }
        let failed = loop {
            state.borrow_and_update();
            if !core.is_enabled() {
                break false;
            }
            // `next` is dropped when the state changes: consumers must be
            // cancel-safe (a message is never half taken).
            let next = tokio::select! {
                _ = stop.changed() => break false,
                _ = state.changed() => continue,
                next = consumer.next() => next,
            };
            match next {
                Ok(delivery) => {
                    let lane = &senders[lane_of(&delivery, lanes)];
                    // Waits while the lane is full: that is the backpressure
                    // that keeps prefetched deliveries bounded.
                    if let Err(mpsc::error::SendError(delivery)) = lane.send(delivery).await {
                        release(core.name(), delivery).await;
                        break false;
                    }
                }
                Err(err) => {
                    tracing::warn!(
                        subscriber = core.name(),
                        transport = transport.name(),
                        error = %err,
                        "broker consumer failed; opening a new one"
                    );
                    break true;
                }
            }
        };
        drop(senders);
        while workers.join_next().await.is_some() {}
        drop(consumer);
        if failed {
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// Settles one lane's deliveries in order; once stopping, gives the rest
/// back unhandled.
async fn lane<S: Settle>(
    core: Arc<S>,
    mut rx: mpsc::Receiver<Delivery>,
    stop: watch::Receiver<bool>,
) {
    while let Some(delivery) = rx.recv().await {
        if *stop.borrow() || !core.is_enabled() {
            release(core.name(), delivery).await;
        } else {
            core.settle(delivery).await;
        }
    }
}

async fn release(subscriber: &str, delivery: Delivery) {
    let event_id = delivery.event().id();
    if let Err(err) = delivery.release().await {
        tracing::warn!(
            subscriber,
            %event_id,
            error = %err,
            "could not give a delivery back; the broker delivers it again when the consumer closes"
        );
    }
}

/// Events of one stream go to one lane, so that they are handled in the
/// order the broker delivered them; events without a stream spread by id.
fn lane_of(delivery: &Delivery, lanes: usize) -> usize {
    if lanes == 1 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match delivery.event().stream() {
        Some(stream) => stream.hash(&mut hasher),
        None => delivery.event().id().hash(&mut hasher),
    }
    usize::try_from(hasher.finish() % lanes as u64).unwrap_or(0)
}
