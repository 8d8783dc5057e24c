//! The HTTP API against a real server on a loopback port: on a temporary
//! SQLite file, and (the scenarios marked so) on PostgreSQL, each test in a
//! schema of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::testing::Recorder;
use herald::{HandlerError, Subscriber, handler_fn};
use herald_server::{Backend, ServeConfig, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A server and a client for one test.
struct Fixture {
    server: Server,
    client: reqwest::Client,
    base: String,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    async fn sqlite() -> Self {
        Self::sqlite_with(ServeConfig::default()).await
    }

    async fn sqlite_with(config: ServeConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let backend = Backend::open(&url, "")
            .await
            .expect("the SQLite store opens");
        Self::start(backend, config, Some(dir)).await
    }

    async fn postgres() -> Self {
        let url = std::env::var("HERALD_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // The store tests' clean-up drops `herald_test_<secs>_*` schemas
        // once they are old, these included.
        let schema = format!("herald_test_{secs}_api{:08x}", rand::random::<u32>());
        let backend = Backend::open(&url, &schema)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url}: {e}"));
        Self::start(backend, ServeConfig::default(), None).await
    }

    async fn start(backend: Backend, config: ServeConfig, dir: Option<tempfile::TempDir>) -> Self {
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        };
        let server = Server::start_on(backend, config)
            .await
            .expect("the server starts");
        let base = format!("http://{}", server.addr());
        Self {
            server,
            client: reqwest::Client::new(),
            base,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        answer(response).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    async fn append(
        &self,
        stream: &str,
        expected: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(self.url(&format!("/api/streams/{stream}/events")))
            .json(&body);
        if let Some(expected) = expected {
            request = request.header("Herald-Expected-Version", expected);
        }
        answer(request.send().await.unwrap()).await
    }
}

/// The status and JSON body; a problem must come as problem+json.
async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(
            content_type, "application/problem+json",
            "{status} answered {content_type}: {text}"
        );
    }
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn order(n: u64) -> Value {
    json!({"type": "order.created", "data": {"order_id": n}})
}

// ---- scenarios, on any store ----

async fn appends_and_reads_back_a_stream(f: Fixture) {
    let (status, body) = f
        .append(
            "order-1",
            Some("no_stream"),
            json!({"events": [
                order(1),
                {"type": "order.paid", "data": {"cents": 100}, "metadata": {"headers": {"tenant": "acme"}}},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["stream"], "order-1");
    assert_eq!(body["version"], 1);
    let appended = body["events"].as_array().unwrap();
    assert_eq!(appended.len(), 2);
    assert_eq!(appended[0]["version"], 0);
    assert_eq!(appended[1]["version"], 1);
    assert!(appended[1]["position"].as_u64() > appended[0]["position"].as_u64());

    let (status, read) = f.get("/api/streams/order-1/events").await;
    assert_eq!(status, StatusCode::OK);
    let events = read["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "order.created");
    assert_eq!(events[0]["stream"], "order-1");
    assert_eq!(events[0]["data"], json!({"order_id": 1}));
    assert_eq!(events[1]["metadata"]["headers"]["tenant"], "acme");
    assert_eq!(events[0]["id"], appended[0]["id"]);
    assert!(events[0]["recorded_at"].is_string());
    assert_eq!(read["next"], Value::Null);

    let (status, backward) = f
        .get("/api/streams/order-1/events?direction=backward&limit=1")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backward["events"][0]["version"], 1);
    assert_eq!(backward["next"], 0);
    let (_, page) = f.get("/api/streams/order-1/events?from=1&limit=1").await;
    assert_eq!(page["events"][0]["type"], "order.paid");

    let id = appended[0]["id"].as_str().unwrap();
    let (status, one) = f.get(&format!("/api/events/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["position"], appended[0]["position"]);
    let (status, missing) = f
        .get("/api/events/01890000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing["detail"].as_str().unwrap().contains("no event"));
    f.server.shutdown().await;
}

async fn refuses_a_wrong_expected_version_and_writes_nothing(f: Fixture) {
    let (status, _) = f
        .append("order-2", None, json!({"events": [order(1)]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, problem) = f
        .append("order-2", Some("5"), json!({"events": [order(2)]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["stream"], "order-2");
    assert_eq!(problem["expected"], 5);
    assert_eq!(problem["actual"], 0);
    assert!(
        problem["detail"].as_str().unwrap().contains("order-2"),
        "{problem}"
    );
    let (status, problem) = f
        .append("order-2", Some("no_stream"), json!({"events": [order(2)]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["expected"], "no_stream");
    let (status, _) = f
        .append("order-2", Some("0"), json!({"events": [order(2)]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, read) = f.get("/api/streams/order-2/events").await;
    assert_eq!(read["events"].as_array().unwrap().len(), 2);
    let (status, problem) = f
        .append("order-404", Some("exists"), json!({"events": [order(1)]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["actual"], Value::Null);
    f.server.shutdown().await;
}

async fn repeating_event_ids_is_idempotent(f: Fixture) {
    let batch = json!({"events": [
        {"type": "order.created", "id": "01890000-0000-7000-8000-0000000000a1", "data": {"n": 1}},
        {"type": "order.paid", "id": "01890000-0000-7000-8000-0000000000a2", "data": {"n": 2}},
    ]});
    let (status, first) = f.append("order-3", None, batch.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = f.append("order-3", None, batch).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(first["events"], again["events"]);
    let (_, read) = f.get("/api/streams/order-3/events").await;
    assert_eq!(read["events"].as_array().unwrap().len(), 2);
    let (status, problem) = f
        .append(
            "order-3",
            None,
            json!({"events": [{"type": "order.created", "id": "01890000-0000-7000-8000-0000000000a1", "data": {"n": 9}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    f.server.shutdown().await;
}

async fn reads_the_global_log_by_type_and_page(f: Fixture) {
    for (stream, kind) in [
        ("log-1", "order.created"),
        ("log-2", "payment.settled"),
        ("log-1", "order.shipped"),
        ("log-3", "order.line.added"),
    ] {
        let (status, _) = f
            .append(
                stream,
                None,
                json!({"events": [{"type": kind, "data": {}}]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (_, all) = f.get("/api/events").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 4);
    let (_, orders) = f.get("/api/events?types=order.*").await;
    let types: Vec<&str> = orders["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["order.created", "order.shipped"]);
    let (_, deep) = f.get("/api/events?types=order.%23,payment.settled").await;
    assert_eq!(deep["events"].as_array().unwrap().len(), 4);

    let (_, page) = f.get("/api/events?limit=3").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    let next = page["next"].as_u64().expect("a next cursor");
    let (_, rest) = f.get(&format!("/api/events?after={next}&limit=3")).await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);
    assert_eq!(rest["events"][0]["type"], "order.line.added");
    assert_eq!(rest["next"], Value::Null);

    let (status, problem) = f.get("/api/events?types=order.*s").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["detail"].as_str().unwrap().contains("order.*s"));
    f.server.shutdown().await;
}

async fn lists_streams_by_prefix_and_page(f: Fixture) {
    for stream in ["cart-1", "cart-2", "cart-3", "user-1"] {
        f.append(stream, None, json!({"events": [order(1), order(2)]}))
            .await;
    }
    let (status, carts) = f.get("/api/streams?prefix=cart-&limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = carts["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cart-1", "cart-2"]);
    assert_eq!(carts["streams"][0]["count"], 2);
    assert_eq!(carts["streams"][0]["version"], 1);
    assert_eq!(carts["next"], "cart-2");
    let (_, rest) = f
        .get("/api/streams?prefix=cart-&limit=2&after=cart-2")
        .await;
    assert_eq!(rest["streams"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next"], Value::Null);
    let (_, all) = f.get("/api/streams").await;
    assert_eq!(all["streams"].as_array().unwrap().len(), 4);
    f.server.shutdown().await;
}

async fn publishes_through_the_bus_to_in_process_subscribers(f: Fixture) {
    let recorder = Recorder::attach(&f.server.state().bus);
    let (status, body) = f
        .post(
            "/api/events",
            json!({"events": [
                {"type": "order.created", "data": {"order_id": 7}},
                {"type": "order.created", "data": {"order_id": 8}, "stream": "order-8"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events[0]["stream"], "order.created");
    assert_eq!(events[1]["stream"], "order-8");
    assert!(events[0]["position"].as_u64().is_some());
    assert_eq!(recorder.events_of("order.created").len(), 2);
    let (_, read) = f.get("/api/streams/order-8/events").await;
    assert_eq!(read["events"][0]["data"]["order_id"], 8);
    f.server.shutdown().await;
}

async fn publishing_several_events_stores_all_or_none(f: Fixture) {
    let (status, first) = f
        .post(
            "/api/events",
            json!({"events": [{"type": "order.created", "data": {"n": 1}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let taken = first["events"][0]["id"].as_str().unwrap().to_owned();
    // The second event reuses a stored id with other content: the request
    // fails, and the first event of it is not stored either.
    let (status, problem) = f
        .post(
            "/api/events",
            json!({"events": [
                {"type": "invoice.issued", "data": {"n": 2}},
                {"type": "order.created", "data": {"n": 99}, "id": taken},
            ]}),
        )
        .await;
    assert!(status.is_client_error(), "{status}: {problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains(&taken),
        "{problem}"
    );
    let (_, log) = f.get("/api/events").await;
    let types: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["order.created"], "nothing of the failed request");
    f.server.shutdown().await;
}

// ---- scenarios on SQLite only: they test the HTTP layer, not the store ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_problem_and_writes_nothing() {
    let f = Fixture::sqlite_with(ServeConfig {
        body_limit: 4096,
        ..ServeConfig::default()
    })
    .await;
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            f.client
                .post(f.url("/api/streams/s-1/events"))
                .body("{\"events\": [")
                .header("content-type", "application/json"),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            f.client
                .post(f.url("/api/streams/s-1/events"))
                .json(&json!({"events": [{"data": {}}]})),
            StatusCode::BAD_REQUEST,
            "events[0]",
        ),
        (
            f.client
                .post(f.url("/api/streams/s-1/events"))
                .json(&json!({"events": [order(1), {"type": "bad type!", "data": {}}]})),
            StatusCode::BAD_REQUEST,
            "events[1].type",
        ),
        (
            f.client
                .post(f.url("/api/streams/s 1/events"))
                .json(&json!({"events": [order(1)]})),
            StatusCode::BAD_REQUEST,
            "invalid stream name",
        ),
        (
            f.client
                .post(f.url("/api/streams/s-1/events"))
                .header("Herald-Expected-Version", "soon")
                .json(&json!({"events": [order(1)]})),
            StatusCode::BAD_REQUEST,
            "\"soon\"",
        ),
        (
            f.client
                .post(f.url("/api/streams/s-1/events"))
                .json(&json!({"events": [{"type": "a.b", "data": "x".repeat(5000)}]})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "4096 bytes",
        ),
        (
            f.client
                .post(f.url("/api/streams/s-1/events"))
                .json(&json!({"events": []})),
            StatusCode::BAD_REQUEST,
            "no event",
        ),
        (
            f.client
                .post(f.url("/api/streams/s-1/events"))
                .json(&json!({"events": [{"type": "a.b", "metadata": {"user": 1}}]})),
            StatusCode::BAD_REQUEST,
            "events[0].metadata",
        ),
        (
            f.client
                .post(f.url("/api/events"))
                .json(&json!({"events": [order(1), {"type": "ok.type", "stream": "no spaces"}]})),
            StatusCode::BAD_REQUEST,
            "events[1].stream",
        ),
        (
            f.client.get(f.url("/api/events?limit=0")),
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            f.client.get(f.url("/api/events?after=minus")),
            StatusCode::BAD_REQUEST,
            "after",
        ),
        (
            f.client.get(f.url("/api/events/not-a-uuid")),
            StatusCode::BAD_REQUEST,
            "not a UUID",
        ),
        (
            f.client
                .get(f.url("/api/streams/s-1/events?direction=sideways")),
            StatusCode::BAD_REQUEST,
            "direction",
        ),
        (
            f.client.get(f.url("/api/nowhere")),
            StatusCode::NOT_FOUND,
            "/api/nowhere",
        ),
        (
            f.client.put(f.url("/api/events")),
            StatusCode::METHOD_NOT_ALLOWED,
            "PUT",
        ),
    ];
    for (request, status, needle) in cases {
        let (got, problem) = answer(request.send().await.unwrap()).await;
        assert_eq!(got, status, "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{needle:?} not in {problem}");
        assert!(problem["title"].is_string(), "{problem}");
    }
    let (_, log) = f.get("/api/events").await;
    assert_eq!(log["events"], json!([]), "nothing was written");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requires_a_token_when_tokens_are_set() {
    let f = Fixture::sqlite_with(ServeConfig {
        tokens: vec!["s3cret".to_owned()],
        ..ServeConfig::default()
    })
    .await;
    let (status, problem) = f.get("/api/streams").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(problem["detail"].as_str().unwrap().contains("Bearer"));
    let response = f
        .client
        .get(f.url("/api/streams"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = f
        .client
        .get(f.url("/api/events?access_token=s3cret&limit=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the query token is not a parameter"
    );
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_retried_and_discarded() {
    let f = Fixture::sqlite().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    f.server
        .state()
        .bus
        .subscribe(
            Subscriber::new(
                "api-billing",
                handler_fn(move |_, _| {
                    let ok = flag.load(Ordering::SeqCst);
                    async move {
                        if ok {
                            Ok(())
                        } else {
                            Err(HandlerError::retry("billing is down"))
                        }
                    }
                }),
            )
            .topic("invoice.*"),
        )
        .unwrap();
    let (status, _) = f
        .post(
            "/api/events",
            json!({"events": [{"type": "invoice.sent", "data": {"n": 1}}, {"type": "invoice.sent", "data": {"n": 2}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, list) = f.get("/api/dead-letters?subscriber=api-billing").await;
    assert_eq!(status, StatusCode::OK);
    let letters = list["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2, "{list}");
    assert_eq!(letters[0]["event"]["data"]["n"], 1);
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("billing is down")
    );
    let (_, none) = f.get("/api/dead-letters?error=nothing-like-this").await;
    assert_eq!(none["dead_letters"], json!([]));
    let (_, by_type) = f.get("/api/dead-letters?type=invoice.*&limit=1").await;
    assert_eq!(by_type["dead_letters"].as_array().unwrap().len(), 1);
    // Paging: the full first page points at the second, which is the last.
    assert_eq!(by_type["dead_letters"][0]["id"], letters[0]["id"]);
    let next = by_type["next"].as_str().expect("a cursor").to_owned();
    let (_, second_page) = f
        .get(&format!(
            "/api/dead-letters?type=invoice.*&limit=1&after={next}"
        ))
        .await;
    assert_eq!(second_page["dead_letters"][0]["id"], letters[1]["id"]);
    let last = second_page["next"]
        .as_str()
        .expect("a full page has a cursor");
    let (_, empty) = f
        .get(&format!("/api/dead-letters?limit=1&after={last}"))
        .await;
    assert_eq!(empty["dead_letters"], json!([]));
    assert_eq!(empty["next"], Value::Null);
    let (status, bad) = f.get("/api/dead-letters?after=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");

    let first = letters[0]["id"].as_str().unwrap().to_owned();
    let second = letters[1]["id"].as_str().unwrap().to_owned();
    let (status, one) = f.get(&format!("/api/dead-letters/{first}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["subscriber"], "api-billing");

    let (status, failed) = f
        .post(&format!("/api/dead-letters/{first}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(failed["outcome"], "failed", "{failed}");
    assert!(failed["dead_letter"]["attempts"].as_u64().unwrap() >= 2);

    healthy.store(true, Ordering::SeqCst);
    let (_, handled) = f
        .post(&format!("/api/dead-letters/{first}/retry"), json!({}))
        .await;
    assert_eq!(handled["outcome"], "handled", "{handled}");
    let (status, _) = f.get(&format!("/api/dead-letters/{first}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let response = f
        .client
        .delete(f.url(&format!("/api/dead-letters/{second}")))
        .send()
        .await
        .unwrap();
    let (status, discarded) = answer(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(discarded["id"], second);
    let (_, list) = f.get("/api/dead-letters").await;
    assert_eq!(list["dead_letters"], json!([]));

    // Retry-all, on a fresh failure.
    healthy.store(false, Ordering::SeqCst);
    f.post("/api/events", json!({"events": [{"type": "invoice.sent"}]}))
        .await;
    healthy.store(true, Ordering::SeqCst);
    let (status, all) = f
        .post("/api/dead-letters/retry?subscriber=api-billing", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["results"].as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all["results"][0]["outcome"], "handled");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let f = Fixture::sqlite().await;
    f.server
        .state()
        .bus
        .subscribe(
            Subscriber::new(
                "api-metrics-failing",
                handler_fn(|_, _| async { Err(HandlerError::retry("nope")) }),
            )
            .topic("metered.*"),
        )
        .unwrap();
    let (status, _) = f
        .append(
            "metered-1",
            None,
            json!({"events": [{"type": "metered.a"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    f.post("/api/events", json!({"events": [{"type": "metered.b"}]}))
        .await;
    let response = f.client.get(f.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for needle in [
        "herald_events_appended_total{endpoint=\"append\"}",
        "herald_events_appended_total{endpoint=\"publish\"}",
        "herald_http_request_duration_seconds_bucket{",
        "route=\"/api/streams/{stream}/events\"",
        "herald_subscriber_failed_total{subscriber=\"api-metrics-failing\"} 1",
        "herald_subscriber_dead_lettered_total{subscriber=\"api-metrics-failing\"} 1",
        "herald_dead_letters{subscriber=\"api-metrics-failing\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscriber_lag_is_a_metric() {
    let f = Fixture::sqlite().await;
    let bus = &f.server.state().bus;
    bus.subscribe(
        Subscriber::new("api-metrics-lagging", handler_fn(|_, _| async { Ok(()) }))
            .topic("lagging.*")
            .mode(herald::DeliveryMode::Durable),
    )
    .unwrap();
    bus.disable("api-metrics-lagging").unwrap();
    f.append(
        "lag-1",
        None,
        json!({"events": [{"type": "lagging.a"}, {"type": "lagging.b"}]}),
    )
    .await;
    let text = f
        .client
        .get(f.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("herald_subscriber_lag{subscriber=\"api-metrics-lagging\"} 2"),
        "{text}"
    );
    f.server.shutdown().await;
}

/// Every operation of the OpenAPI document answers (not with "no such
/// endpoint" or "method not allowed"), and every path accepts exactly the
/// methods the document lists. (The router builds its own endpoints from
/// one table, which a unit test checks against the document.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_server() {
    let f = Fixture::sqlite().await;
    let (status, doc) = f.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{} paths", paths.len());
    let known = ["get", "post", "put", "delete", "patch"];
    for (path, item) in paths {
        let concrete = path
            .replace("{stream}", "doc-stream")
            .replace("{id}", "01890000-0000-7000-8000-000000000000")
            .replace("{name}", "doc-subscriber");
        let mut documented: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| known.contains(&k.as_str()))
            .map(|k| k.to_uppercase())
            .collect();
        assert!(!documented.is_empty(), "{path} has no operation");
        for method in &documented {
            let request = f
                .client
                .request(method.parse().unwrap(), f.url(&concrete))
                .header("content-type", "application/json")
                .body("{}");
            let response = if path == "/api/subscribe" {
                // An endless answer: its headers are enough.
                request
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .unwrap()
            } else {
                request.send().await.unwrap()
            };
            let status = response.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                let problem: Value = response.json().await.unwrap();
                assert_ne!(problem["title"], "No such endpoint", "{method} {path}");
            }
        }
        // A method no endpoint uses: the 405's Allow lists what the path takes.
        let response = f
            .client
            .request("PATCH".parse().unwrap(), f.url(&concrete))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let mut allowed: Vec<String> = response.headers()["allow"]
            .to_str()
            .unwrap()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| m != "HEAD")
            .collect();
        allowed.sort();
        documented.sort();
        assert_eq!(allowed, documented, "methods of {path}");
    }
    f.server.shutdown().await;
}

macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Fixture::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Fixture::postgres().await).await;
                }
            )*
        }
    };
}

on_every_store!(
    appends_and_reads_back_a_stream,
    refuses_a_wrong_expected_version_and_writes_nothing,
    repeating_event_ids_is_idempotent,
    reads_the_global_log_by_type_and_page,
    lists_streams_by_prefix_and_page,
    publishes_through_the_bus_to_in_process_subscribers,
    publishing_several_events_stores_all_or_none,
);
