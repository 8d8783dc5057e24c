//! What the NATS tests share: the server's URL, transports under a prefix
//! of their own, and a TCP proxy whose connections a test can cut.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::transport::Transport;
use herald_nats::{NatsConfig, NatsTransport, sanitize_prefix};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The server's URL: `HERALD_NATS_URL`, or the local one.
pub fn url() -> String {
    std::env::var("HERALD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// `host:port` of the server.
pub fn server_addr() -> String {
    let url = url();
    let rest = url.split("://").nth(1).unwrap_or(&url).to_owned();
    rest.rsplit('@')
        .next()
        .unwrap_or(&rest)
        .trim_end_matches('/')
        .to_owned()
}

/// A configuration for `url` under a prefix made from `namespace`, with a
/// short ack wait so that tests see crashed deliveries come back soon.
pub fn config(url: &str, namespace: &str) -> NatsConfig {
    NatsConfig {
        prefix: sanitize_prefix(namespace),
        ack_wait: Duration::from_secs(4),
        request_timeout: Duration::from_secs(5),
        ..NatsConfig::new(url)
    }
}

/// A stream the tests never delete. nats-server 2.9 removes the account's
/// storage directory when its last stream is deleted, and a stream created
/// at that moment fails ("error creating store for stream"); tests that
/// delete their streams while others create theirs would hit that when
/// they are the server's only users.
const KEEP: &str = "HERALD_TESTS_KEEP";

static KEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

async fn keep_the_store() {
    KEPT.get_or_init(|| async {
        let Ok(client) = async_nats::connect(url()).await else {
            // The transport's own connect fails below with the message.
            return;
        };
        let js = async_nats::jetstream::new(client);
        let _ = js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: KEEP.to_owned(),
                subjects: vec!["herald-tests-keep".to_owned()],
                max_messages: 1,
                ..Default::default()
            })
            .await;
    })
    .await;
}

/// Connects, or fails naming the service and the variable.
pub async fn connect(url: &str, namespace: &str) -> NatsTransport {
    keep_the_store().await;
    NatsTransport::connect(config(url, namespace))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "NATS JetStream at {} (reached as {url}) is not usable; HERALD_NATS_URL points \
                 to the server, which must run with JetStream (-js): {e}",
                self::url()
            )
        })
}

/// A TCP proxy in front of the server: every connection through it can be
/// cut at once, which the client sees as a dropped connection.
pub struct Proxy {
    addr: SocketAddr,
    /// Connections taken so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let server = server_addr();
        let accept = tokio::spawn({
            let links = Arc::clone(&links);
            let accepted = Arc::clone(&accepted);
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let server = server.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut upstream) = TcpStream::connect(&server).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                    });
                    let mut links = links.lock().unwrap();
                    links.retain(|l| !l.is_finished());
                    links.push(link);
                }
            }
        });
        Self {
            addr,
            accepted,
            links,
            accept,
        }
    }

    /// Connections taken so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Cuts every connection through the proxy; new ones are taken.
    pub fn cut(&self) -> usize {
        let links: Vec<JoinHandle<()>> = std::mem::take(&mut *self.links.lock().unwrap());
        let n = links.iter().filter(|l| !l.is_finished()).count();
        for link in links {
            link.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The conformance harness: each namespace gets a prefix of its own and a
/// proxy of its own, so disrupting one scenario leaves the others alone.
#[derive(Default)]
pub struct NatsHarness {
    proxies: Mutex<HashMap<String, Arc<Proxy>>>,
    /// The transports of each namespace, to see them reconnect.
    transports: Mutex<HashMap<String, Vec<NatsTransport>>>,
}

impl Drop for NatsHarness {
    fn drop(&mut self) {
        // The scenario owns the harness: its end is the namespaces' end.
        let namespaces: Vec<String> = self.proxies.lock().unwrap().keys().cloned().collect();
        for namespace in namespaces {
            drop(Cleanup(namespace));
        }
    }
}

impl NatsHarness {
    async fn proxy(&self, namespace: &str) -> Arc<Proxy> {
        if let Some(p) = self.proxies.lock().unwrap().get(namespace) {
            return Arc::clone(p);
        }
        let proxy = Arc::new(Proxy::start().await);
        Arc::clone(
            self.proxies
                .lock()
                .unwrap()
                .entry(namespace.to_owned())
                .or_insert(proxy),
        )
    }
}

#[herald::async_trait]
impl herald_testkit::transports::TransportHarness for NatsHarness {
    async fn connect(&self, namespace: &str) -> Arc<dyn Transport> {
        let proxy = self.proxy(namespace).await;
        let transport = connect(&proxy.url(), namespace).await;
        self.transports
            .lock()
            .unwrap()
            .entry(namespace.to_owned())
            .or_default()
            .push(transport.clone());
        Arc::new(transport)
    }

    /// Cuts the namespace's connections, and returns once every transport
    /// of it still open is connected again (a new connection each).
    async fn disrupt(&self, namespace: &str) {
        let proxy = self.proxy(namespace).await;
        let before = proxy.accepted();
        proxy.cut();
        let open: Vec<NatsTransport> = self
            .transports
            .lock()
            .unwrap()
            .get(namespace)
            .map(|ts| ts.iter().filter(|t| !t.is_closed()).cloned().collect())
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let reconnected = proxy.accepted() >= before + open.len()
                && open.iter().all(|t| {
                    t.client().connection_state() == async_nats::connection::State::Connected
                });
            if reconnected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the clients of {namespace} did not reconnect to NATS within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Deletes the streams of `namespace` when dropped, so that the server's
/// store does not grow with every test run.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let namespace = self.0.clone();
        // Drop cannot await; a thread of its own runs the deletion.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                if let Ok(t) = NatsTransport::connect(config(&url(), &namespace)).await {
                    let _ = t.delete_streams().await;
                }
            });
        })
        .join();
    }
}
