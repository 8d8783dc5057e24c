//! The `herald` binary's commands, run as a user runs them: on a SQLite
//! store with `--store`, and over HTTP against a server started in this
//! process on 127.0.0.1:0.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use herald::{HandlerError, Subscriber, handler_fn};
use herald_server::{Backend, ServeConfig, Server};
use serde_json::{Value, json};

/// How long a command may take before a test gives up on it.
const DEADLINE: Duration = Duration::from_secs(60);

/// A store for one test, in its own temporary directory.
struct Store {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        Self { _dir: dir, path }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    /// Runs `herald --store <this store> <args>`.
    fn herald(&self, args: &[&str]) -> Output {
        let url = self.url();
        let mut all = vec!["--store", url.as_str()];
        all.extend_from_slice(args);
        herald(&all)
    }
}

/// The command, with no HERALD_* settings from the environment.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(args)
        .env_remove("HERALD_URL")
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_STORE")
        .env_remove("HERALD_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

fn herald(args: &[&str]) -> Output {
    command(args).output().expect("the herald binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The command succeeded; its stdout.
#[track_caller]
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// The command failed; its stderr.
#[track_caller]
fn fails(output: Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure\nstdout: {}",
        stdout(&output)
    );
    stderr(&output)
}

#[track_caller]
fn json_of(output: Output) -> Value {
    let text = ok(output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A child killed when the test ends, whatever happens.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn help_exits_zero_for_every_command() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["publish"],
        &["read"],
        &["tail"],
        &["trace"],
        &["streams"],
        &["subs"],
        &["subs", "list"],
        &["subs", "enable"],
        &["subs", "disable"],
        &["subs", "replay"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "retry"],
        &["dlq", "discard"],
        &["migrate"],
        &["bench"],
    ];
    for path in commands {
        let mut args = path.to_vec();
        args.push("--help");
        let out = ok(herald(&args));
        assert!(out.contains("Usage: herald"), "{path:?}: {out}");
    }
    let top = ok(herald(&["--help"]));
    for name in [
        "serve", "publish", "read", "tail", "trace", "streams", "subs", "dlq", "migrate", "bench",
    ] {
        assert!(top.contains(name), "{name} missing from --help: {top}");
    }
    assert!(ok(herald(&["publish", "--help"])).contains("--expected-version"));
}

#[test]
fn publish_then_read_shows_the_event() {
    let store = Store::new();
    let published = json_of(store.herald(&[
        "--json",
        "publish",
        "order.created",
        r#"{"order_id": 42}"#,
        "--stream",
        "order-42",
        "--metadata",
        r#"{"headers": {"tenant": "acme"}}"#,
    ]));
    assert_eq!(published["stream"], "order-42");
    assert_eq!(published["events"][0]["version"], 0);
    let id = published["events"][0]["id"].as_str().unwrap().to_owned();

    let table = ok(store.herald(&["read", "order-42"]));
    assert!(table.contains("order.created"), "{table}");
    assert!(table.contains(&id), "{table}");
    assert!(table.contains(r#"{"order_id":42}"#), "{table}");

    let events = json_of(store.herald(&["read", "order-42", "--json"]));
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["type"], "order.created");
    assert_eq!(events[0]["data"], json!({"order_id": 42}));
    assert_eq!(events[0]["metadata"]["headers"]["tenant"], "acme");
}

#[test]
fn read_follows_from_limit_and_backward() {
    let store = Store::new();
    for i in 0..5 {
        ok(store.herald(&[
            "publish",
            "tick",
            &format!("{{\"i\": {i}}}"),
            "--stream",
            "clock",
        ]));
    }
    let read = |args: &[&str]| -> Vec<i64> {
        let mut all = vec!["--json", "read", "clock"];
        all.extend_from_slice(args);
        json_of(store.herald(&all))
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["data"]["i"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(read(&[]), [0, 1, 2, 3, 4]);
    assert_eq!(read(&["--from", "2", "--limit", "2"]), [2, 3]);
    assert_eq!(read(&["--backward", "--limit", "2"]), [4, 3]);
}

#[test]
fn publish_without_a_stream_uses_the_type_and_an_id_repeats_idempotently() {
    let store = Store::new();
    let id = "0190f0c4-5b7a-7cc2-9a2e-3f1b2c4d5e6f";
    let first = json_of(store.herald(&["--json", "publish", "user.signed_up", "{}", "--id", id]));
    let again = json_of(store.herald(&["--json", "publish", "user.signed_up", "{}", "--id", id]));
    assert_eq!(first["events"][0]["id"], id);
    assert_eq!(
        first["events"][0]["position"],
        again["events"][0]["position"]
    );
    let events = json_of(store.herald(&["--json", "read", "user.signed_up"]));
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
}

#[test]
fn bad_arguments_exit_non_zero_with_what_was_wrong() {
    let store = Store::new();
    let err = fails(store.herald(&["publish", "order.created", "{oops"]));
    assert!(err.contains("not valid JSON"), "{err}");

    let err = fails(store.herald(&["publish", "order.created", "{}", "--metadata", "[1]"]));
    assert!(err.contains("metadata must be a JSON object"), "{err}");

    let err = fails(store.herald(&[
        "publish",
        "order.created",
        "{}",
        "--metadata",
        r#"{"tenant": "acme"}"#,
    ]));
    assert!(err.contains(r#""tenant""#), "{err}");

    let err = fails(store.herald(&["publish", "order.created", "{}", "--id", "nope"]));
    assert!(err.contains("not a UUID"), "{err}");

    let err = fails(store.herald(&[
        "publish",
        "order.created",
        "{}",
        "--stream",
        "o-1",
        "--expected-version",
        "soon",
    ]));
    assert!(err.contains("no_stream"), "{err}");

    let err = fails(store.herald(&["publish", "Not A Type!", "{}"]));
    assert!(err.starts_with("herald: "), "{err}");
    assert!(err.to_lowercase().contains("type"), "{err}");

    // Nothing was written by any of them.
    let streams = json_of(store.herald(&["--json", "streams"]));
    assert_eq!(streams, json!([]));
}

#[test]
fn a_wrong_expected_version_exits_non_zero_and_writes_nothing() {
    let store = Store::new();
    let publish = |v: &str| {
        store.herald(&[
            "publish",
            "order.paid",
            "{}",
            "--stream",
            "order-7",
            "--expected-version",
            v,
        ])
    };
    ok(publish("no_stream"));
    let err = fails(publish("no_stream"));
    assert!(
        err.contains("wrong expected version for stream order-7"),
        "{err}"
    );
    ok(publish("0"));
    let err = fails(publish("0"));
    assert!(err.contains("expected version 0, found version 1"), "{err}");
    let events = json_of(store.herald(&["--json", "read", "order-7"]));
    assert_eq!(events.as_array().unwrap().len(), 2);
}

#[test]
fn streams_lists_by_prefix_as_a_table_and_as_json() {
    let store = Store::new();
    for stream in ["order-1", "order-2", "user-1"] {
        ok(store.herald(&["publish", "thing.happened", "{}", "--stream", stream]));
    }
    ok(store.herald(&["publish", "thing.happened", "{}", "--stream", "order-2"]));
    let table = ok(store.herald(&["streams"]));
    for stream in ["order-1", "order-2", "user-1"] {
        assert!(table.contains(stream), "{table}");
    }
    let orders = json_of(store.herald(&["--json", "streams", "--prefix", "order-"]));
    let orders = orders.as_array().unwrap();
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert_eq!(orders[1]["stream"], "order-2");
    assert_eq!(orders[1]["count"], 2);
    assert_eq!(orders[1]["version"], 1);
}

/// Publishes `event_type` caused by `cause`; the new event's id.
fn publish_caused(store: &Store, event_type: &str, cause: Option<&str>) -> String {
    let metadata = match cause {
        Some(cause) => json!({ "causation_id": cause }).to_string(),
        None => "{}".to_owned(),
    };
    let out = json_of(store.herald(&[
        "--json",
        "publish",
        event_type,
        "{}",
        "--metadata",
        &metadata,
    ]));
    out["events"][0]["id"].as_str().unwrap().to_owned()
}

#[test]
fn trace_prints_the_causation_tree() {
    let store = Store::new();
    let unrelated = publish_caused(&store, "noise.before", None);
    let root = publish_caused(&store, "order.placed", None);
    let payment = publish_caused(&store, "payment.requested", Some(&root));
    let other_root = publish_caused(&store, "order.placed", None);
    let captured = publish_caused(&store, "payment.captured", Some(&payment));
    let email = publish_caused(&store, "email.sent", Some(&root));
    let elsewhere = publish_caused(&store, "payment.requested", Some(&other_root));
    let receipt = publish_caused(&store, "receipt.sent", Some(&captured));

    let text = ok(store.herald(&["trace", &root]));
    let lines: Vec<&str> = text.lines().collect();
    let expected = [
        format!("order.placed  {root}"),
        format!("├── payment.requested  {payment}"),
        format!("│   └── payment.captured  {captured}"),
        format!("│       └── receipt.sent  {receipt}"),
        format!("└── email.sent  {email}"),
    ];
    for (line, want) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} should start with {want:?}\n{text}"
        );
    }
    assert!(text.contains("4 event(s) caused by"), "{text}");
    for id in [&unrelated, &other_root, &elsewhere] {
        assert!(
            !text.contains(id.as_str()),
            "{id} is not in the tree:\n{text}"
        );
    }

    let tree = json_of(store.herald(&["--json", "trace", &root]));
    assert_eq!(tree["event"]["id"], root.as_str());
    let children = tree["children"].as_array().unwrap();
    assert_eq!(children.len(), 2);
    assert_eq!(children[0]["event"]["id"], payment.as_str());
    assert_eq!(children[0]["children"][0]["event"]["id"], captured.as_str());
    assert_eq!(
        children[0]["children"][0]["children"][0]["event"]["id"],
        receipt.as_str()
    );
    assert_eq!(children[1]["event"]["id"], email.as_str());

    let leaf = json_of(store.herald(&["--json", "trace", &receipt]));
    assert_eq!(leaf["children"], json!([]));

    let err = fails(store.herald(&["trace", "0190f0c4-5b7a-7cc2-9a2e-3f1b2c4d5e6f"]));
    assert!(err.contains("no event with id"), "{err}");
}

/// Records a dead letter in `path` through a bus whose subscriber
/// `billing` gives up on `order.created`; its id.
async fn dead_letter_through_the_bus(path: &Path) -> String {
    let backend = Backend::open(&format!("sqlite://{}", path.display()), "herald")
        .await
        .unwrap();
    let bus = backend.bus();
    bus.subscribe(
        Subscriber::new(
            "billing",
            handler_fn(|_, _| async { Err(HandlerError::dead_letter("billing is down")) }),
        )
        .topic("order.*"),
    )
    .unwrap();
    bus.publish("order.created", json!({"order_id": 9}))
        .await
        .unwrap();
    let letters = bus
        .dead_letters(&herald::DeadLetterQuery::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    bus.shutdown().await;
    letters[0].id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_shows_and_discards_a_dead_letter_made_through_the_bus() {
    let store = Store::new();
    let id = dead_letter_through_the_bus(&store.path).await;
    let store = tokio::task::spawn_blocking(move || {
        let table = ok(store.herald(&["dlq", "list"]));
        assert!(table.contains(&id), "{table}");
        assert!(table.contains("billing"), "{table}");
        assert!(table.contains("billing is down"), "{table}");

        let letters = json_of(store.herald(&["--json", "dlq", "list", "--subscriber", "billing"]));
        assert_eq!(letters[0]["id"], id.as_str());
        assert_eq!(letters[0]["event"]["type"], "order.created");
        let none = json_of(store.herald(&["--json", "dlq", "list", "--subscriber", "shipping"]));
        assert_eq!(none, json!([]));
        let none = json_of(store.herald(&["--json", "dlq", "list", "--type", "user.*"]));
        assert_eq!(none, json!([]));

        let shown = ok(store.herald(&["dlq", "show", &id]));
        assert!(shown.contains("billing is down"), "{shown}");
        assert!(shown.contains("\"order_id\": 9"), "{shown}");

        // The subscriber runs in a server, not in the command: a retry on
        // the store alone says so and keeps the dead letter.
        let err = fails(store.herald(&["dlq", "retry", &id]));
        assert!(err.contains("retry it through the server"), "{err}");
        assert_eq!(
            json_of(store.herald(&["--json", "dlq", "list"]))
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let out = ok(store.herald(&["dlq", "discard", &id]));
        assert!(out.contains("discarded"), "{out}");
        assert_eq!(json_of(store.herald(&["--json", "dlq", "list"])), json!([]));
        let err = fails(store.herald(&["dlq", "show", &id]));
        assert!(err.contains("no dead letter with id"), "{err}");
        let err = fails(store.herald(&["dlq", "discard", &id]));
        assert!(err.contains("no dead letter with id"), "{err}");
        store
    })
    .await
    .unwrap();
    drop(store);
}

#[test]
fn tail_prints_the_log_then_follows_new_events() {
    let store = Store::new();
    ok(store.herald(&["publish", "order.created", r#"{"n": 1}"#]));
    ok(store.herald(&["publish", "user.created", r#"{"n": 2}"#]));
    let url = store.url();
    let mut child = command(&["--store", &url, "--json", "tail", "order.*", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _guard = Guard(child);
    let (lines, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let line = rx.recv_timeout(DEADLINE).expect("tail prints an event");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next()["data"]["n"], 1);
    // The first line proves tail read the log; these come after.
    ok(store.herald(&["publish", "user.updated", r#"{"n": 3}"#]));
    ok(store.herald(&["publish", "order.paid", r#"{"n": 4}"#]));
    ok(store.herald(&["publish", "order.shipped", r#"{"n": 5}"#]));
    assert_eq!(next()["data"]["n"], 4);
    assert_eq!(next()["data"]["n"], 5);
    // --count 3: it ends by itself.
    assert!(rx.recv_timeout(DEADLINE).is_err(), "no more lines after 3");
}

#[test]
fn bench_appends_the_events_and_reports_the_rates() {
    let store = Store::new();
    let report = json_of(store.herald(&[
        "--json",
        "bench",
        "--count",
        "250",
        "--batch",
        "10",
        "--concurrency",
        "4",
        "--payload-size",
        "32",
        "--stream-prefix",
        "b",
    ]));
    assert_eq!(report["path"], "sqlite");
    assert_eq!(report["events"], 250);
    assert_eq!(report["requests"], 25);
    assert!(report["events_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["p99_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap());
    let streams = json_of(store.herald(&["--json", "streams", "--prefix", "b-"]));
    let total: u64 = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 250);

    let err = fails(store.herald(&["bench", "--count", "0"]));
    assert!(err.contains("at least 1"), "{err}");
}

#[test]
fn migrate_works_on_a_store_and_says_so() {
    let store = Store::new();
    let out = ok(store.herald(&["migrate"]));
    assert!(out.contains("migrated"), "{out}");
    assert!(store.path.exists());
    let err = fails(herald(&["--url", "http://127.0.0.1:9", "migrate"]));
    assert!(err.contains("--store"), "{err}");
}

#[test]
fn subscriber_commands_need_a_server() {
    let store = Store::new();
    for args in [
        &["subs", "list"][..],
        &["subs", "enable", "billing"],
        &["subs", "replay", "billing", "--from", "3"],
    ] {
        let err = fails(store.herald(args));
        assert!(err.contains("needs a running server"), "{args:?}: {err}");
    }
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there in the test.
    let err = fails(herald(&["--url", "http://127.0.0.1:9", "streams"]));
    assert!(
        err.contains("cannot reach the herald server at http://127.0.0.1:9"),
        "{err}"
    );
    let err = fails(herald(&["--url", "ftp://example", "streams"]));
    assert!(err.contains("not an http:// URL"), "{err}");
}

// Over HTTP, against a server started in this process.

/// A server on 127.0.0.1:0 over its own SQLite file.
struct Running {
    _dir: tempfile::TempDir,
    server: Server,
}

impl Running {
    async fn start(tokens: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            store: format!("sqlite://{}", dir.path().join("herald.db").display()),
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            ..ServeConfig::default()
        };
        let server = Server::start(config).await.expect("the server starts");
        Self { _dir: dir, server }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Runs `herald --url <this server> <args>` off the runtime's threads.
    async fn herald(&self, args: &[&str]) -> Output {
        self.herald_with(args, &[]).await
    }

    async fn herald_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all: Vec<String> = vec!["--url".to_owned(), self.url()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            let mut command = command(&args);
            for (k, v) in &env {
                command.env(k, v);
            }
            command.output().expect("the herald binary runs")
        })
        .await
        .unwrap()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        json_of(self.herald(&all).await)
    }

    async fn stop(self) {
        self.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_publish_then_read_streams_and_conflicts() {
    let server = Running::start(&[]).await;
    let published = server
        .json(&[
            "publish",
            "order.created",
            r#"{"order_id": 1}"#,
            "--stream",
            "order-1",
            "--expected-version",
            "no_stream",
        ])
        .await;
    assert_eq!(published["stream"], "order-1");
    assert_eq!(published["version"], 0);
    let id = published["events"][0]["id"].as_str().unwrap().to_owned();

    let by_type = server
        .json(&["publish", "user.signed_up", r#"{"user": "ada"}"#])
        .await;
    assert_eq!(by_type["events"][0]["stream"], "user.signed_up");

    let table = ok(server.herald(&["read", "order-1"]).await);
    assert!(
        table.contains(&id) && table.contains("order.created"),
        "{table}"
    );
    let events = server.json(&["read", "order-1"]).await;
    assert_eq!(events[0]["data"], json!({"order_id": 1}));

    let streams = server.json(&["streams"]).await;
    let names: Vec<&str> = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["order-1", "user.signed_up"]);
    let only = server.json(&["streams", "--prefix", "user"]).await;
    assert_eq!(only.as_array().unwrap().len(), 1);

    // A conflict comes back as the server's problem, with its detail.
    let err = fails(
        server
            .herald(&[
                "publish",
                "order.paid",
                "{}",
                "--stream",
                "order-1",
                "--expected-version",
                "5",
            ])
            .await,
    );
    assert!(err.contains("(409)"), "{err}");
    assert!(
        err.contains("wrong expected version for stream order-1"),
        "{err}"
    );
    // So does bad input the server refuses.
    let err = fails(
        server
            .herald(&["publish", "order.paid", "{}", "--stream", "bad stream"])
            .await,
    );
    assert!(err.contains("(400)"), "{err}");
    assert_eq!(
        server
            .json(&["read", "order-1"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let err = fails(server.herald(&["trace", &uuid_like()]).await);
    assert!(err.contains("no event with id"), "{err}");
    server.stop().await;
}

fn uuid_like() -> String {
    "0190f0c4-5b7a-7cc2-9a2e-3f1b2c4d5e6f".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_missing_token_is_refused_with_the_servers_reason() {
    let server = Running::start(&["s3cret"]).await;
    let err = fails(server.herald(&["streams"]).await);
    assert!(err.contains("Unauthorized (401)"), "{err}");
    assert!(err.contains("bearer token"), "{err}");
    let err = fails(
        server
            .herald_with(&["streams"], &[("HERALD_TOKEN", "wrong")])
            .await,
    );
    assert!(err.contains("not valid"), "{err}");
    let out = ok(server
        .herald_with(&["publish", "a.b", "{}"], &[("HERALD_TOKEN", "s3cret")])
        .await);
    assert!(out.contains("a.b"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_trace_tail_and_bench() {
    let server = Running::start(&[]).await;
    let publish = |event_type: &'static str, cause: Option<String>| {
        let server = &server;
        async move {
            let metadata = cause.map_or_else(
                || "{}".to_owned(),
                |c| json!({ "causation_id": c }).to_string(),
            );
            let out = server
                .json(&["publish", event_type, "{}", "--metadata", &metadata])
                .await;
            out["events"][0]["id"].as_str().unwrap().to_owned()
        }
    };
    let root = publish("order.placed", None).await;
    let child = publish("payment.requested", Some(root.clone())).await;
    let grandchild = publish("payment.captured", Some(child.clone())).await;
    let _other = publish("order.placed", None).await;
    let text = ok(server.herald(&["trace", &root]).await);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("order.placed  {root}")),
        "{text}"
    );
    assert!(
        lines[1].starts_with(&format!("└── payment.requested  {child}")),
        "{text}"
    );
    assert!(
        lines[2].starts_with(&format!("    └── payment.captured  {grandchild}")),
        "{text}"
    );

    // tail over server-sent events: the log, then what comes after.
    let url = server.url();
    let mut child = command(&["--url", &url, "--json", "tail", "payment.*", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _guard = Guard(child);
    let (lines, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || async {
        let rx = &rx;
        let line = tokio::task::block_in_place(|| rx.recv_timeout(DEADLINE)).expect("an event");
        serde_json::from_str::<Value>(&line).unwrap()
    };
    assert_eq!(next().await["type"], "payment.requested");
    assert_eq!(next().await["type"], "payment.captured");
    let live = publish("payment.refunded", None).await;
    let third = next().await;
    assert_eq!(third["id"], live.as_str());

    let report = server
        .json(&[
            "bench",
            "--count",
            "120",
            "--batch",
            "10",
            "--concurrency",
            "3",
            "--stream-prefix",
            "hb",
        ])
        .await;
    assert_eq!(report["path"], "http");
    assert_eq!(report["events"], 120);
    let streams = server.json(&["streams", "--prefix", "hb-"]).await;
    let total: u64 = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 120);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_dlq_list_show_retry_and_discard_dead_letters_of_the_servers_bus() {
    let server = Running::start(&[]).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    server
        .server
        .state()
        .bus
        .subscribe(
            Subscriber::new(
                "billing",
                handler_fn(move |_, _| {
                    let ok = flag.load(Ordering::SeqCst);
                    async move {
                        if ok {
                            Ok(())
                        } else {
                            Err(HandlerError::dead_letter("billing is down"))
                        }
                    }
                }),
            )
            .topic("invoice.*"),
        )
        .unwrap();
    ok(server
        .herald(&["publish", "invoice.issued", r#"{"n": 1}"#])
        .await);
    ok(server
        .herald(&["publish", "invoice.issued", r#"{"n": 2}"#])
        .await);
    let letters = server
        .json(&["dlq", "list", "--subscriber", "billing"])
        .await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let first = letters[0]["id"].as_str().unwrap().to_owned();
    let second = letters[1]["id"].as_str().unwrap().to_owned();
    assert_eq!(letters[0]["event"]["data"]["n"], 1);

    let table = ok(server.herald(&["dlq", "list"]).await);
    assert!(
        table.contains(&first) && table.contains("billing is down"),
        "{table}"
    );
    let shown = ok(server.herald(&["dlq", "show", &first]).await);
    assert!(
        shown.contains("billing is down") && shown.contains("\"n\": 1"),
        "{shown}"
    );

    // Still failing: the retry says so, exits non-zero, keeps the letter.
    let err = fails(server.herald(&["dlq", "retry", &first]).await);
    assert!(
        err.contains("failed again") && err.contains("billing is down"),
        "{err}"
    );
    let again = server.json(&["dlq", "show", &first]).await;
    assert_eq!(again["attempts"], 2);

    healthy.store(true, Ordering::SeqCst);
    let out = ok(server.herald(&["dlq", "retry", &first]).await);
    assert!(out.contains("delivered"), "{out}");
    let out = ok(server.herald(&["dlq", "discard", &second]).await);
    assert!(out.contains("discarded"), "{out}");
    assert_eq!(server.json(&["dlq", "list"]).await, json!([]));
    assert_eq!(
        server
            .server
            .state()
            .bus
            .subscriber("billing")
            .unwrap()
            .handled,
        1
    );

    let err = fails(server.herald(&["dlq", "show", &first]).await);
    assert!(err.contains("no dead letter with id"), "{err}");

    // --all retries every one the filters select.
    healthy.store(false, Ordering::SeqCst);
    ok(server
        .herald(&["publish", "invoice.issued", r#"{"n": 3}"#])
        .await);
    ok(server
        .herald(&["publish", "invoice.issued", r#"{"n": 4}"#])
        .await);
    healthy.store(true, Ordering::SeqCst);
    let results = server.json(&["dlq", "retry", "--all"]).await;
    assert_eq!(results.as_array().unwrap().len(), 2, "{results}");
    assert!(
        results
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "handled")
    );
    assert_eq!(server.json(&["dlq", "list"]).await, json!([]));
    server.stop().await;
}

/// A webhook receiver on 127.0.0.1:0 that answers 200 and counts.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_subs_list_disable_enable_and_replay_a_webhook_subscription() {
    let server = Running::start(&[]).await;
    let (hook, arrivals) = receiver().await;
    let created = reqwest::Client::new()
        .post(format!("{}/api/subscriptions", server.url()))
        .json(&json!({"name": "crm", "topics": ["customer.*"], "url": hook}))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{:?}", created.text().await);
    for n in 0..3 {
        ok(server
            .herald(&["publish", "customer.joined", &format!("{{\"n\": {n}}}")])
            .await);
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    while arrivals.load(Ordering::SeqCst) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the webhook got every event"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let table = ok(server.herald(&["subs", "list"]).await);
    assert!(
        table.contains("crm") && table.contains("customer.*") && table.contains(&hook),
        "{table}"
    );
    let subs = server.json(&["subs", "list"]).await;
    assert_eq!(subs[0]["name"], "crm");
    assert_eq!(subs[0]["status"], "enabled");

    ok(server.herald(&["subs", "disable", "crm"]).await);
    assert_eq!(
        server.json(&["subs", "list"]).await[0]["status"],
        "disabled"
    );
    ok(server.herald(&["subs", "enable", "crm"]).await);
    assert_eq!(server.json(&["subs", "list"]).await[0]["status"], "enabled");

    let out = ok(server
        .herald(&["subs", "replay", "crm", "--from", "start", "--wait"])
        .await);
    assert!(out.contains("caught up"), "{out}");
    assert!(
        arrivals.load(Ordering::SeqCst) >= 6,
        "the replay delivered the events again"
    );
    let replayed = server.json(&["subs", "replay", "crm", "--from", "2"]).await;
    assert_eq!(replayed["checkpoint"], 2);

    let err = fails(server.herald(&["subs", "disable", "nobody"]).await);
    assert!(err.contains("nobody"), "{err}");
    let err = fails(
        server
            .herald(&["subs", "replay", "crm", "--from", "yesterday"])
            .await,
    );
    assert!(
        err.contains("not start, a position or an RFC 3339 time"),
        "{err}"
    );
    server.stop().await;
}

// Straight to PostgreSQL, in a schema of the test's own.

/// The database the PostgreSQL tests use (`HERALD_TEST_POSTGRES_URL`).
fn postgres_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh schema, named as the other PostgreSQL tests name theirs so that
/// their clean-up drops it once it is old.
fn postgres_schema() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("herald_test_{secs}_{:08x}", rand::random::<u32>())
}

#[test]
fn on_postgres_migrate_publish_read_streams_and_bench() {
    let url = postgres_url();
    let schema = postgres_schema();
    let pg = |args: &[&str]| {
        let mut all = vec!["--store", url.as_str(), "--schema", schema.as_str()];
        all.extend_from_slice(args);
        herald(&all)
    };
    let out = pg(&["migrate"]);
    assert!(
        out.status.success(),
        "PostgreSQL must be reachable at {url} (set HERALD_TEST_POSTGRES_URL): {}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("postgres store"), "{}", stdout(&out));

    let published = json_of(pg(&[
        "--json",
        "publish",
        "order.created",
        r#"{"order_id": 5}"#,
        "--stream",
        "order-5",
        "--expected-version",
        "no_stream",
    ]));
    assert_eq!(published["version"], 0);
    let err = fails(pg(&[
        "publish",
        "order.created",
        "{}",
        "--stream",
        "order-5",
        "--expected-version",
        "no_stream",
    ]));
    assert!(
        err.contains("wrong expected version for stream order-5"),
        "{err}"
    );
    let events = json_of(pg(&["--json", "read", "order-5"]));
    assert_eq!(events.as_array().unwrap().len(), 1);
    assert_eq!(events[0]["data"], json!({"order_id": 5}));

    let report = json_of(pg(&[
        "--json",
        "bench",
        "--count",
        "100",
        "--batch",
        "10",
        "--concurrency",
        "2",
        "--stream-prefix",
        "pb",
    ]));
    assert_eq!(report["path"], "postgres");
    let streams = json_of(pg(&["--json", "streams", "--prefix", "pb-"]));
    let total: u64 = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100);
}
