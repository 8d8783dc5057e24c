//! The `herald` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ServeArgs, ServeConfig};
use crate::server::Server;

/// Herald: an event store and bus with an HTTP API, live subscriptions,
/// webhooks and a web UI.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: HTTP API, live subscriptions, webhooks, web UI
    Serve(ServeArgs),
}

/// Runs the command line; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
    match cli.command {
        Command::Serve(args) => {
            let env_tokens = std::env::var("HERALD_TOKENS").ok();
            let config = ServeConfig::resolve(&args, env_tokens.as_deref())?;
            let server = Server::start(config).await?;
            eprintln!("herald: serving on http://{}/", server.addr());
            server.run_until(shutdown_signal()).await;
            Ok(())
        }
    }
}

/// Logs to stderr, filtered by `HERALD_LOG` (or `RUST_LOG`), `info` by
/// default.
fn init_tracing() {
    let filter = std::env::var("HERALD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
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
