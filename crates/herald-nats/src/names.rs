//! Names on the server: stream names, subjects, consumer names, and the
//! mapping of topic patterns onto filter subjects.

use herald::TopicPattern;
use herald::transport::TransportError;

use crate::NAME;

/// The longest escaped subscriber name. Consumer names travel inside API
/// subjects, so they are kept well under the server's limits.
const MAX_TOKEN: usize = 128;

/// The longest prefix.
const MAX_PREFIX: usize = 64;

/// More filter subjects than this for one subscriber and it takes one
/// consumer on every event instead, matching on the client: a consumer per
/// pattern costs a pull request loop and heartbeats each.
pub const MAX_FILTERS: usize = 8;

/// Checks a prefix: letters, digits, `_` and `-`, 1 to 64 bytes.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), TransportError> {
    let invalid = |reason: &str| TransportError::InvalidName {
        transport: NAME,
        name: prefix.to_owned(),
        reason: reason.to_owned(),
    };
    if prefix.is_empty() {
        return Err(invalid("a prefix needs at least one character"));
    }
    if prefix.len() > MAX_PREFIX {
        return Err(invalid(&format!("a prefix has at most {MAX_PREFIX} bytes")));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(invalid(&format!(
            "{c:?} is not allowed: a prefix has ASCII letters, digits, '_' and '-' only"
        )));
    }
    Ok(())
}

/// A prefix made from any text (a test's namespace, say): characters a
/// prefix cannot have become `_`, and it is cut to the longest prefix.
pub fn sanitize_prefix(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    // Keep the end: namespaces end in their unique part.
    if out.len() > MAX_PREFIX {
        out = out[out.len() - MAX_PREFIX..].to_owned();
    }
    out
}

/// A subscriber name as a token valid in consumer names and subjects.
///
/// ASCII letters, digits and `-` stay; every other byte becomes `_` and two
/// upper-case hex digits (`.` → `_2E`, `_` → `_5F`). So the mapping is
/// one-to-one, the same in every process, and a token never holds `__`,
/// which leaves `__` free to separate suffixes.
///
/// # Errors
///
/// [`TransportError::InvalidName`] for an empty name, or one whose token is
/// longer than 128 bytes.
pub fn subscriber_token(name: &str) -> Result<String, TransportError> {
    let invalid = |reason: String| TransportError::InvalidName {
        transport: NAME,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("a consumer group needs a name".to_owned()));
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    if out.len() > MAX_TOKEN {
        return Err(invalid(format!(
            "the name escapes to {} bytes, more than the {MAX_TOKEN} a NATS consumer name can take here",
            out.len()
        )));
    }
    Ok(out)
}

/// Reverses [`subscriber_token`].
#[cfg(test)]
fn subscriber_from_token(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The names of one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Result<Self, TransportError> {
        check_prefix(prefix)?;
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// `<PREFIX>_EVENTS`.
    pub(crate) fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.prefix.to_ascii_uppercase())
    }

    /// `<PREFIX>_DLQ`.
    pub(crate) fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.prefix.to_ascii_uppercase())
    }

    /// `<PREFIX>_PAYLOADS`: the object store bucket of large payloads.
    pub(crate) fn payloads_bucket(&self) -> String {
        format!("{}_PAYLOADS", self.prefix.to_ascii_uppercase())
    }

    /// `<prefix>.ev.`: what every event subject starts with.
    pub(crate) fn event_root(&self) -> String {
        format!("{}.ev.", self.prefix)
    }

    /// `<prefix>.ev.<event type>`.
    pub(crate) fn event_subject(&self, event_type: &str) -> String {
        format!("{}.ev.{event_type}", self.prefix)
    }

    /// `<prefix>.ev.>`.
    pub(crate) fn events_wildcard(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }

    /// `<prefix>.rd.>`: every subscriber's redeliveries.
    pub(crate) fn redeliveries_wildcard(&self) -> String {
        format!("{}.rd.>", self.prefix)
    }

    /// `<prefix>.rd.<token>`: one subscriber's redeliveries.
    pub(crate) fn redelivery_subject(&self, token: &str) -> String {
        format!("{}.rd.{token}", self.prefix)
    }

    /// `<prefix>.dlq.>`.
    pub(crate) fn dlq_wildcard(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// `<prefix>.dlq.<token>.>`: one subscriber's dead letters.
    pub(crate) fn dlq_subscriber_wildcard(&self, token: &str) -> String {
        format!("{}.dlq.{token}.>", self.prefix)
    }

    /// `<prefix>.dlq.<token>.<event id>`: the one dead letter of a
    /// subscriber and an event.
    pub(crate) fn dlq_subject(&self, token: &str, event_id: &str) -> String {
        format!("{}.dlq.{token}.{event_id}", self.prefix)
    }
}

/// The consumer of one filter subject: `<token>__e<hash of the filter>`.
/// The hash keeps the name short and the same in every process.
pub(crate) fn filter_consumer(token: &str, filter: &str) -> String {
    format!("{token}__e{:016x}", fnv1a(filter.as_bytes()))
}

/// The consumer of a subscriber's redeliveries: `<token>__rd`.
pub(crate) fn redelivery_consumer(token: &str) -> String {
    format!("{token}__rd")
}

/// FNV-1a, 64 bits: stable across processes and Rust versions, unlike
/// the standard library's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The filter subjects (relative to `<prefix>.ev.`) that together cover
/// `pattern`.
///
/// - no `#`: the pattern itself (`*` means the same in NATS);
/// - `#` last: `>` matches one or more tokens and `#` zero or more, so
///   `order.#` needs `order` and `order.>`; `#` alone is `>`;
/// - `#` in the middle (`a.#.z`): NATS cannot say it; the widest subject
///   before it, `a.>` (or `>`), and the consumer matches on the client.
pub fn pattern_filters(pattern: &TopicPattern) -> Vec<String> {
    let segments: Vec<&str> = pattern.as_str().split('.').collect();
    let Some(hash) = segments.iter().position(|s| *s == "#") else {
        return vec![pattern.as_str().to_owned()];
    };
    let base = segments[..hash].join(".");
    if hash + 1 == segments.len() {
        if base.is_empty() {
            vec![">".to_owned()]
        } else {
            vec![base.clone(), format!("{base}.>")]
        }
    } else if base.is_empty() {
        vec![">".to_owned()]
    } else {
        // At least one segment follows the `#`, so `base` alone never
        // matches: `base.>` covers it all.
        vec![format!("{base}.>")]
    }
}

/// The filter subjects of a subscriber: each pattern's filters, without
/// those another one covers, sorted (so every process agrees on them and
/// on which consumer handles an event that two of them match). Past
/// [`MAX_FILTERS`], one filter on everything.
pub fn subscriber_filters(patterns: &[TopicPattern]) -> Vec<String> {
    let mut all: Vec<String> = patterns.iter().flat_map(pattern_filters).collect();
    all.sort();
    all.dedup();
    let kept: Vec<String> = all
        .iter()
        .filter(|f| !all.iter().any(|g| g != *f && covers(g, f)))
        .cloned()
        .collect();
    if kept.len() > MAX_FILTERS {
        vec![">".to_owned()]
    } else {
        kept
    }
}

/// Whether filter `wide` matches every subject that filter `narrow` does.
pub(crate) fn covers(wide: &str, narrow: &str) -> bool {
    let mut w = wide.split('.');
    let mut n = narrow.split('.');
    loop {
        match (w.next(), n.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Whether a concrete subject (relative, an event type) matches `filter`.
pub(crate) fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap()
    }

    #[test]
    fn patterns_map_onto_nats_subjects() {
        assert_eq!(pattern_filters(&p("order.created")), ["order.created"]);
        assert_eq!(pattern_filters(&p("order.*")), ["order.*"]);
        assert_eq!(pattern_filters(&p("*.created")), ["*.created"]);
        assert_eq!(pattern_filters(&p("#")), [">"]);
        assert_eq!(pattern_filters(&p("order.#")), ["order", "order.>"]);
        assert_eq!(pattern_filters(&p("a.*.#")), ["a.*", "a.*.>"]);
        // Not expressible: the widest subject before the `#`.
        assert_eq!(pattern_filters(&p("a.#.z")), ["a.>"]);
        assert_eq!(pattern_filters(&p("#.z")), [">"]);
    }

    #[test]
    fn a_subscribers_filters_drop_the_covered_ones_and_are_sorted() {
        assert_eq!(
            subscriber_filters(&[p("order.created"), p("order.*")]),
            ["order.*"]
        );
        assert_eq!(
            subscriber_filters(&[p("order.#"), p("order.created"), p("invoice.paid")]),
            ["invoice.paid", "order", "order.>"]
        );
        assert_eq!(subscriber_filters(&[p("a.b"), p("#")]), [">"]);
        // Overlapping but neither covers the other: both stay.
        assert_eq!(
            subscriber_filters(&[p("order.*"), p("*.created")]),
            ["*.created", "order.*"]
        );
        let many: Vec<TopicPattern> = (0..=MAX_FILTERS).map(|i| p(&format!("t{i}.x"))).collect();
        assert_eq!(subscriber_filters(&many), [">"]);
    }

    #[test]
    fn covering_and_matching_follow_nats_rules() {
        assert!(covers(">", "a"));
        assert!(covers("a.>", "a.*"));
        assert!(covers("a.*", "a.b"));
        assert!(!covers("a.*", "a.>"));
        assert!(!covers("a.>", "a"));
        assert!(!covers("a.b", "a.*"));
        assert!(subject_matches("order.>", "order.line.added"));
        assert!(!subject_matches("order.>", "order"));
        assert!(subject_matches("order.*", "order.created"));
        assert!(!subject_matches("order.*", "order.line.added"));
    }

    #[test]
    fn subscriber_names_escape_one_to_one() {
        assert_eq!(subscriber_token("mailer").unwrap(), "mailer");
        assert_eq!(subscriber_token("notify-user").unwrap(), "notify-user");
        assert_eq!(subscriber_token("a.b").unwrap(), "a_2Eb");
        assert_eq!(subscriber_token("a_b").unwrap(), "a_5Fb");
        assert_eq!(subscriber_token("a b*>").unwrap(), "a_20b_2A_3E");
        assert_eq!(subscriber_token("café").unwrap(), "caf_C3_A9");
        for name in ["a.b", "a_2Eb", "a_b", "café", "x y>z", "--"] {
            let token = subscriber_token(name).unwrap();
            assert!(!token.contains("__"));
            assert!(
                token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            );
            assert_eq!(subscriber_from_token(&token).as_deref(), Some(name));
        }
        assert_ne!(
            subscriber_token("a.b").unwrap(),
            subscriber_token("a_2Eb").unwrap()
        );
    }

    #[test]
    fn impossible_subscriber_names_are_rejected_with_a_reason() {
        for name in ["", &"é".repeat(30)] {
            match subscriber_token(name) {
                Err(TransportError::InvalidName {
                    name: n, reason, ..
                }) => {
                    assert_eq!(n, name);
                    assert!(!reason.is_empty());
                }
                other => panic!("expected an invalid name, got {other:?}"),
            }
        }
    }

    #[test]
    fn prefixes_are_checked_and_sanitized() {
        assert!(check_prefix("herald").is_ok());
        assert!(check_prefix("my-app_2").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a.b").is_err());
        assert!(check_prefix("a>").is_err());
        assert!(check_prefix(&"a".repeat(65)).is_err());
        assert_eq!(sanitize_prefix("fields-0a1b.c d"), "fields-0a1b_c_d");
        let long = sanitize_prefix(&format!("{}end", "x".repeat(100)));
        assert_eq!(long.len(), 64);
        assert!(long.ends_with("end"));
        assert!(check_prefix(&long).is_ok());
        let names = Names::new("t1").unwrap();
        assert_eq!(names.events_stream(), "T1_EVENTS");
        assert_eq!(names.dlq_stream(), "T1_DLQ");
        assert_eq!(names.event_subject("order.created"), "t1.ev.order.created");
    }

    #[test]
    fn consumer_names_are_stable_and_distinct() {
        assert_eq!(
            filter_consumer("mailer", "order.*"),
            filter_consumer("mailer", "order.*")
        );
        assert_ne!(
            filter_consumer("mailer", "order.*"),
            filter_consumer("mailer", "order.>")
        );
        assert_eq!(redelivery_consumer("mailer"), "mailer__rd");
    }
}
