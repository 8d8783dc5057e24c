//! What a subscription is, and how a request to create one is checked.

use std::time::Duration;

use herald::{RetryPolicy, TopicPattern};
use serde::{Deserialize, Serialize};

/// The longest name.
const MAX_NAME: usize = 64;
/// The most topic patterns per subscription.
const MAX_TOPICS: usize = 32;
/// The longest URL.
const MAX_URL: usize = 2048;
/// The longest secret, in bytes.
const MAX_SECRET: usize = 1024;
/// The most attempts per event.
const MAX_ATTEMPTS: u32 = 100;
/// The longest backoff: one day.
const MAX_BACKOFF_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest timeout of one attempt: five minutes.
const MAX_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// Attempts per event unless the request says otherwise.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Delay before the first retry unless the request says otherwise.
pub(crate) const DEFAULT_INITIAL_BACKOFF_MS: u64 = 1_000;
/// Longest delay between retries unless the request says otherwise.
pub(crate) const DEFAULT_MAX_BACKOFF_MS: u64 = 60_000;
/// How long one attempt may take unless the request says otherwise.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// How a subscription retries a failed delivery: exponential backoff from
/// `initial_backoff_ms`, doubling up to `max_backoff_ms` (each delay
/// shortened by up to 10 % at random), `max_attempts` attempts in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Retry {
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff_ms: u64,
    pub(crate) max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff_ms: DEFAULT_INITIAL_BACKOFF_MS,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
        }
    }
}

impl Retry {
    /// The bus's policy for these settings.
    pub(crate) fn policy(&self) -> RetryPolicy {
        RetryPolicy::exponential(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
        )
        .max_attempts(self.max_attempts)
    }
}

/// A subscription, as kept in the store (the secret apart) and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Definition {
    pub(crate) name: String,
    pub(crate) topics: Vec<String>,
    pub(crate) url: String,
    pub(crate) retry: Retry,
    pub(crate) timeout_ms: u64,
}

impl Definition {
    /// Whether `herald.*` events go to this subscription: only when one of
    /// its patterns starts with the literal segment `herald`.
    pub(crate) fn wants_system_events(&self) -> bool {
        self.topics
            .iter()
            .any(|t| t == "herald" || t.starts_with("herald."))
    }
}

/// The body of `POST /api/subscriptions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRequest {
    name: String,
    topics: Vec<String>,
    url: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    retry: Option<RetryRequest>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    initial_backoff_ms: Option<u64>,
    #[serde(default)]
    max_backoff_ms: Option<u64>,
}

/// A checked request: the definition and the secret.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) definition: Definition,
    pub(crate) secret: Option<String>,
}

/// Checks a subscription name: 1 to 64 ASCII letters, digits, `-`, `_` or
/// `.`, starting with a letter or digit (names appear in URLs).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the subscription name is empty".to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "the subscription name is {} bytes long, at most {MAX_NAME} are allowed",
            name.len()
        ));
    }
    if let Some((index, c)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "invalid subscription name {name:?}: character {c:?} at byte {index} is not allowed \
             (use ASCII letters, digits, - _ and .)"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "invalid subscription name {name:?}: it must start with a letter or a digit"
        ));
    }
    Ok(())
}

impl CreateRequest {
    /// Checks every field; the first problem found, said plainly.
    pub(crate) fn check(self) -> Result<Checked, String> {
        check_name(&self.name)?;
        if self.topics.is_empty() {
            return Err(
                "topics is empty: give at least one pattern, such as \"order.*\" or \"#\""
                    .to_owned(),
            );
        }
        if self.topics.len() > MAX_TOPICS {
            return Err(format!(
                "{} topic patterns given, at most {MAX_TOPICS} are allowed",
                self.topics.len()
            ));
        }
        for topic in &self.topics {
            TopicPattern::parse(topic).map_err(|e| e.to_string())?;
        }
        check_url(&self.url)?;
        if let Some(secret) = &self.secret {
            if secret.is_empty() {
                return Err("the secret is empty: leave it out for unsigned deliveries".to_owned());
            }
            if secret.len() > MAX_SECRET {
                return Err(format!(
                    "the secret is {} bytes long, at most {MAX_SECRET} are allowed",
                    secret.len()
                ));
            }
        }
        let retry = check_retry(self.retry)?;
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(format!(
                "timeout_ms is {timeout_ms}: it must be between 1 and {MAX_TIMEOUT_MS}"
            ));
        }
        Ok(Checked {
            definition: Definition {
                name: self.name,
                topics: self.topics,
                url: self.url,
                retry,
                timeout_ms,
            },
            secret: self.secret,
        })
    }
}

fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!(
            "the url is {} bytes long, at most {MAX_URL} are allowed",
            url.len()
        ));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("the url {url:?} is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the url {url:?} has the scheme {:?}: only http and https are allowed",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("the url {url:?} names no host"));
    }
    Ok(())
}

fn check_retry(retry: Option<RetryRequest>) -> Result<Retry, String> {
    let defaults = Retry::default();
    let Some(retry) = retry else {
        return Ok(defaults);
    };
    let max_attempts = retry.max_attempts.unwrap_or(defaults.max_attempts);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(format!(
            "retry.max_attempts is {max_attempts}: it must be between 1 and {MAX_ATTEMPTS} \
             (the first attempt included)"
        ));
    }
    let initial = retry
        .initial_backoff_ms
        .unwrap_or(defaults.initial_backoff_ms);
    let max = retry
        .max_backoff_ms
        .unwrap_or(if initial > defaults.max_backoff_ms {
            initial
        } else {
            defaults.max_backoff_ms
        });
    if !(1..=MAX_BACKOFF_MS).contains(&initial) {
        return Err(format!(
            "retry.initial_backoff_ms is {initial}: it must be between 1 and {MAX_BACKOFF_MS}"
        ));
    }
    if !(1..=MAX_BACKOFF_MS).contains(&max) {
        return Err(format!(
            "retry.max_backoff_ms is {max}: it must be between 1 and {MAX_BACKOFF_MS}"
        ));
    }
    if initial > max {
        return Err(format!(
            "retry.initial_backoff_ms ({initial}) is above retry.max_backoff_ms ({max})"
        ));
    }
    let retry = Retry {
        max_attempts,
        initial_backoff_ms: initial,
        max_backoff_ms: max,
    };
    retry
        .policy()
        .validate()
        .map_err(|e| format!("invalid retry policy: {e}"))?;
    Ok(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> Result<Checked, String> {
        serde_json::from_value::<CreateRequest>(json)
            .map_err(|e| e.to_string())?
            .check()
    }

    #[test]
    fn fills_in_defaults() {
        let checked = request(serde_json::json!({
            "name": "orders", "topics": ["order.*"], "url": "https://example.com/hook"
        }))
        .unwrap();
        assert_eq!(checked.definition.retry, Retry::default());
        assert_eq!(checked.definition.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(checked.secret.is_none());
        assert!(!checked.definition.wants_system_events());
    }

    #[test]
    fn says_what_is_wrong() {
        let cases = [
            (
                serde_json::json!({"name": "bad name", "topics": ["a"], "url": "http://h/"}),
                "character ' '",
            ),
            (
                serde_json::json!({"name": "-x", "topics": ["a"], "url": "http://h/"}),
                "start with",
            ),
            (
                serde_json::json!({"name": "x", "topics": [], "url": "http://h/"}),
                "topics is empty",
            ),
            (
                serde_json::json!({"name": "x", "topics": ["a..b"], "url": "http://h/"}),
                "invalid topic pattern",
            ),
            (
                serde_json::json!({"name": "x", "topics": ["a"], "url": "ftp://h/"}),
                "only http and https",
            ),
            (
                serde_json::json!({"name": "x", "topics": ["a"], "url": "not a url"}),
                "not a valid URL",
            ),
            (
                serde_json::json!({"name": "x", "topics": ["a"], "url": "http://h/", "secret": ""}),
                "secret is empty",
            ),
            (
                serde_json::json!({"name": "x", "topics": ["a"], "url": "http://h/", "retry": {"max_attempts": 0}}),
                "max_attempts is 0",
            ),
            (
                serde_json::json!({"name": "x", "topics": ["a"], "url": "http://h/", "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 5}}),
                "above retry.max_backoff_ms",
            ),
            (
                serde_json::json!({"name": "x", "topics": ["a"], "url": "http://h/", "timeout_ms": 0}),
                "timeout_ms is 0",
            ),
        ];
        for (json, expected) in cases {
            let err = request(json.clone()).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
}
