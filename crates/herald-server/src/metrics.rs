//! `GET /metrics`: Prometheus text.
//!
//! A Prometheus recorder is installed for the process the first time a
//! router is built (the `metrics` facade takes one recorder per process, so
//! servers started in one process share it). Herald's core reports its
//! dead-letter and retry metrics through the same facade.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `herald_events_appended_total` | counter | `endpoint` (`append`, `publish`) | events written through the API |
//! | `herald_subscriber_delivered_total` | counter | `subscriber` | deliveries a subscriber handled |
//! | `herald_subscriber_failed_total` | counter | `subscriber` | deliveries that failed for good |
//! | `herald_subscriber_dead_lettered_total` | counter | `subscriber` | failed deliveries written to the dead letters |
//! | `herald_subscriber_lag` | gauge | `subscriber` | positions a durable subscriber is behind the head |
//! | `herald_dead_letters` | gauge | `subscriber` | dead letters in the store |
//! | `herald_durable_retries_scheduled_total` | counter | `subscriber` | retries a durable subscriber (a webhook, say) scheduled |
//! | `herald_durable_held_back` | gauge | `subscriber` | events a durable subscriber holds back, waiting for a retry or behind one in their stream |
//! | `herald_http_request_duration_seconds` | histogram | `method`, `route`, `status` | API request latency |
//!
//! The subscriber figures are read from the bus when `/metrics` is scraped.

use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald::DeliveryMode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;

/// Latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first use.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".to_owned()),
                    LATENCY_BUCKETS,
                )
                .expect("the latency buckets are not empty")
        };
        builder().install_recorder().unwrap_or_else(|err| {
            // Another recorder owns the facade (an embedding application's):
            // serve an empty one rather than fail.
            tracing::warn!(error = %err, "a metrics recorder is installed already; /metrics will be empty");
            builder().build_recorder().handle()
        })
    })
}

/// The metrics route.
pub(crate) fn routes() -> Router<AppState> {
    handle();
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>) -> Response {
    for sub in state.bus.subscribers() {
        let name = sub.name.clone();
        metrics::counter!("herald_subscriber_delivered_total", "subscriber" => name.clone())
            .absolute(sub.handled);
        metrics::counter!("herald_subscriber_failed_total", "subscriber" => name.clone())
            .absolute(sub.failed);
        metrics::counter!("herald_subscriber_dead_lettered_total", "subscriber" => name.clone())
            .absolute(sub.dead_lettered);
        if sub.mode == DeliveryMode::Durable {
            if let Ok(lag) = state.bus.lag(&sub.name).await {
                // A gauge holds an f64; positions stay far below 2^53.
                metrics::gauge!("herald_subscriber_lag", "subscriber" => name).set(lag as f64);
            }
        }
    }
    // Sets the `herald_dead_letters` gauges as it counts.
    if let Err(err) = state.bus.dead_letter_counts().await {
        tracing::warn!(error = %err, "cannot count the dead letters for /metrics");
    }
    let handle = handle();
    handle.run_upkeep();
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Counts events written through the API.
pub(crate) fn events_appended(endpoint: &'static str, count: u64) {
    if count > 0 {
        metrics::counter!("herald_events_appended_total", "endpoint" => endpoint).increment(count);
    }
}

/// Records each request's latency, labelled by its route pattern (not its
/// path, which would make one series per stream).
pub(crate) async fn track_latency(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics::histogram!(
        "herald_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_str().to_owned(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}
