//! Webhook subscribers: "events as internal webhooks".
//!
//! `POST /api/subscriptions` with
//! `{"name","topics":[...],"url","secret"?,"retry"?,"timeout_ms"?}` makes
//! the server `POST` every event whose type matches one of the topic
//! patterns to the URL, signed, retried, and dead-lettered when it keeps
//! failing. Each subscription is a durable subscriber on the server's bus,
//! named `webhook:<name>`, with its own checkpoint in the store: it
//! survives a restart and resumes where it left off.
//!
//! # Endpoints
//!
//! | call | what it does |
//! |---|---|
//! | `POST /api/subscriptions` | creates one: 201; the same definition again: 200; another definition under an existing name: 409; a bad definition: 400 saying what is wrong |
//! | `GET /api/subscriptions` | lists them: definition (never the secret; a password in the URL shows as `***`), `status` (`enabled`/`disabled`), `running`, `checkpoint`, `lag`, `handled`, `failed`, `dead_lettered`, `skipped` |
//! | `GET /api/subscriptions/{name}` | one of them |
//! | `POST /api/subscriptions/{name}/disable`, `/enable` | stops and resumes delivery; kept across restarts; nothing is lost in between (the checkpoint waits) |
//! | `POST /api/subscriptions/{name}/replay` | `{"from":"start"}`, `{"position":N}` (the events after N) or `{"time":"RFC 3339"}`: moves the checkpoint back so that events are delivered again |
//! | `DELETE /api/subscriptions/{name}` | stops it and forgets it and its checkpoint (its dead letters stay, to inspect or discard) |
//!
//! Unknown names get a 404 problem everywhere.
//!
//! # Definitions
//!
//! - `name`: 1 to 64 ASCII letters, digits, `-`, `_` or `.`, starting with a
//!   letter or a digit.
//! - `topics`: 1 to 32 herald topic patterns (`order.created`, `order.*`,
//!   `order.#`, `#`).
//! - `url`: an `http` or `https` URL with a host, at most 2048 bytes.
//! - `secret` (optional): 1 to 1024 bytes.
//! - `retry` (optional, each field too): `max_attempts` 1 to 100,
//!   `initial_backoff_ms` and `max_backoff_ms` 1 to 86400000, initial at
//!   most max.
//! - `timeout_ms` (optional): 1 to 300000, how long one attempt may take.
//!
//! Unknown fields are refused, so that a misspelt option is not silently
//! ignored.
//!
//! # Delivery
//!
//! Each matching event is sent as `POST <url>` with the recorded event as
//! its JSON body (`id`, `type`, `stream`, `version`, `position`,
//! `recorded_at`, `data`, `metadata`: herald's `RecordedEvent`
//! serialization) and the headers `Content-Type: application/json`,
//! `Herald-Event-Id`, `Herald-Event-Type` and `Herald-Delivery-Attempt`
//! (from 1). Any 2xx answer is a success; anything else (another status, a
//! redirect, a refused connection, no answer within `timeout_ms`, 10 s by
//! default) is a failed attempt.
//!
//! A new subscription receives the events appended after it was created;
//! `replay` with `{"from":"start"}` sends it the history.
//!
//! # Signature
//!
//! With a `secret`, every request carries
//! `Herald-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed
//! with the secret>`. Receivers compute the same over the raw body they
//! read (before parsing it) and compare in constant time. Without a secret
//! there is no such header.
//!
//! # Retries and dead letters
//!
//! A failed attempt is retried with exponential backoff, herald's
//! [`RetryPolicy`](herald::RetryPolicy): `retry.initial_backoff_ms` (1000
//! by default) before the first retry, doubling up to
//! `retry.max_backoff_ms` (60000), each delay shortened by up to 10 % at
//! random, `retry.max_attempts` attempts in all (5, the first included). A
//! `Retry-After: <seconds>` on the answer replaces the computed delay, up to
//! `max_backoff_ms`. When the attempts are used up, the event goes to the
//! bus's dead letters (the store's, `GET /api/dead-letters`) under the
//! subscriber `webhook:<name>`, and the subscription moves on. Retrying the
//! dead letter sends it again through the same retries.
//!
//! Events are delivered one at a time in log order: while one event is
//! being retried, the later ones wait. Disabling a subscription lets the
//! delivery in hand finish (its retries included) and holds the next ones;
//! deleting one waits for that delivery before it answers.
//!
//! # Delivery guarantees
//!
//! At least once. The checkpoint is saved after each batch of deliveries,
//! so a crash (or a receiver that answered after the timeout) means some
//! events are delivered again; `replay` does it on purpose. Receivers must
//! therefore be idempotent on `Herald-Event-Id` (the event's `id`): record
//! the ids they handled and skip those they see again.
//!
//! # Persistence
//!
//! Definitions are events in the reserved stream `herald:subscriptions`,
//! appended with an expected version so that concurrent changes do not
//! overwrite each other, of the types `herald.subscription.created` (the
//! definition, the sealed secret and the position it starts after),
//! `herald.subscription.deleted`, `herald.subscription.disabled` and
//! `herald.subscription.enabled`. At startup the stream is folded and every
//! enabled subscription resumes from its checkpoint; a disabled one starts
//! from its checkpoint when it is enabled (`running` says which are on the
//! bus), so nothing appended meanwhile is lost. This works on every store the
//! server runs on, through the store traits alone.
//!
//! The secret is never in the clear in an event: it is sealed with a key
//! kept outside the event log (see `seal`), and never returned by the API.
//!
//! # System events
//!
//! The `herald.subscription.*` events are ordinary events: they appear in
//! the global log, in their stream and to live subscribers, as an audit
//! trail of who subscribed what and when. Webhook subscriptions do not
//! receive `herald.*` events unless one of their patterns starts with
//! `herald` (a subscription on `#` skips them, counted in `skipped`), so a
//! catch-all webhook is not sent the server's own bookkeeping.
//!
//! # Several servers on one store
//!
//! Each server resumes every subscription at startup, then follows the
//! definitions stream: a subscription created or deleted through one server
//! starts or stops on the others within [`FOLLOW_EVERY`], and an enable or a
//! disable reaches them through the subscriber's saved state. Two servers
//! running the same subscription share its checkpoint and may both deliver
//! an event, which at-least-once delivery allows; run the webhooks on one of
//! them.

mod definition;
mod delivery;
mod seal;
mod store;

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::TryStreamExt;
use herald::store::{StoreError, StoreErrorKind};
use herald::{DeliveryMode, DurableError, ReplayFrom, StartFrom, Subscriber};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

use self::definition::{CreateRequest, Definition, Retry};
use self::delivery::WebhookHandler;
use self::seal::Sealer;
use self::store::{Created, Stored};
use crate::app::AppState;
use crate::problem::Problem;

/// How many matching events a webhook subscriber sends between checkpoint
/// saves: at most this many are sent again after a crash.
const BATCH: usize = 32;

/// How often a subscriber checks for new events when the store cannot wake
/// it, and how soon a disabled one notices it was enabled.
const POLL: Duration = Duration::from_millis(250);

/// Serializes changes to subscriptions in this process, so that the bus's
/// subscribers follow the stored definitions in the order they were
/// changed. Changes are rare; one lock for every server in the process is
/// enough.
static CHANGES: Mutex<()> = Mutex::const_new(());

/// Whether an event type is one of the server's own (`herald.*`).
pub(crate) fn is_system_event(event_type: &str) -> bool {
    event_type == "herald" || event_type.starts_with("herald.")
}

/// The bus subscriber of subscription `name`: also the name of its
/// checkpoint and of its dead letters' subscriber.
/// What a webhook subscription's subscriber name starts with.
const PREFIX: &str = "webhook:";

fn subscriber_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The subscription routes, under `/api`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/subscriptions", get(list).post(create))
        .route("/subscriptions/{name}", get(show).delete(remove))
        .route("/subscriptions/{name}/disable", post(disable))
        .route("/subscriptions/{name}/enable", post(enable))
        .route("/subscriptions/{name}/replay", post(replay))
}

/// Starts the webhook subscribers kept in the store, each from its
/// checkpoint. A subscription that cannot start is logged and left out;
/// the others start.
/// How often a server looks for subscriptions created or deleted through
/// another server on the same store: one read of a stream's version.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Follows changes made through other servers until the server closes; see
/// "Several servers on one store" above.
pub(crate) fn follow(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut closing = state.closing();
        let mut seen = None;
        loop {
            tokio::select! {
                _ = closing.wait_for(|c| *c) => return,
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
            let version = match state.backend.events().stream_info(&store::stream()).await {
                Ok(info) => info.map(|i| i.version),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the webhook definitions' version");
                    continue;
                }
            };
            if seen != Some(version) {
                reconcile(&state).await;
                seen = Some(version);
            }
        }
    })
}

/// Starts the enabled subscriptions this server does not run, and stops
/// those deleted.
async fn reconcile(state: &AppState) {
    let _changes = CHANGES.lock().await;
    let folded = match store::fold(&*state.backend.events()).await {
        Ok(folded) => folded,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the webhook subscriptions");
            return;
        }
    };
    let running: Vec<String> = state
        .bus
        .subscribers()
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    for name in &running {
        let gone = !folded.subscriptions.contains_key(&name[PREFIX.len()..]);
        if gone && state.bus.unsubscribe(name).await.is_ok() {
            tracing::info!(subscriber = %name, "webhook subscription deleted elsewhere; stopped here");
        }
    }
    let to_start: Vec<&Stored> = folded
        .subscriptions
        .values()
        .filter(|s| s.enabled)
        .filter(|s| !running.contains(&subscriber_name(&s.created.definition.name)))
        .collect();
    if to_start.is_empty() {
        return;
    }
    let sealer = match Sealer::load_or_create(&*state.backend.checkpoints()).await {
        Ok(sealer) => sealer,
        Err(err) => {
            tracing::warn!(error = %err, "cannot load the webhook key");
            return;
        }
    };
    for stored in to_start {
        let name = &stored.created.definition.name;
        match resume_one(state, &sealer, stored).await {
            Ok(()) => {
                tracing::info!(subscription = %name, "webhook subscription created elsewhere; started here")
            }
            Err(err) => {
                tracing::warn!(subscription = %name, error = %err, "webhook subscription not started")
            }
        }
    }
}

pub(crate) async fn resume(state: &AppState) {
    let _changes = CHANGES.lock().await;
    let folded = match store::fold(&*state.backend.events()).await {
        Ok(folded) => folded,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the webhook subscriptions; none resumed");
            return;
        }
    };
    if folded.subscriptions.is_empty() {
        return;
    }
    let sealer = match Sealer::load_or_create(&*state.backend.checkpoints()).await {
        Ok(sealer) => sealer,
        Err(err) => {
            tracing::error!(error = %err, "cannot load the webhook key; no subscription resumed");
            return;
        }
    };
    for (name, stored) in &folded.subscriptions {
        match resume_one(state, &sealer, stored).await {
            Ok(()) => {
                tracing::info!(subscription = %name, enabled = stored.enabled, "webhook subscription resumed")
            }
            Err(err) => {
                tracing::error!(subscription = %name, error = %err, "webhook subscription not resumed")
            }
        }
    }
}

/// Makes sure a stored subscription has a checkpoint, then starts it
/// unless it is disabled: a disabled subscription joins the bus when it is
/// enabled (a subscriber cannot join the bus disabled, and one that joined
/// enabled could deliver an event before being disabled).
async fn resume_one(state: &AppState, sealer: &Sealer, stored: &Stored) -> Result<(), String> {
    let name = &stored.created.definition.name;
    let secret = open_secret(sealer, stored)?;
    let checkpoints = state.backend.checkpoints();
    let bus_name = subscriber_name(name);
    let saved = checkpoints
        .load(&bus_name)
        .await
        .map_err(|e| e.to_string())?;
    if saved.is_none() {
        checkpoints
            .save(&bus_name, stored.created.start_after)
            .await
            .map_err(|e| e.to_string())?;
    }
    if !stored.enabled {
        return Ok(());
    }
    start(state, &stored.created.definition, secret.as_deref())
}

fn open_secret(sealer: &Sealer, stored: &Stored) -> Result<Option<String>, String> {
    match &stored.created.secret_sealed {
        Some(sealed) => sealer
            .open(&stored.created.definition.name, sealed)
            .map(Some)
            .map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// Subscribes the bus to a stored subscription whose checkpoint is set.
fn start(state: &AppState, definition: &Definition, secret: Option<&str>) -> Result<(), String> {
    let url = reqwest::Url::parse(&definition.url)
        .map_err(|e| format!("invalid url {:?}: {e}", definition.url))?;
    let handler = WebhookHandler::new(
        url,
        secret,
        Duration::from_millis(definition.timeout_ms),
        Duration::from_millis(definition.retry.max_backoff_ms),
        definition.wants_system_events(),
    )
    .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let bus_name = subscriber_name(&definition.name);
    let subscriber = Subscriber::new(bus_name.clone(), handler)
        .topics(definition.topics.iter().cloned())
        .mode(DeliveryMode::Durable)
        .retry(definition.retry.policy())
        // The checkpoint is always saved before the subscriber starts;
        // `Now` is only a safe fallback.
        .start_from(StartFrom::Now)
        .batch_size(BATCH)
        .poll_interval(POLL);
    state.bus.subscribe(subscriber).map_err(|e| e.to_string())
}

/// A subscription as the API shows it: never its secret.
#[derive(Debug, Serialize)]
struct View {
    name: String,
    topics: Vec<String>,
    url: String,
    /// Whether deliveries carry a `Herald-Signature`.
    signed: bool,
    retry: Retry,
    timeout_ms: u64,
    /// `enabled` or `disabled`, as stored.
    status: &'static str,
    /// Whether its subscriber runs on this server's bus: a subscription
    /// disabled when the server started joins it when enabled.
    running: bool,
    /// The position up to which it handled (or dead-lettered) its events.
    checkpoint: u64,
    /// How many positions it is behind the store's head.
    lag: u64,
    handled: u64,
    failed: u64,
    dead_lettered: u64,
    skipped: u64,
}

async fn view(state: &AppState, stored: &Stored) -> Result<View, Problem> {
    let definition = &stored.created.definition;
    let bus_name = subscriber_name(&definition.name);
    let info = state.bus.subscriber(&bus_name);
    // From the store rather than the runner: a runner that is starting has
    // not loaded its checkpoint yet, and it updates its own copy only after
    // saving to the store anyway.
    let checkpoint = state
        .backend
        .checkpoints()
        .load(&bus_name)
        .await
        .map_err(store_problem)?
        .unwrap_or(stored.created.start_after);
    let head = state.backend.events().head().await.map_err(store_problem)?;
    let lag = head.saturating_sub(checkpoint);
    Ok(View {
        name: definition.name.clone(),
        topics: definition.topics.clone(),
        url: delivery::redacted(&definition.url),
        signed: stored.created.secret_sealed.is_some(),
        retry: definition.retry,
        timeout_ms: definition.timeout_ms,
        status: if stored.enabled {
            "enabled"
        } else {
            "disabled"
        },
        running: info.is_some(),
        checkpoint,
        lag,
        handled: info.as_ref().map_or(0, |i| i.handled),
        failed: info.as_ref().map_or(0, |i| i.failed),
        dead_lettered: info.as_ref().map_or(0, |i| i.dead_lettered),
        skipped: info.as_ref().map_or(0, |i| i.skipped),
    })
}

fn store_problem(err: StoreError) -> Problem {
    match err.kind() {
        StoreErrorKind::Backend => Problem::unavailable(format!("the store failed: {err}")),
        _ => Problem::internal(format!("the store refused a change: {err}")),
    }
}

fn not_found(name: &str) -> Problem {
    Problem::not_found(format!("no subscription named {name:?}"))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes, what: &str) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not a valid {what}: {e}")))
}

async fn folded(state: &AppState) -> Result<store::Folded, Problem> {
    store::fold(&*state.backend.events())
        .await
        .map_err(store_problem)
}

async fn stored(state: &AppState, name: &str) -> Result<Stored, Problem> {
    folded(state)
        .await?
        .subscriptions
        .remove(name)
        .ok_or_else(|| not_found(name))
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<View>>, Problem> {
    let folded = folded(&state).await?;
    let mut views = Vec::with_capacity(folded.subscriptions.len());
    for stored in folded.subscriptions.values() {
        views.push(view(&state, stored).await?);
    }
    Ok(Json(views))
}

async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<View>, Problem> {
    let stored = stored(&state, &name).await?;
    Ok(Json(view(&state, &stored).await?))
}

/// How many times a change is tried again when another writer changed the
/// subscriptions between the read and the append.
const CONFLICT_RETRIES: usize = 3;

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, Problem> {
    let request: CreateRequest = parse(&body, "subscription")?;
    let checked = request.check().map_err(Problem::bad_request)?;
    let name = checked.definition.name.clone();
    let bus_name = subscriber_name(&name);
    let events = state.backend.events();
    let checkpoints = state.backend.checkpoints();
    let _changes = CHANGES.lock().await;
    let sealer = Sealer::load_or_create(&*checkpoints)
        .await
        .map_err(store_problem)?;
    for _ in 0..CONFLICT_RETRIES {
        let folded = store::fold(&*events).await.map_err(store_problem)?;
        if let Some(existing) = folded.subscriptions.get(&name) {
            if same(
                existing,
                &checked.definition,
                checked.secret.as_deref(),
                &sealer,
            ) {
                return Ok((StatusCode::OK, Json(view(&state, existing).await?)).into_response());
            }
            return Err(Problem::conflict(format!(
                "a subscription named {name:?} exists with another definition: delete it \
                 first, or choose another name"
            )));
        }
        if state.bus.subscriber(&bus_name).is_some() {
            return Err(Problem::conflict(format!(
                "a subscriber named {bus_name:?} already runs on this server's bus"
            )));
        }
        let head = events.head().await.map_err(store_problem)?;
        // The checkpoint first: until the definition is appended, nothing
        // reads it, and a crash in between leaves a checkpoint that the next
        // creation under this name overwrites.
        checkpoints
            .save(&bus_name, head)
            .await
            .map_err(store_problem)?;
        let created = Created {
            definition: checked.definition.clone(),
            secret_sealed: checked.secret.as_deref().map(|s| sealer.seal(&name, s)),
            start_after: head,
        };
        match store::created(&*events, folded.expected(), &created).await {
            Ok(()) => {}
            Err(err) if err.kind() == StoreErrorKind::Conflict => continue,
            Err(err) => return Err(store_problem(err)),
        }
        start(&state, &created.definition, checked.secret.as_deref()).map_err(|e| {
            Problem::internal(format!(
                "subscription {name:?} is stored but could not start: {e}"
            ))
        })?;
        tracing::info!(subscription = %name, url = %delivery::redacted(&created.definition.url), "webhook subscription created");
        let stored = Stored {
            created,
            enabled: true,
        };
        let location = format!("/api/subscriptions/{name}");
        return Ok((
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(view(&state, &stored).await?),
        )
            .into_response());
    }
    Err(Problem::conflict(
        "the subscriptions kept changing under this request; try again",
    ))
}

/// Whether a stored subscription has this definition and secret.
fn same(stored: &Stored, definition: &Definition, secret: Option<&str>, sealer: &Sealer) -> bool {
    if stored.created.definition != *definition {
        return false;
    }
    match (&stored.created.secret_sealed, secret) {
        (None, None) => true,
        (Some(sealed), Some(secret)) => sealer
            .open(&definition.name, sealed)
            .is_ok_and(|s| bool::from(s.as_bytes().ct_eq(secret.as_bytes()))),
        _ => false,
    }
}

async fn disable(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<View>, Problem> {
    set_enabled(&state, &name, false).await
}

async fn enable(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<View>, Problem> {
    set_enabled(&state, &name, true).await
}

async fn set_enabled(state: &AppState, name: &str, enabled: bool) -> Result<Json<View>, Problem> {
    let events = state.backend.events();
    let _changes = CHANGES.lock().await;
    for _ in 0..CONFLICT_RETRIES {
        let mut folded = store::fold(&*events).await.map_err(store_problem)?;
        let expected = folded.expected();
        let Some(stored) = folded.subscriptions.get_mut(name) else {
            return Err(not_found(name));
        };
        if stored.enabled != enabled {
            let event_type = if enabled {
                store::ENABLED
            } else {
                store::DISABLED
            };
            match store::changed(&*events, expected, event_type, name).await {
                Ok(()) => {}
                Err(err) if err.kind() == StoreErrorKind::Conflict => continue,
                Err(err) => return Err(store_problem(err)),
            }
            stored.enabled = enabled;
        }
        let bus_name = subscriber_name(name);
        let running = state.bus.subscriber(&bus_name).is_some();
        let persist = |err: herald::DurableError| {
            Problem::internal(format!(
                "subscription {name:?} changed, but its subscriber's state was not saved: {err}"
            ))
        };
        if running {
            // Saved in the store's subscriber state too, which the runner
            // follows after a restart.
            state
                .bus
                .set_enabled(&bus_name, enabled)
                .await
                .map_err(persist)?;
        } else if enabled {
            // Disabled when the server started: it joins the bus now.
            let sealer = Sealer::load_or_create(&*state.backend.checkpoints())
                .await
                .map_err(store_problem)?;
            let secret = open_secret(&sealer, stored).map_err(Problem::internal)?;
            start(state, &stored.created.definition, secret.as_deref()).map_err(|e| {
                Problem::internal(format!(
                    "subscription {name:?} is enabled but could not start: {e}"
                ))
            })?;
            // The store may still hold the state it was disabled with.
            state
                .bus
                .set_enabled(&bus_name, true)
                .await
                .map_err(persist)?;
        }
        tracing::info!(subscription = %name, enabled, "webhook subscription changed");
        return Ok(Json(view(state, stored).await?));
    }
    Err(Problem::conflict(
        "the subscriptions kept changing under this request; try again",
    ))
}

/// The body of `POST /api/subscriptions/{name}/replay`: exactly one of the
/// fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    position: Option<u64>,
    #[serde(default)]
    time: Option<String>,
}

impl ReplayRequest {
    fn check(self) -> Result<ReplayFrom, String> {
        match (self.from, self.position, self.time) {
            (Some(from), None, None) => match from.as_str() {
                "start" | "beginning" => Ok(ReplayFrom::Beginning),
                other => Err(format!(
                    "from is {other:?}: the only value is \"start\" (or give position or time)"
                )),
            },
            (None, Some(position), None) => Ok(ReplayFrom::Position(position)),
            (None, None, Some(time)) => chrono::DateTime::parse_from_rfc3339(&time)
                .map(|t| ReplayFrom::Time(t.with_timezone(&chrono::Utc)))
                .map_err(|e| format!("time {time:?} is not an RFC 3339 date and time: {e}")),
            _ => Err(
                "give exactly one of {\"from\":\"start\"}, {\"position\":N} or {\"time\":\"RFC 3339\"}"
                    .to_owned(),
            ),
        }
    }
}

#[derive(Debug, Serialize)]
struct Replayed {
    name: String,
    /// The new checkpoint: events after it are delivered again.
    checkpoint: u64,
}

async fn replay(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Replayed>, Problem> {
    let from = parse::<ReplayRequest>(&body, "replay request")?
        .check()
        .map_err(Problem::bad_request)?;
    stored(&state, &name).await?;
    let bus_name = subscriber_name(&name);
    if state.bus.subscriber(&bus_name).is_none() {
        // Disabled since the server started: move the stored checkpoint,
        // which the subscriber starts from once enabled.
        let checkpoint = replay_position(&state, from).await.map_err(store_problem)?;
        state
            .backend
            .checkpoints()
            .save(&bus_name, checkpoint)
            .await
            .map_err(store_problem)?;
        tracing::info!(subscription = %name, checkpoint, "webhook subscription replayed");
        return Ok(Json(Replayed { name, checkpoint }));
    }
    match state.bus.replay(&bus_name, from).await {
        Ok(checkpoint) => {
            tracing::info!(subscription = %name, checkpoint, "webhook subscription replayed");
            Ok(Json(Replayed { name, checkpoint }))
        }
        Err(DurableError::Store(err)) => Err(store_problem(err)),
        Err(err) => Err(Problem::conflict(format!(
            "subscription {name:?} is not running on this server: {err}"
        ))),
    }
}

/// The checkpoint a replay moves to, as the bus computes it for a running
/// subscriber.
async fn replay_position(state: &AppState, from: ReplayFrom) -> Result<u64, StoreError> {
    let events = state.backend.events();
    match from {
        ReplayFrom::Position(p) => Ok(p),
        ReplayFrom::Time(t) => {
            let first = events
                .read_all(herald::store::ReadAll::after(0).since(t).limit(1))
                .try_next()
                .await?;
            match first.and_then(|e| e.position()) {
                Some(p) => Ok(p - 1),
                None => events.head().await,
            }
        }
        _ => Ok(0),
    }
}

async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    let events = state.backend.events();
    let _changes = CHANGES.lock().await;
    for _ in 0..CONFLICT_RETRIES {
        let folded = store::fold(&*events).await.map_err(store_problem)?;
        if !folded.subscriptions.contains_key(&name) {
            return Err(not_found(&name));
        }
        match store::changed(&*events, folded.expected(), store::DELETED, &name).await {
            Ok(()) => {}
            Err(err) if err.kind() == StoreErrorKind::Conflict => continue,
            Err(err) => return Err(store_problem(err)),
        }
        let bus_name = subscriber_name(&name);
        // Waits for the delivery in hand (and its retries) to end.
        let _ = state.bus.unsubscribe(&bus_name).await;
        if let Err(err) = state.backend.checkpoints().reset(&bus_name).await {
            // Harmless: the next creation under this name overwrites it.
            tracing::warn!(subscription = %name, error = %err, "checkpoint of a deleted subscription not reset");
        }
        tracing::info!(subscription = %name, "webhook subscription deleted");
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(Problem::conflict(
        "the subscriptions kept changing under this request; try again",
    ))
}
