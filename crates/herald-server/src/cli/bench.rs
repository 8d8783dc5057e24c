//! `herald bench`: appends events through the chosen path (HTTP or a store)
//! and reports the throughput and the latency of each append.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::Metadata;
use herald::store::ExpectedVersion;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use super::client::{CliError, EventSpec, PublishRequest, SharedClient};

/// How to run a benchmark.
#[derive(Clone, Debug)]
pub(crate) struct BenchPlan {
    /// Events in all.
    pub(crate) count: u64,
    /// Events per append.
    pub(crate) batch: u64,
    /// Appends in flight at once.
    pub(crate) concurrency: usize,
    /// Bytes of padding in each payload.
    pub(crate) payload_size: usize,
    /// The events' type.
    pub(crate) event_type: String,
    /// Each worker appends to `<prefix>-<worker>`.
    pub(crate) stream_prefix: String,
}

/// What a benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BenchReport {
    /// `http` or the store's kind.
    pub(crate) path: String,
    /// Events appended.
    pub(crate) events: u64,
    /// Appends made.
    pub(crate) requests: u64,
    /// Events per append.
    pub(crate) batch: u64,
    /// Appends in flight at once.
    pub(crate) concurrency: usize,
    /// Bytes of padding in each payload.
    pub(crate) payload_size: usize,
    /// Wall time, in seconds.
    pub(crate) elapsed_secs: f64,
    /// Events per second.
    pub(crate) events_per_sec: f64,
    /// Appends per second.
    pub(crate) requests_per_sec: f64,
    /// Median append latency, in milliseconds.
    pub(crate) p50_ms: f64,
    /// 99th percentile append latency, in milliseconds.
    pub(crate) p99_ms: f64,
    /// Slowest append, in milliseconds.
    pub(crate) max_ms: f64,
}

impl BenchReport {
    /// The report in words.
    pub(crate) fn text(&self) -> String {
        format!(
            "{} events in {} appends of {} ({} concurrent, {} B payloads) over {}: {:.3} s\n\
             throughput: {:.0} events/s, {:.0} appends/s\n\
             latency per append: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.events,
            self.requests,
            self.batch,
            self.concurrency,
            self.payload_size,
            self.path,
            self.elapsed_secs,
            self.events_per_sec,
            self.requests_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
        )
    }
}

/// The `q` quantile of sorted latencies.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the plan; `show_progress` draws a bar on stderr.
pub(crate) async fn run(
    client: SharedClient,
    path: String,
    plan: BenchPlan,
    show_progress: bool,
) -> Result<BenchReport, CliError> {
    if plan.count == 0 || plan.batch == 0 || plan.concurrency == 0 {
        return Err(CliError::invalid(
            "bench plan",
            "--count, --batch and --concurrency must be at least 1",
        ));
    }
    let bar = ProgressBar::with_draw_target(
        Some(plan.count),
        if show_progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let claimed = Arc::new(AtomicU64::new(0));
    let pad = "x".repeat(plan.payload_size);
    let plan = Arc::new(plan);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..plan.concurrency {
        let client = Arc::clone(&client);
        let claimed = Arc::clone(&claimed);
        let plan = Arc::clone(&plan);
        let bar = bar.clone();
        let pad = pad.clone();
        workers.spawn(async move {
            let stream = format!("{}-{worker}", plan.stream_prefix);
            let mut latencies = Vec::new();
            loop {
                let first = claimed.fetch_add(plan.batch, Ordering::Relaxed);
                if first >= plan.count {
                    return Ok::<_, CliError>(latencies);
                }
                let n = plan.batch.min(plan.count - first);
                let events = (first..first + n)
                    .map(|seq| EventSpec {
                        event_type: plan.event_type.clone(),
                        data: json!({ "seq": seq, "pad": pad }),
                        metadata: Metadata::default(),
                        id: None,
                    })
                    .collect();
                let request = PublishRequest {
                    stream: Some(stream.clone()),
                    expected: ExpectedVersion::Any,
                    events,
                };
                let sent = Instant::now();
                client.publish(request).await?;
                latencies.push(sent.elapsed());
                bar.inc(n);
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(Ok(mut mine)) => latencies.append(&mut mine),
            Ok(Err(err)) => {
                workers.abort_all();
                bar.abandon();
                return Err(err);
            }
            Err(err) => {
                workers.abort_all();
                bar.abandon();
                return Err(CliError::invalid(
                    "bench",
                    format!("a worker stopped: {err}"),
                ));
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    latencies.sort_unstable();
    let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let requests = latencies.len() as u64;
    Ok(BenchReport {
        path,
        events: plan.count,
        requests,
        batch: plan.batch,
        concurrency: plan.concurrency,
        payload_size: plan.payload_size,
        elapsed_secs: elapsed.as_secs_f64(),
        events_per_sec: plan.count as f64 / secs,
        requests_per_sec: requests as f64 / secs,
        p50_ms: ms(quantile(&latencies, 0.50)),
        p99_ms: ms(quantile(&latencies, 0.99)),
        max_ms: ms(latencies.last().copied().unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_rank_at_or_above() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&sorted, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&sorted[..1], 0.99), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
