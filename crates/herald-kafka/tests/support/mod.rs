//! What the Kafka tests share: the broker's address, a transport per
//! namespace, and private brokers that a test may restart.

#![allow(dead_code, unreachable_pub)]

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use herald_kafka::{KafkaConfig, KafkaTransport};

/// The shared broker: `HERALD_KAFKA_BROKERS`, by default 127.0.0.1:19092.
/// Fails (never skips) when nothing answers there.
pub fn brokers() -> String {
    let brokers =
        std::env::var("HERALD_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned());
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "Kafka is not reachable at {brokers}: these tests need a Kafka-protocol broker \
         (tansu); start one with .ci/kafka, or point HERALD_KAFKA_BROKERS at one"
    );
    brokers
}

/// Settings for tests: the namespace as prefix, new topics found within
/// 200 ms, publishes that give up after 5 s.
///
/// tansu 0.6 with its memory engine: a consumer that resumes from an offset
/// committed in the middle of a producer batch skips the rest of that batch
/// (see the crate docs). Several scenarios move partitions between members
/// mid-run, so every test produces one message per batch
/// (`batch.num.messages=1`); the benchmark, with one member that never
/// resumes, does not.
pub fn config(brokers: &str, prefix: &str) -> KafkaConfig {
    KafkaConfig::new(brokers)
        .prefix(prefix)
        .metadata_refresh(Duration::from_millis(200))
        .publish_timeout(Duration::from_secs(5))
        .producer_setting("batch.num.messages", "1")
        // Members learn of a rebalance at their next heartbeat: a short
        // interval lets a member that joins take its share within the few
        // hundred milliseconds a scenario runs (tansu's joins take
        // 0.2-0.5 s each on top).
        .consumer_setting("heartbeat.interval.ms", "100")
}

/// A transport on the shared broker under `prefix`.
pub async fn transport(prefix: &str) -> KafkaTransport {
    KafkaTransport::connect(config(&brokers(), prefix))
        .await
        .expect("connect to Kafka")
}

/// A unique prefix for one test.
pub fn prefix(test: &str) -> String {
    let id = herald::EventId::new().to_string().replace('-', "");
    format!("{test}-{}", &id[id.len() - 12..])
}

/// A broker of one test's own, started by `.ci/kafka` on a free port
/// behind a TCP proxy of the test's, so that dropping its connections
/// disrupts no other test. The broker advertises the proxy's port, so every
/// connection a client makes (bootstrap, then the advertised broker) goes
/// through the proxy. Killed when dropped.
pub struct PrivateBroker {
    pub port: u16,
    pid: Option<u32>,
    proxy: Proxy,
}

/// Forwards 127.0.0.1:`port` to the broker; `drop_connections` cuts every
/// connection open through it, as a broker that went away would.
pub struct Proxy {
    pub port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(listener: tokio::net::TcpListener, target: u16) -> Self {
        let port = listener.local_addr().expect("proxy address").port();
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            std::sync::Arc::default();
        let held = std::sync::Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            connections,
            accept,
        }
    }

    /// Closes every connection open through the proxy; returns how many.
    pub fn drop_connections(&self) -> usize {
        let open: Vec<_> = self.connections.lock().unwrap().drain(..).collect();
        let live = open.iter().filter(|t| !t.is_finished()).count();
        for task in open {
            task.abort();
        }
        live
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ci/kafka")
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

impl PrivateBroker {
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let proxy = Proxy::start(listener, port).await;
        let mut broker = Self {
            port,
            pid: None,
            proxy,
        };
        broker.launch().await;
        broker
    }

    /// The address clients use: the proxy's.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// Cuts every client connection; returns how many were open.
    pub fn drop_connections(&self) -> usize {
        self.proxy.drop_connections()
    }

    async fn launch(&mut self) {
        let out = tokio::process::Command::new("bash")
            .arg(script())
            .env("HERALD_KAFKA_PORT", self.port.to_string())
            .env("HERALD_KAFKA_ADVERTISED_PORT", self.proxy.port.to_string())
            .output()
            .await
            .expect("run .ci/kafka");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            ".ci/kafka could not start a private Kafka broker (tansu) on port {}: {}{}",
            self.port,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        self.pid = stdout
            .rsplit_once("(pid ")
            .and_then(|(_, rest)| rest.trim().trim_end_matches(')').parse().ok());
        assert!(self.pid.is_some(), "no pid in {stdout:?}");
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
