//! Live subscriptions over server-sent events: catch-up then live, resuming
//! with `Last-Event-ID` with no gap and no duplicate, on SQLite and
//! PostgreSQL.

use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt};
use herald_server::{Backend, ServeConfig, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::timeout;

/// How long a test waits for one message before it fails.
const WAIT: Duration = Duration::from_secs(20);

async fn sqlite() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("herald.db").display());
    let backend = Backend::open(&url, "").await.unwrap();
    (start(backend).await, dir)
}

async fn postgres() -> Server {
    let url = std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let schema = format!("herald_test_{secs}_sse{:08x}", rand::random::<u32>());
    let backend = Backend::open(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url}: {e}"));
    start(backend).await
}

async fn start(backend: Backend) -> Server {
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServeConfig::default()
    };
    Server::start_on(backend, config).await.unwrap()
}

/// One server-sent message.
#[derive(Debug, Default)]
struct Message {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

/// A minimal SSE reader over a streaming response.
struct Sse {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Sse {
    async fn open(server: &Server, query: &str, last_event_id: Option<u64>) -> Self {
        let mut request =
            reqwest::Client::new().get(format!("http://{}/api/subscribe{query}", server.addr()));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next message (comments skipped), or a failure after [`WAIT`].
    async fn next(&mut self) -> Message {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = Message::default();
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        message.id = Some(v.trim().parse().unwrap());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        message.event = Some(v.trim().to_owned());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if any && !message.data.is_empty() {
                            message.data.push('\n');
                        }
                        message.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    return message;
                }
                continue;
            }
            let chunk = timeout(WAIT, self.body.next())
                .await
                .expect("a message within the deadline")
                .expect("the stream is open")
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next `n` events, as (position, event).
    async fn take(&mut self, n: usize) -> Vec<(u64, Value)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let message = self.next().await;
            assert_eq!(message.event, None, "{message:?}");
            let event: Value = serde_json::from_str(&message.data).unwrap();
            let id = message.id.expect("every event has an id");
            assert_eq!(event["position"], id, "id is the global position");
            out.push((id, event));
        }
        out
    }
}

async fn append(server: &Server, stream: &str, events: Vec<Value>) -> Vec<u64> {
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/api/streams/{stream}/events",
            server.addr()
        ))
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect()
}

fn typed(kind: &str, n: u64) -> Value {
    json!({"type": kind, "data": {"n": n}})
}

async fn catches_up_then_follows_live_by_topic(server: Server) {
    let before = append(
        &server,
        "sse-1",
        vec![
            typed("order.created", 1),
            typed("payment.settled", 2),
            typed("order.paid", 3),
        ],
    )
    .await;
    let mut sse = Sse::open(&server, "?topics=order.*", None).await;
    let caught_up = sse.take(2).await;
    assert_eq!(
        caught_up.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [before[0], before[2]]
    );
    assert_eq!(caught_up[1].1["type"], "order.paid");
    assert_eq!(caught_up[1].1["stream"], "sse-1");
    assert_eq!(caught_up[1].1["data"]["n"], 3);

    let live = append(
        &server,
        "sse-2",
        vec![typed("payment.settled", 4), typed("order.shipped", 5)],
    )
    .await;
    let got = sse.take(1).await;
    assert_eq!(got[0].0, live[1]);
    assert_eq!(got[0].1["type"], "order.shipped");
    drop(sse);
    server.shutdown().await;
}

async fn resumes_after_last_event_id_without_gap_or_duplicate(server: Server) {
    // More than one read batch of history, to cross batch boundaries.
    let mut expected = Vec::new();
    for chunk in 0..12u64 {
        let batch = (0..100)
            .map(|i| typed("tick.happened", chunk * 100 + i))
            .collect();
        expected.extend(append(&server, "ticks", batch).await);
    }
    let mut sse = Sse::open(&server, "?topics=tick.*", None).await;
    let first = sse.take(700).await;
    let last_seen = first.last().unwrap().0;
    drop(sse);

    // Appends while nobody listens, then while the client catches up and
    // goes live: a writer runs alongside the second connection.
    for chunk in 12..15u64 {
        let batch = (0..100)
            .map(|i| typed("tick.happened", chunk * 100 + i))
            .collect();
        expected.extend(append(&server, "ticks", batch).await);
    }
    let mut sse = Sse::open(&server, "?topics=tick.*&after=0", Some(last_seen)).await;
    let addr = server.addr();
    let writer = tokio::spawn(async move {
        let mut positions = Vec::new();
        let client = reqwest::Client::new();
        for n in 0..200u64 {
            let response = client
                .post(format!("http://{addr}/api/streams/ticks-live/events"))
                .json(&json!({"events": [typed("tick.happened", 10_000 + n)]}))
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            positions.push(body["events"][0]["position"].as_u64().unwrap());
        }
        positions
    });
    let rest = sse.take(expected.len() - 700 + 200).await;
    expected.extend(writer.await.unwrap());

    let received: Vec<u64> = first.iter().chain(rest.iter()).map(|(p, _)| *p).collect();
    assert_eq!(received, expected, "every event once, in position order");
    drop(sse);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_now_sends_only_new_events() {
    let (server, _dir) = sqlite().await;
    append(&server, "old", vec![typed("old.event", 1)]).await;
    let mut sse = Sse::open(&server, "?after=now", None).await;
    let positions = append(&server, "new", vec![typed("new.event", 2)]).await;
    let got = sse.take(1).await;
    assert_eq!(got[0].0, positions[0]);
    assert_eq!(got[0].1["type"], "new.event");
    drop(sse);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_through_the_api_reach_subscribers() {
    let (server, _dir) = sqlite().await;
    let mut sse = Sse::open(&server, "?topics=user.%23", None).await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/events", server.addr()))
        .json(&json!({"events": [{"type": "user.signed.up", "data": {"email": "a@b.c"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let got = sse.take(1).await;
    assert_eq!(got[0].1["data"]["email"], "a@b.c");
    drop(sse);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_with_newlines_stays_one_message() {
    let (server, _dir) = sqlite().await;
    // The payload is kept as sent, line breaks between tokens included.
    let body = "{\"events\": [{\"type\": \"pretty.printed\", \"data\": {\n  \"a\": 1,\n  \"b\": [\n    2\n  ]\n}}]}";
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/api/streams/pretty/events",
            server.addr()
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let mut sse = Sse::open(&server, "", None).await;
    let got = sse.take(1).await;
    assert_eq!(got[0].1["data"], json!({"a": 1, "b": [2]}));
    drop(sse);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_resume_points_and_patterns_are_problems() {
    let (server, _dir) = sqlite().await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/subscribe", server.addr());
    for (request, needle) in [
        (
            client.get(&url).header("Last-Event-ID", "abc"),
            "Last-Event-ID",
        ),
        (client.get(format!("{url}?after=-1")), "after"),
        (client.get(format!("{url}?topics=a..b")), "a..b"),
        (client.get(format!("{url}?topic=a.b")), "topic"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{needle} not in {problem}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_ends_open_subscriptions() {
    let (server, _dir) = sqlite().await;
    let positions = append(&server, "bye", vec![typed("bye.now", 1)]).await;
    let mut sse = Sse::open(&server, "", None).await;
    assert_eq!(sse.take(1).await[0].0, positions[0]);
    timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown does not wait for the open subscription");
    let end = timeout(WAIT, async {
        loop {
            match sse.body.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ends");
}

async fn many_subscribers_joining_while_events_flow_each_get_every_event_once(server: Server) {
    let mut expected = append(
        &server,
        "flow",
        (0..50).map(|n| typed("flow.a", n)).collect(),
    )
    .await;
    let addr = server.addr();
    let writer = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut positions = Vec::new();
        for round in 0..60u64 {
            let kind = if round % 3 == 0 { "other.b" } else { "flow.a" };
            let response = client
                .post(format!("http://{addr}/api/streams/flow/events"))
                .json(&json!({"events": (0..10).map(|n| typed(kind, round * 10 + n)).collect::<Vec<_>>()}))
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            if kind == "flow.a" {
                positions.extend(
                    body["events"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["position"].as_u64().unwrap()),
                );
            }
        }
        positions
    });
    // Subscribers join at different moments of the flow, from the start or
    // from a resume point.
    let mut subscribers = Vec::new();
    for i in 0..8u64 {
        let resume = (i % 2 == 1).then_some(expected[(i * 5) as usize]);
        subscribers.push((resume, Sse::open(&server, "?topics=flow.*", resume).await));
    }
    expected.extend(writer.await.unwrap());
    for (resume, mut sse) in subscribers {
        let want: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|p| resume.is_none_or(|r| *p > r))
            .collect();
        let got: Vec<u64> = sse
            .take(want.len())
            .await
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(got, want, "resuming after {resume:?}");
    }
    server.shutdown().await;
}

mod on_sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_subscribers_joining_while_events_flow_each_get_every_event_once() {
        let (server, _dir) = super::sqlite().await;
        super::many_subscribers_joining_while_events_flow_each_get_every_event_once(server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catches_up_then_follows_live_by_topic() {
        let (server, _dir) = super::sqlite().await;
        super::catches_up_then_follows_live_by_topic(server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resumes_after_last_event_id_without_gap_or_duplicate() {
        let (server, _dir) = super::sqlite().await;
        super::resumes_after_last_event_id_without_gap_or_duplicate(server).await;
    }
}

mod on_postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_subscribers_joining_while_events_flow_each_get_every_event_once() {
        super::many_subscribers_joining_while_events_flow_each_get_every_event_once(
            super::postgres().await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catches_up_then_follows_live_by_topic() {
        super::catches_up_then_follows_live_by_topic(super::postgres().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resumes_after_last_event_id_without_gap_or_duplicate() {
        super::resumes_after_last_event_id_without_gap_or_duplicate(super::postgres().await).await;
    }
}
