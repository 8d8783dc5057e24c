//! The `herald` command line.
//!
//! `herald serve` runs the server. Every other command talks to a running
//! server over HTTP (`HERALD_URL`, default `http://127.0.0.1:7171`, token in
//! `HERALD_TOKEN`), or, with `--store URL`, straight to a store. Both paths
//! implement one [`Client`](client::Client) trait, so each command is
//! written once. Results are tables by default and JSON with `--json`.
//!
//! ```sh
//! herald publish order.created '{"order_id": 42}' --stream order-42
//! herald read order-42
//! herald --store sqlite://herald.db dlq list --json
//! ```

mod bench;
mod client;
mod direct;
mod http;
mod output;
mod trace;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use herald::store::{Direction, ExpectedVersion};
use herald::{EventId, Metadata};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use uuid::Uuid;

use self::client::{
    CliError, DeadLetterFilter, EventSpec, PublishRequest, ReplayStart, Retried, SharedClient,
    StreamQuery,
};
use self::output::Output;
use crate::config::{DEFAULT_SCHEMA, ServeArgs, ServeConfig};
use crate::server::Server;

/// The server's address when `HERALD_URL` is not set.
const DEFAULT_URL: &str = "http://127.0.0.1:7171";

/// Herald: an event store and bus with an HTTP API, live subscriptions,
/// webhooks and a web UI.
///
/// Commands other than `serve` talk to a running server (HERALD_URL,
/// HERALD_TOKEN) or, with --store, straight to a store.
#[derive(Debug, Parser)]
#[command(name = "herald", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Where the commands go and how they print.
#[derive(Debug, Args)]
struct Global {
    /// Print JSON instead of tables
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    /// URL of the running herald server
    #[arg(long, env = "HERALD_URL", default_value = DEFAULT_URL, global = true, help_heading = "Global options", value_name = "URL")]
    url: String,
    /// Bearer token for the server
    #[arg(
        long,
        env = "HERALD_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Global options",
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Work on this store directly instead of a server: sqlite://PATH or postgres://USER@HOST/DB
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "URL"
    )]
    store: Option<String>,
    /// PostgreSQL schema of the store given with --store [default: herald]
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "NAME"
    )]
    schema: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: HTTP API, live subscriptions, webhooks, web UI
    Serve(ServeArgs),
    /// Publish an event
    Publish(PublishArgs),
    /// Read a stream's events
    Read(ReadArgs),
    /// Print the global log's events, then follow new ones live
    Tail(TailArgs),
    /// Show the causation tree of what an event set off
    Trace(TraceArgs),
    /// List streams
    Streams(StreamsArgs),
    /// Manage the subscribers (webhooks) of a running server
    Subs {
        #[command(subcommand)]
        command: SubsCommand,
    },
    /// Inspect, retry and discard dead letters
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Apply the store's schema migrations (with --store)
    Migrate,
    /// Append events as fast as possible and report events/s and latency
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// Event type, dotted: order.created
    #[arg(value_name = "TYPE")]
    event_type: String,
    /// Payload, a JSON value: '{"order_id": 42}'
    #[arg(value_name = "JSON", value_parser = parse_json)]
    data: Value,
    /// Stream to append to [default: the stream named after the type]
    #[arg(long, value_name = "STREAM")]
    stream: Option<String>,
    /// Metadata, a JSON object: '{"correlation_id": "…", "causation_id": "…", "headers": {"tenant": "acme"}}'
    #[arg(long, value_name = "JSON", value_parser = parse_metadata)]
    metadata: Option<Metadata>,
    /// Event id (a UUID), to make a repeat idempotent [default: a new UUIDv7]
    #[arg(long, value_name = "UUID", value_parser = parse_event_id)]
    id: Option<EventId>,
    /// What the stream's version must be: any, no_stream, exists or a number (needs --stream)
    #[arg(long, value_name = "V", value_parser = parse_expected_version, requires = "stream")]
    expected_version: Option<ExpectedVersion>,
}

#[derive(Debug, Args)]
struct ReadArgs {
    /// The stream
    stream: String,
    /// Version to start at, inclusive [default: the first, or the last with --backward]
    #[arg(long, value_name = "N")]
    from: Option<u64>,
    /// At most this many events
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: usize,
    /// Newest first
    #[arg(long)]
    backward: bool,
}

#[derive(Debug, Args)]
struct TailArgs {
    /// Topic patterns of the types to show: order.* (one segment), order.# (any depth) [default: all]
    #[arg(value_name = "PATTERN")]
    patterns: Vec<String>,
    /// Start after this global position: 0 prints the whole log first, now only new events
    #[arg(long, value_name = "N|now", default_value = "0", value_parser = parse_after)]
    after: StartAfter,
    /// Stop after this many events [default: follow until interrupted]
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

#[derive(Debug, Args)]
struct TraceArgs {
    /// The event whose consequences to show
    #[arg(value_name = "EVENT_ID", value_parser = parse_event_id)]
    id: EventId,
}

#[derive(Debug, Args)]
struct StreamsArgs {
    /// Only streams whose name starts with this
    #[arg(long, value_name = "P")]
    prefix: Option<String>,
    /// At most this many streams
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: usize,
}

#[derive(Debug, Subcommand)]
enum SubsCommand {
    /// List the subscribers with their status, checkpoint and lag
    List,
    /// Enable a subscriber: it receives events again
    Enable {
        /// The subscriber
        name: String,
    },
    /// Disable a subscriber: it receives nothing until enabled
    Disable {
        /// The subscriber
        name: String,
    },
    /// Move a subscriber's checkpoint back so it receives events again
    Replay {
        /// The subscriber
        name: String,
        /// Where to start: start, a global position (events after it), or an RFC 3339 time
        #[arg(long, value_name = "FROM", default_value = "start", value_parser = parse_replay_start)]
        from: ReplayStart,
        /// Follow the subscriber's lag until it catches up, with a progress bar
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first
    List(DlqFilter),
    /// Show one dead letter: its errors and its event
    Show {
        /// The dead letter's id
        id: Uuid,
    },
    /// Deliver a dead letter's event to its subscriber again
    Retry {
        /// The dead letter's id
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<Uuid>,
        /// Retry every dead letter the filters select
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: DlqFilter,
    },
    /// Remove a dead letter without delivering it
    Discard {
        /// The dead letter's id
        id: Uuid,
    },
}

#[derive(Debug, Args)]
struct DlqFilter {
    /// Only this subscriber's
    #[arg(long, value_name = "NAME")]
    subscriber: Option<String>,
    /// Only events whose type matches this topic pattern
    #[arg(long = "type", value_name = "PATTERN")]
    event_type: Option<String>,
    /// Only those with an error message containing this text
    #[arg(long, value_name = "TEXT")]
    error: Option<String>,
    /// Only those that last failed at or after this RFC 3339 time
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only those that last failed before this RFC 3339 time
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// At most this many
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

impl From<&DlqFilter> for DeadLetterFilter {
    fn from(f: &DlqFilter) -> Self {
        Self {
            subscriber: f.subscriber.clone(),
            event_type: f.event_type.clone(),
            error: f.error.clone(),
            since: f.since,
            until: f.until,
            limit: f.limit,
        }
    }
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Events to append in all
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    count: u64,
    /// Events per append (per HTTP request)
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: u64,
    /// Appends in flight at once
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: usize,
    /// Bytes of padding in each event's payload
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    payload_size: usize,
    /// The events' type
    #[arg(long = "type", value_name = "TYPE", default_value = "bench.appended")]
    event_type: String,
    /// Prefix of the streams appended to, one per worker [default: bench-<random>]
    #[arg(long, value_name = "PREFIX")]
    stream_prefix: Option<String>,
}

/// Where `tail` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartAfter {
    /// After this position.
    Position(u64),
    /// After the head: new events only.
    Now,
}

fn parse_after(text: &str) -> Result<StartAfter, String> {
    if text == "now" {
        return Ok(StartAfter::Now);
    }
    text.parse()
        .map(StartAfter::Position)
        .map_err(|_| format!("{text:?} is not a position or now"))
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

fn parse_metadata(text: &str) -> Result<Metadata, String> {
    let value = parse_json(text)?;
    let Value::Object(map) = &value else {
        return Err("metadata must be a JSON object".to_owned());
    };
    const KEYS: [&str; 3] = ["correlation_id", "causation_id", "headers"];
    if let Some(key) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "metadata key {key:?} is not one of correlation_id, causation_id, headers"
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("invalid metadata: {e}"))
}

fn parse_event_id(text: &str) -> Result<EventId, String> {
    text.parse::<Uuid>()
        .map(EventId::from)
        .map_err(|e| format!("{text:?} is not a UUID: {e}"))
}

fn parse_expected_version(text: &str) -> Result<ExpectedVersion, String> {
    match text {
        "any" => Ok(ExpectedVersion::Any),
        "no_stream" => Ok(ExpectedVersion::NoStream),
        "exists" => Ok(ExpectedVersion::StreamExists),
        _ => text
            .parse()
            .map(ExpectedVersion::Exact)
            .map_err(|_| format!("{text:?} is not any, no_stream, exists or a version number")),
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (2024-05-01T12:00:00Z): {e}"))
}

fn parse_replay_start(text: &str) -> Result<ReplayStart, String> {
    if text == "start" || text == "beginning" {
        return Ok(ReplayStart::Start);
    }
    if let Ok(position) = text.parse::<u64>() {
        return Ok(ReplayStart::Position(position));
    }
    parse_time(text)
        .map(ReplayStart::Time)
        .map_err(|_| format!("{text:?} is not start, a position or an RFC 3339 time"))
}

/// Runs the command line; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Serve(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("herald: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let out = Output {
        json: cli.global.json,
    };
    match cli.command {
        Command::Serve(args) => {
            let env_tokens = std::env::var("HERALD_TOKENS").ok();
            let config = ServeConfig::resolve(&args, env_tokens.as_deref())?;
            let server = Server::start(config).await?;
            eprintln!("herald: serving on http://{}/", server.addr());
            server.run_until(shutdown_signal()).await;
            Ok(())
        }
        command => {
            let (client, path) = connect(&cli.global).await?;
            execute(command, client, path, out).await?;
            Ok(())
        }
    }
}

/// The client the global flags choose, and the name of its path (`http`
/// or the store's kind).
async fn connect(global: &Global) -> Result<(SharedClient, String), CliError> {
    match &global.store {
        Some(url) => {
            let schema = global.schema.as_deref().unwrap_or(DEFAULT_SCHEMA);
            let client = direct::DirectClient::open(url, schema).await?;
            let kind = if url.starts_with("sqlite:") {
                "sqlite"
            } else {
                "postgres"
            };
            Ok((Arc::new(client), kind.to_owned()))
        }
        None => {
            let client = http::HttpClient::new(&global.url, global.token.clone())?;
            Ok((Arc::new(client), "http".to_owned()))
        }
    }
}

async fn execute(
    command: Command,
    client: SharedClient,
    path: String,
    out: Output,
) -> Result<(), CliError> {
    match command {
        Command::Serve(_) => unreachable!("serve is run before connecting"),
        Command::Publish(args) => {
            let request = PublishRequest {
                stream: args.stream,
                expected: args.expected_version.unwrap_or_default(),
                events: vec![EventSpec {
                    event_type: args.event_type,
                    data: args.data,
                    metadata: args.metadata.unwrap_or_default(),
                    id: args.id,
                }],
            };
            let published = client.publish(request).await?;
            out.either(&published, || output::published_text(&published))
        }
        Command::Read(args) => {
            let query = StreamQuery {
                from: args.from,
                limit: args.limit,
                direction: if args.backward {
                    Direction::Backward
                } else {
                    Direction::Forward
                },
            };
            let events = client.read_stream(&args.stream, query).await?;
            out.either(&events, || output::events_table(&events))
        }
        Command::Tail(args) => {
            let after = match args.after {
                StartAfter::Position(p) => Some(p),
                StartAfter::Now => None,
            };
            let mut feed = client.follow(args.patterns, after).await?;
            let mut seen = 0;
            while args.count.is_none_or(|n| seen < n) {
                let Some(event) = feed.next().await else {
                    break;
                };
                let event = event?;
                if out.json {
                    out.json_line(&event)?;
                } else {
                    out.line(output::event_line(&event))?;
                }
                seen += 1;
            }
            Ok(())
        }
        Command::Trace(args) => {
            let tree = trace::trace(client.as_ref(), args.id).await?;
            out.either(&tree, || {
                let mut text = trace::render(&tree);
                text.push_str(&format!(
                    "{} event(s) caused by {}",
                    tree.len() - 1,
                    tree.event.id()
                ));
                text
            })
        }
        Command::Streams(args) => {
            let streams = client.streams(args.prefix.as_deref(), args.limit).await?;
            out.either(&streams, || output::streams_table(&streams))
        }
        Command::Subs { command } => subs(command, client.as_ref(), out).await,
        Command::Dlq { command } => dlq(command, client.as_ref(), out).await,
        Command::Migrate => {
            let done = client.migrate().await?;
            out.either(
                &serde_json::json!({ "migrated": true, "detail": done }),
                || done,
            )
        }
        Command::Bench(args) => {
            let plan = bench::BenchPlan {
                count: args.count,
                batch: args.batch,
                concurrency: args.concurrency,
                payload_size: args.payload_size,
                event_type: args.event_type,
                stream_prefix: args.stream_prefix.unwrap_or_else(|| {
                    format!(
                        "bench-{}",
                        &EventId::new().as_uuid().simple().to_string()[20..]
                    )
                }),
            };
            let report = bench::run(client, path, plan, out.interactive()).await?;
            out.either(&report, || report.text())
        }
    }
}

async fn subs(
    command: SubsCommand,
    client: &dyn client::Client,
    out: Output,
) -> Result<(), CliError> {
    match command {
        SubsCommand::List => {
            let subs = client.subscriptions().await?;
            out.either(&subs, || output::subscriptions_table(&subs))
        }
        SubsCommand::Enable { name } => {
            client.set_enabled(&name, true).await?;
            out.either(&serde_json::json!({"name": name, "enabled": true}), || {
                format!("subscriber {name} enabled")
            })
        }
        SubsCommand::Disable { name } => {
            client.set_enabled(&name, false).await?;
            out.either(&serde_json::json!({"name": name, "enabled": false}), || {
                format!("subscriber {name} disabled")
            })
        }
        SubsCommand::Replay { name, from, wait } => {
            let answer = client.replay(&name, from).await?;
            if !out.json {
                out.line(format!("subscriber {name} replays from {}", describe(from)))?;
            }
            if wait {
                follow_lag(client, &name, out).await?;
            }
            if out.json {
                out.json(&answer)?;
            }
            Ok(())
        }
    }
}

fn describe(from: ReplayStart) -> String {
    match from {
        ReplayStart::Start => "the start".to_owned(),
        ReplayStart::Position(p) => format!("after position {p}"),
        ReplayStart::Time(t) => output::time(t),
    }
}

/// Polls a subscriber's lag until it is 0, with a progress bar of the
/// positions caught up.
async fn follow_lag(client: &dyn client::Client, name: &str, out: Output) -> Result<(), CliError> {
    let lag = |subs: Vec<client::Subscription>| {
        subs.into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| CliError::NotFound(format!("no subscriber named {name}")))
            .map(|s| s.lag())
    };
    let Some(first) = lag(client.subscriptions().await?)? else {
        return out.line(format!("the server does not report {name}'s lag"));
    };
    let bar = ProgressBar::with_draw_target(
        Some(first),
        if out.interactive() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} caught up ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut current = first;
    while current > 0 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        current = lag(client.subscriptions().await?)?.unwrap_or(0);
        if current > bar.length().unwrap_or(0) {
            bar.set_length(current);
        }
        bar.set_position(bar.length().unwrap_or(0).saturating_sub(current));
    }
    bar.finish_and_clear();
    if !out.json {
        out.line(format!("subscriber {name} caught up"))?;
    }
    Ok(())
}

async fn dlq(
    command: DlqCommand,
    client: &dyn client::Client,
    out: Output,
) -> Result<(), CliError> {
    match command {
        DlqCommand::List(filter) => {
            let letters = client.dead_letters(&(&filter).into()).await?;
            out.either(&letters, || output::dead_letters_table(&letters))
        }
        DlqCommand::Show { id } => {
            let letter = client.dead_letter(id).await?;
            out.either(&letter, || output::dead_letter_text(&letter))
        }
        DlqCommand::Retry { id: Some(id), .. } => {
            let retried = client.retry_dead_letter(id).await?;
            out.either(&retried, || match &retried {
                Retried::Handled { id } => format!("dead letter {id} delivered and removed"),
                Retried::Failed { id, error } => {
                    format!("dead letter {id} failed again: {error}")
                }
            })?;
            match retried {
                Retried::Handled { .. } => Ok(()),
                Retried::Failed { id, error } => Err(CliError::RetryFailed {
                    count: 1,
                    detail: format!("dead letter {id}: {error}"),
                }),
            }
        }
        DlqCommand::Retry {
            id: None, filter, ..
        } => {
            let letters = client.dead_letters(&(&filter).into()).await?;
            let bar = ProgressBar::with_draw_target(
                Some(letters.len() as u64),
                if out.interactive() {
                    ProgressDrawTarget::stderr()
                } else {
                    ProgressDrawTarget::hidden()
                },
            );
            let mut outcomes = Vec::with_capacity(letters.len());
            for letter in &letters {
                outcomes.push(client.retry_dead_letter(letter.id).await?);
                bar.inc(1);
            }
            bar.finish_and_clear();
            let failed: Vec<&Retried> = outcomes
                .iter()
                .filter(|o| matches!(o, Retried::Failed { .. }))
                .collect();
            out.either(&outcomes, || {
                format!(
                    "retried {} dead letter(s): {} delivered, {} failed again",
                    outcomes.len(),
                    outcomes.len() - failed.len(),
                    failed.len()
                )
            })?;
            if failed.is_empty() {
                Ok(())
            } else {
                Err(CliError::RetryFailed {
                    count: failed.len(),
                    detail: failed
                        .iter()
                        .map(|f| match f {
                            Retried::Failed { id, error } => format!("{id}: {error}"),
                            Retried::Handled { id } => id.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                })
            }
        }
        DlqCommand::Discard { id } => {
            client.discard_dead_letter(id).await?;
            out.either(&serde_json::json!({"id": id, "discarded": true}), || {
                format!("dead letter {id} discarded")
            })
        }
    }
}

/// Logs to stderr, filtered by `HERALD_LOG` (or `RUST_LOG`): `info` for
/// the server, `warn` for the other commands, whose output is their result.
fn init_tracing(serving: bool) {
    let filter = std::env::var("HERALD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| if serving { "info" } else { "warn" }.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_keeps_its_own_store_flag() {
        let cli = Cli::try_parse_from(["herald", "serve", "--store", "sqlite://x.db"]).unwrap();
        match cli.command {
            Command::Serve(args) => assert_eq!(args.store.as_deref(), Some("sqlite://x.db")),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["herald", "read", "s", "--store", "sqlite://y.db"]).unwrap();
        assert_eq!(cli.global.store.as_deref(), Some("sqlite://y.db"));
    }

    #[test]
    fn arguments_say_what_is_wrong() {
        assert!(parse_json("{oops").unwrap_err().contains("not valid JSON"));
        assert!(parse_metadata("[]").unwrap_err().contains("JSON object"));
        assert!(
            parse_metadata(r#"{"tenant": "x"}"#)
                .unwrap_err()
                .contains("\"tenant\"")
        );
        assert!(
            parse_expected_version("soon")
                .unwrap_err()
                .contains("no_stream")
        );
        assert_eq!(parse_expected_version("3"), Ok(ExpectedVersion::Exact(3)));
        assert_eq!(parse_replay_start("start"), Ok(ReplayStart::Start));
        assert_eq!(parse_replay_start("12"), Ok(ReplayStart::Position(12)));
        assert!(matches!(
            parse_replay_start("2024-05-01T00:00:00Z"),
            Ok(ReplayStart::Time(_))
        ));
        assert!(parse_replay_start("yesterday").is_err());
    }
}
