//! The background tasks behind `watch_head`: one sends this schema's
//! notification after appends, one listens to it and updates the head.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use crate::store::Inner;

/// Sends a notification each time `wake` is signalled; signals that arrive
/// while one is being sent are coalesced into the next.
pub(crate) async fn notify(store: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        if let Err(error) = inner.send_notification().await {
            tracing::warn!(%error, channel = %inner.sql.channel, "could not notify of an append");
        }
    }
}

/// Listens on `channel` and publishes the head after each notification, and
/// every `interval` without one. Reconnects when the connection drops.
pub(crate) async fn listen(store: Weak<Inner>, pool: PgPool, channel: String, interval: Duration) {
    let mut listener: Option<PgListener> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if store.strong_count() == 0 {
            return;
        }
        match listener.as_mut() {
            None => match connect(&pool, &channel).await {
                Ok(l) => listener = Some(l),
                Err(error) => {
                    tracing::warn!(%error, %channel, "cannot listen for new events; polling");
                    tick.tick().await;
                }
            },
            Some(l) => {
                tokio::select! {
                    received = l.try_recv() => match received {
                        Ok(Some(_)) => while l.next_buffered().is_some() {},
                        // The connection dropped and was made again:
                        // notifications may have been missed, so look.
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(%error, %channel, "lost the notification listener");
                            listener = None;
                        }
                    },
                    _ = tick.tick() => {}
                }
            }
        }
        let Some(inner) = store.upgrade() else {
            return;
        };
        if inner.head.receiver_count() == 0 {
            continue;
        }
        match inner.head().await {
            Ok(head) => {
                inner.head.send_if_modified(|current| {
                    let newer = head > *current;
                    if newer {
                        *current = head;
                    }
                    newer
                });
            }
            Err(error) => tracing::warn!(%error, %channel, "could not read the head"),
        }
    }
}

async fn connect(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
