//! The `herald` binary's commands, run as a user runs them: on a SQLite
//! store with `--store`, and against a server started in this process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use herald::{HandlerError, Subscriber, handler_fn};
use herald_server::Backend;
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
