//! Webhook subscriptions against a real server and a real receiver: each
//! test runs the server on 127.0.0.1:0 over its own SQLite file (one over
//! its own PostgreSQL schema) and a small axum app that records what it is
//! sent, can be told to fail, and signals each arrival over a channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald::{DeadLetterQuery, RecordedEvent, RetryOutcome};
use herald_server::{Backend, ServeConfig, Server};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(15);

/// One request the receiver got.
#[derive(Debug)]
struct Arrival {
    headers: HeaderMap,
    body: Bytes,
    /// Whether the receiver answered it with a failure.
    failed: bool,
    at: Instant,
}

impl Arrival {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone)]
struct ReceiverState {
    arrivals: mpsc::UnboundedSender<Arrival>,
    fail: Arc<AtomicUsize>,
    hang: Arc<AtomicUsize>,
}

/// A webhook receiver on 127.0.0.1:0.
struct Receiver {
    url: String,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    fail: Arc<AtomicUsize>,
    hang: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Self {
        let (tx, arrivals) = mpsc::unbounded_channel();
        let fail = Arc::new(AtomicUsize::new(0));
        let hang = Arc::new(AtomicUsize::new(0));
        let state = ReceiverState {
            arrivals: tx,
            fail: Arc::clone(&fail),
            hang: Arc::clone(&hang),
        };
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/hook"),
            arrivals,
            fail,
            hang,
        }
    }

    /// Makes the next `n` requests fail with a 500.
    fn fail_next(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` requests never get an answer.
    fn hang_next(&self, n: usize) {
        self.hang.store(n, Ordering::SeqCst);
    }

    async fn next(&mut self) -> Arrival {
        tokio::time::timeout(WAIT, self.arrivals.recv())
            .await
            .expect("a delivery arrives in time")
            .expect("the receiver runs")
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let take = |counter: &AtomicUsize| {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    };
    let hang = take(&state.hang);
    let failed = hang || take(&state.fail);
    let _ = state.arrivals.send(Arrival {
        headers,
        body,
        failed,
        at: Instant::now(),
    });
    if hang {
        std::future::pending::<()>().await;
    }
    if failed {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

fn config() -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServeConfig::default()
    }
}

async fn start(dir: &tempfile::TempDir) -> Server {
    Server::start(ServeConfig {
        store: format!("sqlite://{}", dir.path().join("herald.db").display()),
        ..config()
    })
    .await
    .expect("the server starts")
}

/// A client of one server's API.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &Server) -> Self {
        Self {
            base: format!("http://{}/api", server.addr()),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/problem+json");
        let text = response.text().await.unwrap();
        if status.is_client_error() || status.is_server_error() {
            assert!(problem, "{status} without a problem body: {text}");
        }
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    async fn subscribe(&self, body: Value) -> Value {
        let (status, body) = self.post("/subscriptions", body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

async fn publish(server: &Server, event_type: &str, data: Value) -> RecordedEvent {
    server.state().bus.publish(event_type, data).await.unwrap()
}

fn assert_signed(arrival: &Arrival, secret: &str) {
    let header = arrival.header("Herald-Signature");
    let hex_mac = header
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("signature {header:?} does not start with sha256="));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&arrival.body);
    mac.verify_slice(&hex::decode(hex_mac).unwrap())
        .expect("the signature is the HMAC-SHA256 of the body with the secret");
}

fn assert_is(arrival: &Arrival, event: &RecordedEvent) {
    assert_eq!(arrival.header("Herald-Event-Id"), event.id().to_string());
    assert_eq!(arrival.header("Herald-Event-Type"), event.event_type());
    assert_eq!(arrival.json()["id"], event.id().to_string());
}

/// Polls `check` until it returns `Some`, for at most [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_matching_events_only_signed_with_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let api = Api::new(&server);
    let mut receiver = Receiver::start().await;
    let mut unsigned = Receiver::start().await;
    let secret = "whsec-7f3a9c-do-not-leak";

    let created = api
        .subscribe(json!({
            "name": "orders", "topics": ["order.*"], "url": receiver.url, "secret": secret
        }))
        .await;
    assert_eq!(created["name"], "orders");
    assert_eq!(created["signed"], true);
    assert_eq!(created["status"], "enabled");
    assert!(!created.to_string().contains(secret));
    api.subscribe(json!({"name": "everything", "topics": ["#"], "url": unsigned.url}))
        .await;

    let user = publish(&server, "user.created", json!({"user": 1})).await;
    let order = publish(&server, "order.created", json!({"order_id": 42})).await;
    let paid = publish(&server, "order.paid", json!({"order_id": 42})).await;

    // In log order, user.created skipped: it does not match order.*.
    let first = receiver.next().await;
    assert_is(&first, &order);
    assert_signed(&first, secret);
    assert_eq!(
        first.header("content-type"),
        "application/json",
        "{:?}",
        first.headers
    );
    assert_eq!(first.header("Herald-Delivery-Attempt"), "1");
    let body = first.json();
    assert_eq!(body["type"], "order.created");
    assert_eq!(body["stream"], "order.created");
    assert_eq!(body["version"], 0);
    assert_eq!(body["position"], order.position().unwrap());
    assert_eq!(body["data"], json!({"order_id": 42}));
    assert!(body["recorded_at"].is_string());
    assert!(body["metadata"].is_object());
    let second = receiver.next().await;
    assert_is(&second, &paid);
    assert_signed(&second, secret);

    // The catch-all subscription gets every user event, unsigned, and not
    // the server's own herald.subscription.* events.
    for event in [&user, &order, &paid] {
        let arrival = unsigned.next().await;
        assert_is(&arrival, event);
        assert!(arrival.headers.get("Herald-Signature").is_none());
    }

    // The secret is in no response and in no event of the store.
    let (status, listed) = api.get("/subscriptions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(secret));
    let orders = eventually("the checkpoint to pass order.paid", || async {
        let (_, view) = api.get("/subscriptions/orders").await;
        (view["handled"] == 2 && view["checkpoint"].as_u64() >= paid.position()).then_some(view)
    })
    .await;
    assert_eq!(orders["topics"], json!(["order.*"]));
    assert_eq!(orders["url"], receiver.url);
    assert_eq!(orders["failed"], 0);
    let log: Vec<RecordedEvent> = futures_util::TryStreamExt::try_collect(
        server
            .state()
            .backend
            .events()
            .read_all(herald::store::ReadAll::after(0)),
    )
    .await
    .unwrap();
    assert!(
        log.iter()
            .any(|e| e.event_type() == "herald.subscription.created")
    );
    for event in &log {
        assert!(!serde_json::to_string(event).unwrap().contains(secret));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let api = Api::new(&server);
    let mut receiver = Receiver::start().await;
    receiver.fail_next(2);
    api.subscribe(json!({
        "name": "flaky", "topics": ["invoice.issued"], "url": receiver.url,
        "retry": {"max_attempts": 4, "initial_backoff_ms": 100, "max_backoff_ms": 1000}
    }))
    .await;

    let event = publish(&server, "invoice.issued", json!({"n": 1})).await;
    let attempts = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    for (i, arrival) in attempts.iter().enumerate() {
        assert_is(arrival, &event);
        assert_eq!(
            arrival.header("Herald-Delivery-Attempt"),
            (i + 1).to_string()
        );
        assert_eq!(arrival.failed, i < 2, "attempt {}", i + 1);
    }
    // Exponential: 100 ms, then 200 ms, each shortened by at most 10 %.
    let first_gap = attempts[1].at - attempts[0].at;
    let second_gap = attempts[2].at - attempts[1].at;
    assert!(first_gap >= Duration::from_millis(90), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(180), "{second_gap:?}");

    let view = eventually("the delivery to count as handled", || async {
        let (_, view) = api.get("/subscriptions/flaky").await;
        (view["handled"] == 1).then_some(view)
    })
    .await;
    assert_eq!(view["failed"], 0);
    assert_eq!(view["dead_lettered"], 0);
    let letters = server
        .state()
        .bus
        .dead_letters(&DeadLetterQuery::default().subscriber("webhook:flaky"))
        .await
        .unwrap();
    assert!(letters.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_to_a_dead_letter_that_a_retry_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let api = Api::new(&server);
    let mut receiver = Receiver::start().await;
    receiver.fail_next(3);
    api.subscribe(json!({
        "name": "doomed", "topics": ["payment.*"], "url": receiver.url, "secret": "k",
        "retry": {"max_attempts": 3, "initial_backoff_ms": 10, "max_backoff_ms": 20}
    }))
    .await;

    let event = publish(&server, "payment.failed", json!({"amount": 5})).await;
    for _ in 0..3 {
        let arrival = receiver.next().await;
        assert_is(&arrival, &event);
        assert!(arrival.failed);
    }
    let bus = &server.state().bus;
    let letter = eventually("the dead letter", || async {
        bus.dead_letters(&DeadLetterQuery::default().subscriber("webhook:doomed"))
            .await
            .unwrap()
            .pop()
    })
    .await;
    assert_eq!(letter.event.id(), event.id());
    assert_eq!(letter.attempts, 3);
    assert!(letter.reason.contains("500"), "{}", letter.reason);
    let (_, view) = api.get("/subscriptions/doomed").await;
    assert_eq!(view["dead_lettered"], 1);

    // The subscription moved on: the next event is delivered.
    let next = publish(&server, "payment.settled", json!({})).await;
    assert_is(&receiver.next().await, &next);

    // The receiver is fixed: retrying the dead letter delivers it.
    let outcome = bus.retry_dead_letter(letter.id).await.unwrap();
    assert_eq!(outcome, RetryOutcome::Handled);
    let retried = receiver.next().await;
    assert_is(&retried, &event);
    assert!(!retried.failed);
    assert_signed(&retried, "k");
    assert!(
        bus.dead_letters(&DeadLetterQuery::default().subscriber("webhook:doomed"))
            .await
            .unwrap()
            .is_empty()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_does_not_answer_in_time_is_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let api = Api::new(&server);
    let mut receiver = Receiver::start().await;
    receiver.hang_next(1);
    api.subscribe(json!({
        "name": "slow", "topics": ["report.*"], "url": receiver.url, "timeout_ms": 200,
        "retry": {"max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 10}
    }))
    .await;
    let event = publish(&server, "report.ready", json!({})).await;
    let hung = receiver.next().await;
    assert_is(&hung, &event);
    let retried = receiver.next().await;
    assert_is(&retried, &event);
    assert_eq!(retried.header("Herald-Delivery-Attempt"), "2");
    assert!(retried.at - hung.at >= Duration::from_millis(200));
    let view = eventually("the retry to count as handled", || async {
        let (_, view) = api.get("/subscriptions/slow").await;
        (view["handled"] == 1).then_some(view)
    })
    .await;
    assert_eq!(view["timeout_ms"], 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_dead_lettered_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let api = Api::new(&server);
    // A port that was just free: nothing listens on it.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    api.subscribe(json!({
        "name": "nowhere", "topics": ["ping"], "url": format!("http://{closed}/hook"),
        "retry": {"max_attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 1}
    }))
    .await;
    let event = publish(&server, "ping", json!({})).await;
    let bus = &server.state().bus;
    let letter = eventually("the dead letter", || async {
        bus.dead_letters(&DeadLetterQuery::default().subscriber("webhook:nowhere"))
            .await
            .unwrap()
            .pop()
    })
    .await;
    assert_eq!(letter.event.id(), event.id());
    assert_eq!(letter.attempts, 2);
    assert!(
        letter.reason.contains("cannot POST to"),
        "{}",
        letter.reason
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_stops_delivery_and_enable_resumes_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let api = Api::new(&server);
    let mut receiver = Receiver::start().await;
    api.subscribe(json!({"name": "ship", "topics": ["shipment.*"], "url": receiver.url}))
        .await;
    let first = publish(&server, "shipment.packed", json!({"n": 1})).await;
    assert_is(&receiver.next().await, &first);
    eventually("the first delivery to be checkpointed", || async {
        let (_, view) = api.get("/subscriptions/ship").await;
        (view["checkpoint"].as_u64() >= first.position()).then_some(())
    })
    .await;

    let (status, view) = api.post("/subscriptions/ship/disable", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "disabled");
    let held = [
        publish(&server, "shipment.sent", json!({"n": 2})).await,
        publish(&server, "shipment.delivered", json!({"n": 3})).await,
    ];
    // Disabled: the events wait, the lag shows them.
    let (_, view) = api.get("/subscriptions/ship").await;
    assert_eq!(view["status"], "disabled");
    assert!(view["lag"].as_u64().unwrap() >= 2, "{view}");
    assert!(
        receiver.arrivals.try_recv().is_err(),
        "nothing is delivered while disabled"
    );

    let (status, view) = api.post("/subscriptions/ship/enable", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "enabled");
    for event in &held {
        assert_is(&receiver.next().await, event);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_again_from_the_start_a_position_or_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let api = Api::new(&server);
    let mut receiver = Receiver::start().await;
    api.subscribe(json!({"name": "audit", "topics": ["account.#"], "url": receiver.url}))
        .await;
    let events = [
        publish(&server, "account.opened", json!({"n": 1})).await,
        publish(&server, "account.funded", json!({"n": 2})).await,
    ];
    for event in &events {
        assert_is(&receiver.next().await, event);
    }

    let (status, body) = api
        .post("/subscriptions/audit/replay", json!({"from": "start"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checkpoint"], 0);
    for event in &events {
        assert_is(&receiver.next().await, event);
    }

    let (status, body) = api
        .post(
            "/subscriptions/audit/replay",
            json!({"position": events[0].position().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_is(&receiver.next().await, &events[1]);

    let since = events[1].recorded_at().to_rfc3339();
    let (status, body) = api
        .post("/subscriptions/audit/replay", json!({"time": since}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_is(&receiver.next().await, &events[1]);

    for (bad, expected) in [
        (json!({}), "exactly one"),
        (json!({"from": "yesterday"}), "\"yesterday\""),
        (json!({"time": "noon"}), "RFC 3339"),
        (json!({"from": "start", "position": 1}), "exactly one"),
    ] {
        let (status, problem) = api.post("/subscriptions/audit/replay", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            problem["detail"].as_str().unwrap().contains(expected),
            "{bad}: {problem}"
        );
    }
    let (status, _) = api
        .post("/subscriptions/nope/replay", json!({"from": "start"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start().await;
    let mut paused_receiver = Receiver::start().await;
    let secret = "restart-secret";
    let before = {
        let server = start(&dir).await;
        let api = Api::new(&server);
        api.subscribe(json!({
            "name": "stock", "topics": ["stock.*"], "url": receiver.url, "secret": secret
        }))
        .await;
        api.subscribe(json!({"name": "paused", "topics": ["stock.*"], "url": paused_receiver.url}))
            .await;
        let (status, _) = api.post("/subscriptions/paused/disable", json!({})).await;
        assert_eq!(status, StatusCode::OK);
        let events = [
            publish(&server, "stock.low", json!({"sku": "a"})).await,
            publish(&server, "stock.out", json!({"sku": "a"})).await,
        ];
        for event in &events {
            let arrival = receiver.next().await;
            assert_is(&arrival, event);
            assert_signed(&arrival, secret);
        }
        server.shutdown().await;
        events
    };

    let server = start(&dir).await;
    let api = Api::new(&server);
    let (status, listed) = api.get("/subscriptions").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["paused", "stock"]);
    let (_, stock) = api.get("/subscriptions/stock").await;
    assert_eq!(stock["running"], true);
    assert_eq!(stock["status"], "enabled");
    assert_eq!(stock["signed"], true);
    assert!(
        stock["checkpoint"].as_u64() >= before[1].position(),
        "{stock}"
    );
    let (_, paused) = api.get("/subscriptions/paused").await;
    assert_eq!(paused["status"], "disabled");
    assert_eq!(paused["running"], false, "{paused}");

    // The next arrival is the new event: nothing acknowledged comes again,
    // and it is still signed with the secret kept sealed in the store.
    let after = publish(&server, "stock.refilled", json!({"sku": "a"})).await;
    let arrival = receiver.next().await;
    assert_is(&arrival, &after);
    assert_signed(&arrival, secret);

    // The subscription disabled before the restart gets, once enabled,
    // everything appended since it was disabled.
    assert!(paused_receiver.arrivals.try_recv().is_err());
    let (status, paused) = api.post("/subscriptions/paused/enable", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["running"], true);
    for event in before.iter().chain([&after]) {
        assert_is(&paused_receiver.next().await, event);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_get_problems_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let api = Api::new(&server);
    let url = "http://127.0.0.1:9/hook";
    for (body, expected) in [
        (
            json!({"name": "has space", "topics": ["a"], "url": url}),
            "invalid subscription name",
        ),
        (
            json!({"name": "", "topics": ["a"], "url": url}),
            "name is empty",
        ),
        (
            json!({"name": "x", "topics": [], "url": url}),
            "topics is empty",
        ),
        (
            json!({"name": "x", "topics": ["order..created"], "url": url}),
            "invalid topic pattern",
        ),
        (
            json!({"name": "x", "topics": ["a"], "url": "ftp://h/x"}),
            "only http and https",
        ),
        (
            json!({"name": "x", "topics": ["a"], "url": "nowhere"}),
            "not a valid URL",
        ),
        (
            json!({"name": "x", "topics": ["a"], "url": url, "retry": {"max_attempts": 0}}),
            "max_attempts is 0",
        ),
        (
            json!({"name": "x", "topics": ["a"], "url": url, "retry": {"initial_backoff_ms": 500, "max_backoff_ms": 100}}),
            "above retry.max_backoff_ms",
        ),
        (
            json!({"name": "x", "topics": ["a"], "url": url, "retry": {"attempts": 3}}),
            "unknown field `attempts`",
        ),
        (json!({"name": "x", "topics": ["a"]}), "missing field `url`"),
        (
            json!({"name": "x", "topics": ["a"], "url": url, "secret": ""}),
            "secret is empty",
        ),
    ] {
        let (status, problem) = api.post("/subscriptions", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(problem["title"], "Bad request");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{body}: {detail}");
    }
    let (status, problem) = api.post_raw("/subscriptions", "{\"name\": ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not a valid subscription")
    );
    let (_, listed) = api.get("/subscriptions").await;
    assert_eq!(listed, json!([]), "nothing was written");

    // Creating is idempotent; another definition under the name conflicts.
    let definition = json!({"name": "x", "topics": ["a"], "url": url, "secret": "s"});
    api.subscribe(definition.clone()).await;
    let (status, again) = api.post("/subscriptions", definition).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["name"], "x");
    for other in [
        json!({"name": "x", "topics": ["b"], "url": url, "secret": "s"}),
        json!({"name": "x", "topics": ["a"], "url": url, "secret": "t"}),
        json!({"name": "x", "topics": ["a"], "url": url}),
    ] {
        let (status, problem) = api.post("/subscriptions", other.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{other}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("another definition")
        );
    }

    // Unknown names are 404 everywhere.
    let (status, problem) = api.get("/subscriptions/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(problem["detail"].as_str().unwrap().contains("\"missing\""));
    for path in ["disable", "enable"] {
        let (status, _) = api
            .post(&format!("/subscriptions/missing/{path}"), json!({}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = api.delete("/subscriptions/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting forgets it: the name is free for another definition.
    let (status, _) = api.delete("/subscriptions/x").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(server.state().bus.subscriber("webhook:x").is_none());
    let (status, _) = api.get("/subscriptions/x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.subscribe(json!({"name": "x", "topics": ["b"], "url": url}))
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_stops_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let api = Api::new(&server);
    let mut gone = Receiver::start().await;
    let mut kept = Receiver::start().await;
    api.subscribe(json!({"name": "gone", "topics": ["note.*"], "url": gone.url}))
        .await;
    api.subscribe(json!({"name": "kept", "topics": ["note.*"], "url": kept.url}))
        .await;
    let first = publish(&server, "note.added", json!({})).await;
    assert_is(&gone.next().await, &first);
    assert_is(&kept.next().await, &first);
    let (status, _) = api.delete("/subscriptions/gone").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let second = publish(&server, "note.added", json!({})).await;
    assert_is(&kept.next().await, &second);
    assert!(
        gone.arrivals.try_recv().is_err(),
        "a deleted subscription gets nothing"
    );
    server.shutdown().await;
}

/// A PostgreSQL schema of this test's own, named as the store crate's
/// tests name theirs so that their clean-up drops it later.
fn pg_schema() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!(
        "herald_test_{}_{:08x}",
        now.as_secs(),
        now.subsec_nanos() ^ std::process::id()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_subscription_delivers_and_resumes_after_a_restart() {
    let url = std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = pg_schema();
    let open = || async {
        Backend::open(&url, &schema)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url}: {e}"))
    };
    let mut receiver = Receiver::start().await;
    let first = {
        let server = Server::start_on(open().await, config()).await.unwrap();
        let api = Api::new(&server);
        api.subscribe(json!({
            "name": "pg", "topics": ["cart.*"], "url": receiver.url, "secret": "pg-secret"
        }))
        .await;
        let first = publish(&server, "cart.checked_out", json!({"cart": 1})).await;
        let arrival = receiver.next().await;
        assert_is(&arrival, &first);
        assert_signed(&arrival, "pg-secret");
        server.shutdown().await;
        first
    };
    let server = Server::start_on(open().await, config()).await.unwrap();
    let api = Api::new(&server);
    let (_, view) = api.get("/subscriptions/pg").await;
    assert_eq!(view["running"], true, "{view}");
    assert!(view["checkpoint"].as_u64() >= first.position(), "{view}");
    let second = publish(&server, "cart.abandoned", json!({"cart": 2})).await;
    let arrival = receiver.next().await;
    assert_is(&arrival, &second);
    assert_signed(&arrival, "pg-secret");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_one_store_follow_each_others_subscriptions() {
    let url = std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = pg_schema();
    let open = || async {
        Backend::open(&url, &schema)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url}: {e}"))
    };
    let one = Server::start_on(open().await, config()).await.unwrap();
    let two = Server::start_on(open().await, config()).await.unwrap();
    let mut receiver = Receiver::start().await;
    Api::new(&one)
        .subscribe(json!({"name": "shared", "topics": ["cart.*"], "url": receiver.url}))
        .await;
    let other = Api::new(&two);
    eventually("the second server runs the subscription", || async {
        let (status, view) = other.get("/subscriptions/shared").await;
        (status == StatusCode::OK && view["running"] == true).then_some(())
    })
    .await;
    // Only the second server sees this event published (on its bus), yet
    // both run the subscriber: it reaches the receiver.
    let event = publish(&two, "cart.checked_out", json!({"cart": 1})).await;
    assert_is(&receiver.next().await, &event);

    let (status, _) = Api::new(&one).delete("/subscriptions/shared").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually("the second server stopped the subscription", || async {
        two.state()
            .bus
            .subscriber("webhook:shared")
            .is_none()
            .then_some(())
    })
    .await;
    one.shutdown().await;
    two.shutdown().await;
}
