//! The web UI: its assets are served with the right types and a strict
//! Content-Security-Policy, and, in a real headless Chromium driven over
//! WebDriver, it shows a hostile payload as text without running it,
//! follows an event's causation chain, asks for a token, and retries a
//! dead letter with its button.
//!
//! The browser tests need Debian's `chromium` and `chromium-driver`
//! packages (`.ci/run` installs them); without them they fail and say so.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use herald::{DeadLetterQuery, EventId, HandlerError, RetryPolicy, Subscriber, handler_fn};
use herald_server::{ServeConfig, Server};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

/// How long any one wait on the browser or the server may take.
const DEADLINE: Duration = Duration::from_secs(20);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn start(dir: &tempfile::TempDir, tokens: &[&str]) -> Server {
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: format!("sqlite://{}", dir.path().join("herald.db").display()),
        tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
        ..ServeConfig::default()
    };
    Server::start(config).await.expect("the server starts")
}

/// The files of the `ui/` folder, with the media type each must have.
fn ui_files() -> Vec<(String, &'static str)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let mut files: Vec<(String, &'static str)> = std::fs::read_dir(&dir)
        .expect("the ui folder")
        .map(|entry| {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let kind = match name.rsplit_once('.').map(|(_, ext)| ext) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("svg") => "image/svg+xml",
                other => panic!("no expected media type for {name} ({other:?}): add one here"),
            };
            (name, kind)
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_asset_is_served_with_its_type_the_policy_and_an_etag() {
    let dir = tempfile::tempdir().unwrap();
    // With a token: the UI itself stays open, only the API asks for it.
    let server = start(&dir, &["ui-test-token"]).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr());
    let mut paths: Vec<(String, &str, Option<String>)> = ui_files()
        .into_iter()
        .map(|(name, kind)| {
            let on_disk = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("ui").join(&name),
            )
            .unwrap();
            (format!("/ui/{name}"), kind, Some(on_disk))
        })
        .collect();
    let index =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/index.html"))
            .unwrap();
    paths.push(("/".to_owned(), "text/html; charset=utf-8", Some(index)));
    assert!(paths.len() > 5, "the ui folder has its files: {paths:?}");
    for (path, kind, body) in paths {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], kind, "{path}");
        assert_eq!(headers["content-security-policy"], CSP, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        let etag = headers["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{path}: {etag}");
        assert_eq!(
            response.text().await.unwrap(),
            body.unwrap(),
            "{path} is the file"
        );
        let again = http
            .get(format!("{base}{path}"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path} with its etag");
        assert_eq!(again.headers()["content-security-policy"], CSP, "{path}");
    }
    let missing = http.get(format!("{base}/ui/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-security-policy"], CSP);
    let api = http
        .get(format!("{base}/api/streams"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401, "the API still wants the token");
    server.shutdown().await;
}

/// A `chromedriver` process on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const INSTALL: &str = "the web UI tests drive a real headless Chromium: install Debian's \
     `chromium` and `chromium-driver` packages (apt-get install -y chromium chromium-driver), \
     as .ci/run does";

/// The first of `names` found on the PATH.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

impl Driver {
    /// Starts chromedriver, and waits until it answers.
    async fn start() -> Self {
        let Some(binary) = on_path(&["chromedriver"]) else {
            panic!("chromedriver is not on the PATH: {INSTALL}");
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}; {INSTALL}", binary.display()));
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile: tempfile::tempdir().unwrap(),
        };
        let http = reqwest::Client::new();
        let until = Instant::now() + DEADLINE;
        loop {
            if let Ok(response) = http.get(format!("{}/status", driver.url)).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < until,
                "chromedriver did not answer on port {port} within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A new headless browser session.
    async fn browser(&self) -> Client {
        let Some(chromium) = on_path(&["chromium", "chromium-browser"]) else {
            panic!("chromium is not on the PATH: {INSTALL}");
        };
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("chromedriver could not start chromium: {err}; {INSTALL}"))
    }
}

/// Waits for the element at `css`, under the deadline; the panic shows
/// what the page showed instead.
async fn find(browser: &Client, css: &str) -> fantoccini::elements::Element {
    match browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(err) => panic!(
            "no {css} within {DEADLINE:?} ({err}); the page shows: {}",
            shown(browser).await
        ),
    }
}

/// The text of the page, for failure messages.
async fn shown(browser: &Client) -> String {
    browser
        .execute("return document.body.innerText;", vec![])
        .await
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|err| format!("(cannot read the page: {err})"))
}

/// Waits until `script` (a JavaScript expression) is true in the page.
async fn until(browser: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = browser
            .execute(&format!("return Boolean({script});"), vec![])
            .await
            .unwrap();
        if value == Value::Bool(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}; the page shows: {}",
            shown(browser).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of the element at `css`.
async fn text(browser: &Client, css: &str) -> String {
    find(browser, css).await.text().await.unwrap()
}

const SCRIPT: &str = "<script>window.__pwned=1</script>";
const IMG: &str = "<img src=x onerror=\"window.__pwned=2\">";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_markup_in_its_payload_is_shown_as_text_and_runs_nothing() {
    let driver = Driver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = "ui-secret-token";
    let server = start(&dir, &[token]).await;
    let base = format!("http://{}", server.addr());

    // An order, and an event it caused, appended through the API.
    let first = *EventId::new().as_uuid();
    let second = *EventId::new().as_uuid();
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{base}/api/streams/order-7/events"))
        .bearer_auth(token)
        .json(&json!({"events": [
            {
                "id": first,
                "type": "order.created",
                "data": {"note": SCRIPT, "image": IMG, "items": [{"sku": "a-1", "qty": 2}]},
                "metadata": {"headers": {"user": IMG}},
            },
            {
                "id": second,
                "type": "order.confirmed",
                "data": {"by": "ui test"},
                "metadata": {"correlation_id": first, "causation_id": first},
            },
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    let browser = driver.browser().await;
    browser.goto(&format!("{base}/")).await.unwrap();

    // The API wants a token: the UI asks for it, and keeps it.
    find(&browser, "#token-dialog[open]").await;
    find(&browser, "#token-input")
        .await
        .send_keys(token)
        .await
        .unwrap();
    find(&browser, "#token-save").await.click().await.unwrap();
    until(
        &browser,
        "the token is stored",
        &format!("localStorage.getItem('herald.token') === '{token}'"),
    )
    .await;

    // Streams → the stream → its first event.
    find(&browser, "#streams a[href='#/streams/order-7']")
        .await
        .click()
        .await
        .unwrap();
    find(&browser, &format!("a.event-link[href='#/events/{first}']"))
        .await
        .click()
        .await
        .unwrap();
    let data = text(&browser, "#event-data").await;
    assert!(data.contains(SCRIPT), "the script is shown as text: {data}");
    assert!(data.contains("\"sku\": \"a-1\""), "pretty-printed: {data}");
    let metadata = text(&browser, "#event-metadata").await;
    assert!(
        metadata.contains("<img src=x onerror="),
        "shown as text: {metadata}"
    );
    assert_eq!(text(&browser, "#event-type").await, "order.created");

    // Nothing of the payload became markup, and nothing ran.
    let pwned = browser
        .execute("return typeof window.__pwned;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, json!("undefined"), "a payload script ran");
    let injected = browser
        .execute(
            "return document.querySelectorAll('#view script, #view img').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0), "markup from the payload is in the page");

    // Its chain: the event it caused, and back.
    let caused = find(
        &browser,
        &format!("#caused-events a[href='#/events/{second}']"),
    )
    .await;
    assert!(caused.text().await.unwrap().contains("order.confirmed"));
    caused.click().await.unwrap();
    until(
        &browser,
        "the caused event is shown",
        "document.querySelector('#event-type')?.textContent === 'order.confirmed'",
    )
    .await;
    let back = find(&browser, "#caused-by").await;
    assert_eq!(
        back.attr("href").await.unwrap().as_deref(),
        Some(format!("#/events/{first}").as_str())
    );
    let tree = text(&browser, "#correlated-events").await;
    assert!(tree.contains("order.created"), "{tree}");

    // The global log's live tail, over EventSource with the token in the
    // query: an event appended now appears at the top.
    find(&browser, "#nav a[data-view='log']")
        .await
        .click()
        .await
        .unwrap();
    find(
        &browser,
        &format!("#log-events tr[data-event-id='{second}']"),
    )
    .await;
    find(&browser, "#live-tail").await.click().await.unwrap();
    until(
        &browser,
        "the live tail is open",
        "document.querySelector('#live-status')?.textContent === 'open'",
    )
    .await;
    let third = *EventId::new().as_uuid();
    let response = http
        .post(format!("{base}/api/streams/order-7/events"))
        .bearer_auth(token)
        .json(
            &json!({"events": [{"id": third, "type": "order.shipped", "data": {"note": SCRIPT}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    until(
        &browser,
        "the live event is at the top",
        &format!("document.querySelector('#log-events tbody tr')?.dataset.eventId === '{third}'"),
    )
    .await;
    let rows = browser
        .execute(
            "return document.querySelectorAll('#log-events tbody tr').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(rows, json!(3), "each event once");

    let pwned = browser
        .execute("return typeof window.__pwned;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, json!("undefined"), "a payload script ran");
    browser.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_with_its_button_is_delivered() {
    let driver = Driver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]).await;
    let base = format!("http://{}", server.addr());
    let bus = server.state().bus.clone();

    // A subscriber that fails until it is fixed, and says what it handled.
    let fixed = Arc::new(AtomicBool::new(false));
    let (handled_tx, mut handled) = mpsc::unbounded_channel::<Uuid>();
    let handler = {
        let fixed = fixed.clone();
        handler_fn(move |event, _ctx| {
            let (fixed, handled_tx) = (fixed.clone(), handled_tx.clone());
            async move {
                if fixed.load(Ordering::SeqCst) {
                    let _ = handled_tx.send(*event.id().as_uuid());
                    Ok(())
                } else {
                    Err(HandlerError::retry(
                        "the mail server refused: 451 try later",
                    ))
                }
            }
        })
    };
    bus.subscribe(
        Subscriber::new("ui-mailer", handler)
            .topic("user.signed_up")
            .retry(RetryPolicy::immediate(2)),
    )
    .unwrap();
    let event = bus
        .publish("user.signed_up", json!({"email": "ada@example.test"}))
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let letter = loop {
        let letters = bus.dead_letters(&DeadLetterQuery::default()).await.unwrap();
        if let Some(letter) = letters.into_iter().next() {
            break letter;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(letter.event.id(), event.id());

    let browser = driver.browser().await;
    browser
        .goto(&format!("{base}/#/dead-letters"))
        .await
        .unwrap();
    let row = find(&browser, &format!("tr[data-dead-letter='{}']", letter.id)).await;
    let shown = row.text().await.unwrap();
    assert!(shown.contains("ui-mailer"), "{shown}");
    assert!(
        shown.contains("451 try later"),
        "the error is shown: {shown}"
    );
    assert!(shown.contains("user.signed_up"), "{shown}");
    assert!(shown.contains('2'), "the attempts are shown: {shown}");

    fixed.store(true, Ordering::SeqCst);
    find(&browser, &format!("button.retry[data-id='{}']", letter.id))
        .await
        .click()
        .await
        .unwrap();
    let delivered = tokio::time::timeout(DEADLINE, handled.recv())
        .await
        .expect("the retried event is handled")
        .unwrap();
    assert_eq!(delivered, *event.id().as_uuid());
    until(
        &browser,
        "the list is empty",
        "!document.querySelector('#dead-letters') \
         && document.querySelector('#dead-letter-count')?.textContent === '0 dead letters'",
    )
    .await;
    let flash = text(&browser, "#flash").await;
    assert!(flash.contains("Delivered to ui-mailer"), "{flash}");
    assert!(
        bus.dead_letters(&DeadLetterQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    browser.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_disabled_replayed_and_enabled_from_its_row() {
    let driver = Driver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]).await;
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    for n in 0..3 {
        let response = http
            .post(format!("{base}/api/streams/invoice-{n}/events"))
            .json(&json!({"events": [{"type": "invoice.sent", "data": {"n": n}}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    // A webhook to a port nothing listens on: deliveries would fail, which
    // does not matter here, as the subscription is disabled first.
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let response = http
        .post(format!("{base}/api/subscriptions"))
        .json(&json!({
            "name": "ui-billing",
            "topics": ["invoice.*"],
            "url": format!("http://{closed}/hook"),
            "retry": {"max_attempts": 1},
        }))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    let status = |http: reqwest::Client| {
        let url = format!("{base}/api/subscriptions/ui-billing");
        async move {
            let view: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            view["status"].as_str().unwrap_or_default().to_owned()
        }
    };

    let browser = driver.browser().await;
    browser
        .goto(&format!("{base}/#/subscribers"))
        .await
        .unwrap();
    let row = find(&browser, "tr[data-subscriber='ui-billing']").await;
    let shown = row.text().await.unwrap();
    assert!(shown.contains("enabled"), "{shown}");
    assert!(shown.contains("invoice.*"), "{shown}");
    assert!(shown.contains(&format!("http://{closed}/hook")), "{shown}");

    find(&browser, "tr[data-subscriber='ui-billing'] button.disable")
        .await
        .click()
        .await
        .unwrap();
    find(&browser, "tr[data-subscriber='ui-billing'] button.enable").await;
    assert_eq!(status(http.clone()).await, "disabled");
    let shown = text(&browser, "tr[data-subscriber='ui-billing'] .status").await;
    assert_eq!(shown, "disabled");

    // Replay from the start: the checkpoint goes back to 0 and the lag is
    // the whole log.
    find(&browser, "tr[data-subscriber='ui-billing'] button.replay")
        .await
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let question = loop {
        match browser.get_alert_text().await {
            Ok(text) => break text,
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "no confirmation within {DEADLINE:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(question.contains("ui-billing"), "{question}");
    browser.accept_alert().await.unwrap();
    until(
        &browser,
        "the replay is reported",
        "document.querySelector('#flash')?.textContent.includes('replays the events after position 0')",
    )
    .await;
    let view: Value = http
        .get(format!("{base}/api/subscriptions/ui-billing"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["checkpoint"], 0, "{view}");
    let lag = text(&browser, "tr[data-subscriber='ui-billing'] .lag").await;
    assert_eq!(lag, view["lag"].to_string(), "the lag shown is the API's");

    find(&browser, "tr[data-subscriber='ui-billing'] button.enable")
        .await
        .click()
        .await
        .unwrap();
    find(&browser, "tr[data-subscriber='ui-billing'] button.disable").await;
    assert_eq!(status(http.clone()).await, "enabled");
    browser.close().await.unwrap();
    server.shutdown().await;
}
