//! Crash safety across a restart of the PostgreSQL server itself: a durable
//! subscriber runs while a writer appends, the server is restarted twice
//! under them (a fast shutdown, then an immediate one, which is a crash
//! followed by recovery from the WAL), and both recover by themselves; the
//! subscriber handles exactly the acknowledged events, each at least once.
//!
//! The shared test server cannot be restarted (other tests use it), so this
//! test starts a private PostgreSQL instance of its own: the server binaries
//! are looked up (`HERALD_TEST_PG_BINDIR`, then `pg_config --bindir`, then
//! the Debian layout), a temporary data directory is made with `initdb` on a
//! free port with trust authentication, and a guard stops the server and
//! removes the directory when the test ends, also when it fails. The server
//! refuses to run as root, so when the test runs as root, the server's
//! commands run as the `postgres` user (through `runuser`), which then owns
//! the directory. If no binaries are found, the test fails and says where it
//! looked.

use std::collections::HashSet;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use herald::store::{CheckpointStore, EventStore, ExpectedVersion, ReadAll, StreamName};
use herald::{
    Bus, Context, DeliveryMode, EventId, HandlerResult, NewEvent, RecordedEvent, Subscriber,
};
use herald_postgres::{PgConfig, PgStore};
use serde_json::json;
use sqlx::Connection;
use tokio::sync::{Notify, watch};

/// Points the test at the directory holding `initdb`, `pg_ctl` and
/// `postgres`.
const BINDIR_VAR: &str = "HERALD_TEST_PG_BINDIR";
/// The user the server runs as when the test runs as root.
const SERVER_USER: &str = "postgres";

/// Appends the writer makes, and events per append.
const APPENDS: u64 = 300;
const PER_APPEND: u64 = 4;

/// A PostgreSQL server of this test's own, stopped and removed on drop.
struct PrivateServer {
    bindir: PathBuf,
    /// The temporary directory: `data/` and the server's socket and log.
    dir: PathBuf,
    port: u16,
    /// Whether the server's commands run as [`SERVER_USER`].
    as_server_user: bool,
}

/// Where the server binaries are: the first directory that has `initdb`,
/// `pg_ctl` and `postgres`.
fn find_bindir() -> PathBuf {
    let mut tried: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os(BINDIR_VAR) {
        tried.push(dir.into());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            tried.push(String::from_utf8_lossy(&out.stdout).trim().into());
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .collect();
        // The newest first.
        versions.sort_by_key(|p| {
            std::cmp::Reverse(
                p.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0),
            )
        });
        tried.extend(versions);
    }
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    tried.iter().find(|d| has_all(d)).cloned().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; looked in {tried:?} \
             (from {BINDIR_VAR}, `pg_config --bindir` and /usr/lib/postgresql/*/bin); install \
             the PostgreSQL server or set {BINDIR_VAR} to the directory that holds them"
        )
    })
}

/// Whether this process runs as root: the owner of `/proc/self`.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("could not run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PrivateServer {
    /// Makes a data directory and starts a server on it.
    fn start() -> Self {
        let bindir = find_bindir();
        let as_server_user = running_as_root();
        let dir = std::env::temp_dir().join(format!(
            "herald-pg-restart-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        // From here on, dropping the guard removes the directory.
        let server = Self {
            bindir,
            dir,
            port: free_port(),
            as_server_user,
        };
        if as_server_user {
            check(
                &format!("chown of the server's directory to {SERVER_USER}"),
                Command::new("chown")
                    .arg(format!("{SERVER_USER}:"))
                    .arg(&server.dir)
                    .output(),
            );
        }
        let data = server.data();
        check(
            "initdb",
            server
                .command("initdb")
                .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
                .arg(&data)
                .output(),
        );
        server.ctl(&["start"]);
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A server binary, run as the server's user when this is root.
    fn command(&self, binary: &str) -> Command {
        let path = self.bindir.join(binary);
        let mut command = if self.as_server_user {
            let mut c = Command::new("runuser");
            c.args(["-u", SERVER_USER, "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // A working directory the server's user may enter.
        command.current_dir(&self.dir);
        command
    }

    /// Runs `pg_ctl` with `args` (and waits for it to finish its action).
    fn ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        check(
            &format!("pg_ctl {}", args.join(" ")),
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "30", "-o", &options])
                .args(args)
                .output(),
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "30", "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// When the server last started.
async fn started_at(url: &str) -> chrono::DateTime<chrono::Utc> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the private server");
    sqlx::query_scalar("SELECT pg_postmaster_start_time()")
        .fetch_one(&mut conn)
        .await
        .expect("the server's start time")
}

/// Restarts the server with `pg_ctl restart -m <mode>` off the runtime's
/// threads, so the subscriber and the writer keep running meanwhile.
async fn restart(server: &Arc<PrivateServer>, mode: &'static str) {
    let server = Arc::clone(server);
    tokio::task::spawn_blocking(move || server.ctl(&["-m", mode, "restart"]))
        .await
        .expect("the restart");
}

/// Waits until `rx`'s value reaches `at_least`, for at most 30 s.
async fn reach(rx: &mut watch::Receiver<u64>, at_least: u64, what: &str) {
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n >= at_least))
        .await
        .unwrap_or_else(|_| panic!("{what} did not reach {at_least} within 30 s"))
        .unwrap_or_else(|_| panic!("{what} ended before reaching {at_least}"));
}

/// Restart the server while a subscriber runs: the subscriber reconnects by
/// itself and misses nothing; the writer's acknowledged appends are all
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_subscriber_and_a_writer_survive_server_restarts() {
    let server = Arc::new(PrivateServer::start());
    let first_start = started_at(&server.url()).await;
    let store = Arc::new(
        PgStore::connect(
            PgConfig::new(server.url())
                .schema("herald_restart")
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .poll_interval(Duration::from_millis(100)),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to the private server: {e}\n{}", server.log())),
    );

    // The subscriber: every event it handles, and how many deliveries.
    let handled: Arc<Mutex<HashSet<EventId>>> = Arc::default();
    let deliveries = Arc::new(AtomicU64::new(0));
    let (handled_tx, mut handled_rx) = watch::channel(0u64);
    let changed = Arc::new(Notify::new());
    let bus = Bus::builder().store(Arc::clone(&store)).build();
    {
        let (seen, count, notify) = (
            Arc::clone(&handled),
            Arc::clone(&deliveries),
            Arc::clone(&changed),
        );
        bus.subscribe(
            Subscriber::new_sync(
                "restart-survivor",
                move |e: &RecordedEvent, _: &Context| -> HandlerResult {
                    let mut seen = seen.lock().unwrap();
                    seen.insert(e.id());
                    count.fetch_add(1, Ordering::Relaxed);
                    handled_tx.send_replace(seen.len() as u64);
                    notify.notify_waiters();
                    Ok(())
                },
            )
            .topic("restart.*")
            .mode(DeliveryMode::Durable)
            .batch_size(20),
        )
        .unwrap();
    }

    // The writer: appends of 4 events with ids of their own; a failed append
    // is tried again with the same ids until acknowledged (a repeated append
    // is recognised and not stored twice).
    let acknowledged: Arc<Mutex<HashSet<EventId>>> = Arc::default();
    let (acked_tx, mut acked_rx) = watch::channel(0u64);
    let writer = {
        let (store, acknowledged) = (Arc::clone(&store), Arc::clone(&acknowledged));
        tokio::spawn(async move {
            let mut failures = 0u64;
            for i in 0..APPENDS {
                let stream = StreamName::new(format!("restart-{}", i % 10)).unwrap();
                let ids: Vec<EventId> = (0..PER_APPEND).map(|_| EventId::new()).collect();
                loop {
                    let events = ids
                        .iter()
                        .enumerate()
                        .map(|(n, id)| {
                            NewEvent::new("restart.written", json!({ "i": i, "n": n })).with_id(*id)
                        })
                        .collect();
                    match store.append(&stream, ExpectedVersion::Any, events).await {
                        Ok(_) => break,
                        Err(_) => {
                            failures += 1;
                            // Back off while the server is away.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                let mut acked = acknowledged.lock().unwrap();
                acked.extend(ids);
                acked_tx.send_replace(acked.len() as u64);
            }
            failures
        })
    };

    let total = APPENDS * PER_APPEND;
    // A fast shutdown mid-run: the server ends its sessions and stops
    // cleanly, then starts again.
    reach(&mut acked_rx, total / 4, "the acknowledged events").await;
    reach(&mut handled_rx, total / 8, "the handled events").await;
    let handled_before = *handled_rx.borrow();
    assert!(handled_before < total, "the subscriber is mid-run");
    restart(&server, "fast").await;
    let second_start = started_at(&server.url()).await;
    assert!(second_start > first_start, "the server restarted");
    // An immediate shutdown mid-run: the server stops without a checkpoint,
    // as in a crash, and recovers from its WAL when it starts again.
    let acked_now = *acked_rx.borrow();
    reach(
        &mut acked_rx,
        acked_now + total / 4,
        "the acknowledged events",
    )
    .await;
    let handled_now = *handled_rx.borrow();
    reach(&mut handled_rx, handled_now + 1, "the handled events").await;
    restart(&server, "immediate").await;
    assert!(
        started_at(&server.url()).await > second_start,
        "the server restarted again"
    );

    let failures = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .unwrap_or_else(|_| panic!("the writer did not finish within 60 s\n{}", server.log()))
        .expect("the writer task");
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len() as u64, total);

    let all_handled = async {
        loop {
            let notified = changed.notified();
            if handled.lock().unwrap().is_superset(&acknowledged) {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), all_handled)
        .await
        .is_err()
    {
        let missing = acknowledged.difference(&handled.lock().unwrap()).count();
        panic!(
            "the subscriber did not handle {missing} of {total} acknowledged events within 30 s \
             ({failures} appends retried): {:?}\n{}",
            bus.subscriber("restart-survivor"),
            server.log()
        );
    }
    // Its checkpoint reaches the head, saved through new connections.
    let head = store.head().await.expect("the head");
    let saved = async {
        while bus
            .subscriber("restart-survivor")
            .and_then(|s| s.checkpoint)
            != Some(head)
        {
            let notified = changed.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), saved)
        .await
        .expect("the subscriber's checkpoint reached the head");
    assert_eq!(
        CheckpointStore::load(&*store, "restart-survivor")
            .await
            .unwrap(),
        Some(head)
    );
    bus.shutdown().await;
    assert_eq!(
        *handled.lock().unwrap(),
        acknowledged,
        "the subscriber handled exactly the acknowledged events"
    );
    assert!(deliveries.load(Ordering::Relaxed) >= total);
    // The store holds each acknowledged event once, and nothing else.
    let stored: Vec<RecordedEvent> = store
        .read_all(ReadAll::after(0))
        .try_collect()
        .await
        .expect("read the log");
    assert_eq!(stored.len() as u64, total, "an append was stored twice");
    assert_eq!(
        stored.iter().map(RecordedEvent::id).collect::<HashSet<_>>(),
        acknowledged
    );
    eprintln!(
        "{failures} appends retried; {} deliveries for {total} events",
        deliveries.load(Ordering::Relaxed)
    );
}
