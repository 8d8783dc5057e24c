//! The commands on a store, with no server: `--store sqlite://PATH` or
//! `--store postgres://...`.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::TryStreamExt;
use herald::store::{Direction, StreamName};
use herald::store::{EventStore, ExpectedVersion, ListStreams, ReadAll, ReadStream, StreamInfo};
use herald::{
    Bus, DeadLetter, DeadLetterError, DeadLetterQuery, EventId, NewEvent, RecordedEvent,
    RetryOutcome, TopicPattern,
};
use serde_json::Value;
use uuid::Uuid;

use super::client::{
    CliError, Client, DeadLetterFilter, EventFeed, EventSpec, LogQuery, PublishRequest, Published,
    PublishedEvent, ReplayStart, Retried, StreamQuery, Subscription,
};
use crate::backend::Backend;

/// How often `follow` looks for new events when the store cannot say.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// How many events `follow` reads per round trip.
const FOLLOW_BATCH: usize = 500;

/// A client working on a store through [`Backend`]: appends go through a
/// bus on the store, reads and dead letters through its traits.
pub(crate) struct DirectClient {
    url: String,
    backend: Backend,
    bus: Bus,
}

impl DirectClient {
    /// Opens (and migrates) the store at `url`.
    pub(crate) async fn open(url: &str, schema: &str) -> Result<Self, CliError> {
        let backend = Backend::open(url, schema).await?;
        Ok(Self {
            url: url.to_owned(),
            bus: backend.bus(),
            backend,
        })
    }
}

fn patterns(topics: &[String]) -> Result<Vec<TopicPattern>, CliError> {
    topics
        .iter()
        .map(|t| TopicPattern::parse(t).map_err(|e| CliError::invalid("topic pattern", e)))
        .collect()
}

fn new_event(spec: EventSpec) -> NewEvent {
    let mut event = NewEvent::new(spec.event_type, spec.data).with_metadata(spec.metadata);
    if let Some(id) = spec.id {
        event = event.with_id(id);
    }
    event
}

fn stream_name(stream: &str) -> Result<StreamName, CliError> {
    StreamName::new(stream).map_err(|e| CliError::invalid("stream name", e))
}

fn dead_letter_error(err: DeadLetterError) -> CliError {
    match err {
        DeadLetterError::NotFound(id) => CliError::NotFound(format!("no dead letter with id {id}")),
        DeadLetterError::SubscriberGone { id, subscriber } => CliError::InvalidArgument {
            what: format!("dead letter {id}"),
            reason: format!(
                "its subscriber {subscriber} runs in the server, not in this command: retry it through the server (drop --store and set HERALD_URL)"
            ),
        },
        other => CliError::DeadLetter(other),
    }
}

#[async_trait::async_trait]
impl Client for DirectClient {
    async fn publish(&self, request: PublishRequest) -> Result<Published, CliError> {
        let PublishRequest {
            stream,
            expected,
            events,
        } = request;
        match stream {
            // An expected version needs the store's append, which checks
            // it and writes the whole batch or nothing.
            Some(stream) => {
                let name = stream_name(&stream)?;
                let appended = self
                    .backend
                    .events()
                    .append(&name, expected, events.into_iter().map(new_event).collect())
                    .await?;
                Ok(Published {
                    stream: Some(stream),
                    version: appended.version,
                    events: appended
                        .events
                        .iter()
                        .map(|e| PublishedEvent {
                            id: e.id,
                            stream: None,
                            version: Some(e.version),
                            position: Some(e.position),
                        })
                        .collect(),
                })
            }
            None => {
                debug_assert_eq!(expected, ExpectedVersion::Any);
                let mut published = Vec::with_capacity(events.len());
                for spec in events {
                    let event = self.bus.publish_new(new_event(spec)).await?;
                    published.push(PublishedEvent {
                        id: event.id(),
                        stream: event.stream().map(str::to_owned),
                        version: event.version(),
                        position: event.position(),
                    });
                }
                Ok(Published {
                    stream: None,
                    version: None,
                    events: published,
                })
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>, CliError> {
        let name = stream_name(stream)?;
        let mut read = match query.direction {
            Direction::Forward => ReadStream::forward(),
            Direction::Backward => ReadStream::backward(),
        }
        .limit(query.limit);
        if let Some(from) = query.from {
            read = read.from(from);
        }
        Ok(self.backend.events().read_stream(&name, read).await?)
    }

    async fn read_log(&self, query: &LogQuery) -> Result<Vec<RecordedEvent>, CliError> {
        let mut read = ReadAll::after(query.after).limit(query.limit);
        for pattern in patterns(&query.topics)? {
            read = read.topic(pattern);
        }
        let store = self.backend.events();
        Ok(store.read_all(read).try_collect().await?)
    }

    async fn event(&self, id: EventId) -> Result<RecordedEvent, CliError> {
        self.backend
            .events()
            .event(id)
            .await?
            .ok_or_else(|| CliError::NotFound(format!("no event with id {id}")))
    }

    async fn follow(
        &self,
        topics: Vec<String>,
        after: Option<u64>,
    ) -> Result<EventFeed<'_>, CliError> {
        let topics = patterns(&topics)?;
        let store = self.backend.events();
        let after = match after {
            Some(after) => after,
            None => store.head().await?,
        };
        let watch = store.watch_head();
        let state = Follow {
            store,
            topics,
            after,
            pending: VecDeque::new(),
            watch,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut state| async move {
                loop {
                    if let Some(event) = state.pending.pop_front() {
                        return Some((Ok(event), state));
                    }
                    match state.next_batch().await {
                        Ok(true) => {}
                        Ok(false) => state.wait().await,
                        Err(err) => return Some((Err(err), state)),
                    }
                }
            },
        )))
    }

    async fn streams(
        &self,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, CliError> {
        let mut query = ListStreams::default().limit(limit);
        if let Some(prefix) = prefix {
            query = query.prefix(prefix);
        }
        Ok(self.backend.events().list_streams(query).await?)
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, CliError> {
        Err(CliError::NeedsServer("subs list"))
    }

    async fn set_enabled(&self, _name: &str, enabled: bool) -> Result<(), CliError> {
        Err(CliError::NeedsServer(if enabled {
            "subs enable"
        } else {
            "subs disable"
        }))
    }

    async fn replay(&self, _name: &str, _from: ReplayStart) -> Result<Value, CliError> {
        Err(CliError::NeedsServer("subs replay"))
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, CliError> {
        let mut query = DeadLetterQuery::default().failed_between(filter.since, filter.until);
        if let Some(subscriber) = &filter.subscriber {
            query = query.subscriber(subscriber);
        }
        if let Some(pattern) = &filter.event_type {
            query = query.event_type(
                TopicPattern::parse(pattern).map_err(|e| CliError::invalid("--type", e))?,
            );
        }
        if let Some(text) = &filter.error {
            query = query.error(text);
        }
        if let Some(limit) = filter.limit {
            query = query.limit(limit);
        }
        self.bus
            .dead_letters(&query)
            .await
            .map_err(dead_letter_error)
    }

    async fn dead_letter(&self, id: Uuid) -> Result<DeadLetter, CliError> {
        self.bus.dead_letter(id).await.map_err(dead_letter_error)
    }

    async fn retry_dead_letter(&self, id: Uuid) -> Result<Retried, CliError> {
        match self.bus.retry_dead_letter(id).await {
            Ok(RetryOutcome::Handled) => Ok(Retried::Handled { id }),
            Ok(RetryOutcome::Failed { error, .. }) => Ok(Retried::Failed { id, error }),
            Ok(other) => Ok(Retried::Failed {
                id,
                error: format!("unexpected outcome {other:?}"),
            }),
            Err(err) => Err(dead_letter_error(err)),
        }
    }

    async fn discard_dead_letter(&self, id: Uuid) -> Result<(), CliError> {
        self.bus
            .discard_dead_letter(id)
            .await
            .map(drop)
            .map_err(dead_letter_error)
    }

    async fn migrate(&self) -> Result<String, CliError> {
        // Opening the store applied every migration it lacked, or failed.
        Ok(format!(
            "{} store {} is migrated to the latest schema",
            self.backend.kind(),
            self.url
        ))
    }
}

/// The state of a `follow` on a store.
struct Follow {
    store: std::sync::Arc<dyn EventStore>,
    topics: Vec<TopicPattern>,
    after: u64,
    pending: VecDeque<RecordedEvent>,
    watch: Option<tokio::sync::watch::Receiver<u64>>,
}

impl Follow {
    /// Reads the next batch; whether the log had events after `after`.
    async fn next_batch(&mut self) -> Result<bool, CliError> {
        // Every event at or below the head read now is visible to the
        // read that follows (the store's contract).
        let head = self.store.head().await?;
        let mut query = ReadAll::after(self.after).limit(FOLLOW_BATCH);
        query.topics = self.topics.clone();
        let events: Vec<RecordedEvent> = self.store.read_all(query).try_collect().await?;
        if let Some(last) = events.last().and_then(RecordedEvent::position) {
            self.after = last;
        }
        let found = !events.is_empty();
        if !found {
            // Events the filter skipped still move the cursor, so the next
            // read does not scan them again.
            self.after = self.after.max(head);
        }
        self.pending.extend(events);
        Ok(found)
    }

    /// Waits for the head to move (or a poll interval, as other processes'
    /// appends may not wake this one).
    async fn wait(&mut self) {
        match &mut self.watch {
            Some(watch) => {
                let _ = tokio::time::timeout(POLL_EVERY, watch.changed()).await;
            }
            None => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}
