//! What the RabbitMQ tests share: the broker's URL, connecting under a
//! prefix of the test's own, and dropping connections from the broker's
//! side.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use herald::transport::Transport;
use herald_amqp::{AmqpConfig, AmqpTransport, DEFAULT_URL};
use herald_testkit::transports::TransportHarness;

/// The environment variable naming the broker.
pub const URL_VAR: &str = "HERALD_AMQP_URL";

pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The prefix of a namespace; unique per test, so tests run in parallel.
pub fn prefix(namespace: &str) -> String {
    format!("t.{namespace}")
}

/// A unique namespace for a test of this file.
pub fn namespace(test: &str) -> String {
    herald_testkit::transports::namespace(test)
}

/// The configuration of tests: queues vanish ten minutes after the test.
pub fn config(namespace: &str) -> AmqpConfig {
    AmqpConfig::new(url())
        .prefix(prefix(namespace))
        .reconnect_timeout(Duration::from_secs(20))
        .queue_expiry(Duration::from_secs(600))
}

/// Connects, or fails the test naming the service and the variable.
pub async fn connect(namespace: &str) -> AmqpTransport {
    connect_with(config(namespace)).await
}

pub async fn connect_with(config: AmqpConfig) -> AmqpTransport {
    let url = config.url.clone();
    AmqpTransport::connect(config).await.unwrap_or_else(|e| {
        panic!("RabbitMQ is not reachable at {url} (set {URL_VAR} to point to it): {e}")
    })
}

/// The connection name the transport of `namespace` uses.
pub fn connection_name(namespace: &str) -> String {
    format!("herald:{}", prefix(namespace))
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl (RabbitMQ's admin tool) could not run: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The broker's ids of the connections named `name`.
pub fn connections(name: &str) -> Vec<String> {
    // The table format prints pids as `close_connection` takes them, and
    // client properties as `{"connection_name","<name>"}`.
    let table = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "-q",
        "--no-table-headers",
    ]);
    let exact = format!("{{\"connection_name\",\"{name}\"}}");
    table
        .lines()
        .filter(|line| line.contains(&exact))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Closes every connection of `namespace` from the broker's side, and
/// returns once the broker takes connections again. Fails when there was
/// none to close, as the test would then prove nothing.
pub async fn disrupt(namespace: &str) {
    let name = connection_name(namespace);
    let pids = tokio::task::spawn_blocking({
        let name = name.clone();
        move || {
            let pids = connections(&name);
            for pid in &pids {
                rabbitmqctl(&["close_connection", pid, "herald test: disruption"]);
            }
            pids
        }
    })
    .await
    .expect("rabbitmqctl task");
    assert!(
        !pids.is_empty(),
        "no connection named {name} to close: {}",
        rabbitmqctl(&[
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers"
        ])
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let probe =
            lapin::Connection::connect(&url(), lapin::ConnectionProperties::default()).await;
        match probe {
            Ok(conn) => {
                let _ = conn.close(200, "probe".into()).await;
                return;
            }
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("RabbitMQ does not take connections again ({URL_VAR}): {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The conformance suite's view of the broker.
pub struct Rabbit;

#[herald::async_trait]
impl TransportHarness for Rabbit {
    async fn connect(&self, namespace: &str) -> Arc<dyn Transport> {
        Arc::new(connect(namespace).await)
    }

    async fn disrupt(&self, namespace: &str) {
        disrupt(namespace).await;
    }

    /// One consumer, no retries: the queue's order (see the crate docs).
    fn keeps_stream_order(&self) -> bool {
        true
    }
}
