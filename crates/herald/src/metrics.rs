//! The metrics Herald reports through the [`metrics`] facade.
//!
//! The facade lets the application choose the exporter (Prometheus, say)
//! and costs an atomic load per call when none is installed, so these sit
//! on the failure paths freely; the publish path reports none.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `herald_dead_letters_recorded_total` | counter | `subscriber` | events written to the dead letters (a repeated failure of one event counts again) |
//! | `herald_dead_letters_resolved_total` | counter | `subscriber`, `outcome` (`retried`, `discarded`) | dead letters removed through the bus |
//! | `herald_dead_letters` | gauge | `subscriber` | dead letters in the store, set by [`Bus::dead_letter_counts`](crate::Bus::dead_letter_counts) |
//! | `herald_durable_retries_scheduled_total` | counter | `subscriber` | retries a durable subscriber scheduled instead of waiting in place |
//! | `herald_durable_held_back` | gauge | `subscriber` | events a durable subscriber holds back now: waiting for a retry, or behind one in their stream (its partition workers add up) |
//! | `herald_relay_forwarded_total` | counter | `relay` | events a [relay](crate::relay) published and the broker confirmed (a republished event counts again) |
//! | `herald_relay_lag` | gauge | `relay` | positions between the store's head, as the relay last read it, and its checkpoint |
//! | `herald_relay_publish_failures_total` | counter | `relay` | a relay's failed publish calls (each batch is published again) |

pub(crate) fn dead_letter_recorded(subscriber: &str) {
    metrics::counter!("herald_dead_letters_recorded_total", "subscriber" => subscriber.to_owned())
        .increment(1);
}

pub(crate) fn dead_letter_resolved(subscriber: &str, outcome: &'static str) {
    metrics::counter!(
        "herald_dead_letters_resolved_total",
        "subscriber" => subscriber.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

pub(crate) fn dead_letter_count(subscriber: &str, count: u64) {
    // A gauge holds an f64; counts stay far below 2^53.
    metrics::gauge!("herald_dead_letters", "subscriber" => subscriber.to_owned()).set(count as f64);
}

pub(crate) fn durable_retry_scheduled(subscriber: &str) {
    metrics::counter!("herald_durable_retries_scheduled_total", "subscriber" => subscriber.to_owned())
        .increment(1);
}

/// One runner's share of `herald_durable_held_back`: it moves the gauge by
/// its own changes, so that the partition workers of a competing
/// subscriber add up, and takes its share back when it ends.
pub(crate) struct HeldBack {
    gauge: metrics::Gauge,
    reported: usize,
}

impl HeldBack {
    pub(crate) fn new(subscriber: &str) -> Self {
        Self {
            gauge: metrics::gauge!("herald_durable_held_back", "subscriber" => subscriber.to_owned()),
            reported: 0,
        }
    }

    pub(crate) fn set(&mut self, held: usize) {
        // Counts stay far below 2^53.
        if held > self.reported {
            self.gauge.increment((held - self.reported) as f64);
        } else if held < self.reported {
            self.gauge.decrement((self.reported - held) as f64);
        }
        self.reported = held;
    }
}

impl Drop for HeldBack {
    fn drop(&mut self) {
        self.set(0);
    }
}
