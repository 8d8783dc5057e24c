//! The handler of a webhook subscriber: one signed `POST` per event.

use std::sync::Arc;
use std::time::Duration;

use herald::{Context, ErrorKind, Handler, HandlerError, HandlerResult, RecordedEvent};
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use sha2::Sha256;

/// The header carrying the body's signature.
pub(crate) const SIGNATURE_HEADER: &str = "Herald-Signature";
/// The header carrying the event's id, for receivers to deduplicate on.
pub(crate) const EVENT_ID_HEADER: &str = "Herald-Event-Id";
/// The header carrying the event's type.
pub(crate) const EVENT_TYPE_HEADER: &str = "Herald-Event-Type";
/// The header carrying the attempt number (from 1) of this delivery.
pub(crate) const ATTEMPT_HEADER: &str = "Herald-Delivery-Attempt";

/// `sha256=<hex HMAC-SHA256 of body keyed with secret>`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs each event it is given to one URL.
///
/// Every answer but a 2xx is an error with the
/// [`Retry`](herald::Disposition::Retry) disposition, so the subscriber's
/// retry policy decides what happens next; a `Retry-After` in seconds on the
/// answer is honoured, up to `max_retry_after`.
pub(crate) struct WebhookHandler {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as errors show it: without its password.
    shown: String,
    secret: Option<Arc<[u8]>>,
    timeout: Duration,
    max_retry_after: Duration,
    /// Whether `herald.*` events (the server's own) are delivered: only when
    /// one of the subscription's patterns names them explicitly.
    system_events: bool,
}

impl WebhookHandler {
    /// A handler for `url`, signing with `secret` when there is one, giving
    /// up on an attempt after `timeout`.
    pub(crate) fn new(
        url: reqwest::Url,
        secret: Option<&str>,
        timeout: Duration,
        max_retry_after: Duration,
        system_events: bool,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirected POST would become a GET elsewhere: a 3xx is a
            // failed delivery, to be fixed in the subscription's URL.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            shown: redacted(url.as_str()),
            url,
            secret: secret.map(|s| Arc::from(s.as_bytes())),
            timeout,
            max_retry_after,
            system_events,
        })
    }
}

impl Handler for WebhookHandler {
    async fn handle(&self, event: &RecordedEvent, ctx: &Context) -> HandlerResult {
        if !self.system_events && super::is_system_event(event.event_type()) {
            return Err(HandlerError::skip(
                "herald.* events go only to subscriptions whose patterns name them",
            ));
        }
        let body = serde_json::to_vec(event).map_err(HandlerError::dead_letter)?;
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(EVENT_ID_HEADER, event.id().to_string())
            .header(EVENT_TYPE_HEADER, event.event_type())
            .header(ATTEMPT_HEADER, ctx.attempt().to_string());
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, &body));
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(err) if err.is_timeout() => {
                return Err(HandlerError::retry(format!(
                    "no answer from {} within {} ms",
                    self.shown,
                    self.timeout.as_millis()
                ))
                .with_kind(ErrorKind::Timeout));
            }
            Err(err) => {
                return Err(HandlerError::retry(format!(
                    "cannot POST to {}: {}",
                    self.shown,
                    error_chain(&err)
                )));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(self.max_retry_after));
        let message = format!("{} answered {status}", self.shown);
        Err(match retry_after {
            Some(delay) => HandlerError::retry_after(message, delay),
            None => HandlerError::retry(message),
        })
    }
}

/// `url` with its password, if any, replaced by `***`: URLs are shown by
/// the API, logged and kept in dead letters' errors; a password in one is a
/// credential of the receiver's.
pub(crate) fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// An error and its sources, `: `-separated: reqwest's own message is
/// often just "error sending request".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords_in_urls() {
        assert_eq!(
            redacted("https://hook:pa55@example.com/in?x=1"),
            "https://hook:***@example.com/in?x=1"
        );
        assert_eq!(redacted("http://example.com/in"), "http://example.com/in");
    }

    #[test]
    fn signs_with_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
