//! Event type names and topic patterns.
//!
//! An event type is a dotted name such as `order.created` or
//! `billing.invoice.paid`. A [`TopicPattern`] selects event types by name,
//! with two wildcards that stand for whole segments:
//!
//! | wildcard | matches | example | matches | does not match |
//! |---|---|---|---|---|
//! | `*` | exactly one segment | `order.*` | `order.created` | `order`, `order.line.added` |
//! | `#` | zero or more segments | `order.#` | `order`, `order.created`, `order.line.added` | `orders.created` |
//!
//! # Rules
//!
//! - A name is 1 to 255 bytes long ([`EventType::MAX_LEN`]).
//! - It is split into segments at `.`; every segment is non-empty, so
//!   `order..created`, `.order` and `order.` are rejected.
//! - A segment consists of ASCII letters, digits, `_` and `-`. Anything else
//!   (spaces, non-ASCII characters, `/`, `:`) is rejected.
//! - In a pattern, a segment may also be exactly `*` or exactly `#`. A
//!   wildcard inside a segment (`ord*`, `order#`) is rejected rather than
//!   read as a prefix match.
//! - Matching compares whole segments and is case-sensitive.
//!
//! # Mapping onto brokers
//!
//! These are the rules of AMQP 0-9-1 topic exchanges, so a pattern can be
//! used unchanged as a RabbitMQ binding key, and the 255-byte limit is the
//! AMQP limit on routing keys. The character set is chosen so that every
//! name is also a valid NATS subject: `*` means the same there, and `#`
//! corresponds to NATS's `>`, with two differences to keep in mind when
//! translating a pattern into a NATS subscription:
//!
//! - `>` may only be the last token, so a pattern such as `a.#.z` has no
//!   NATS equivalent; subscribe to something broader and filter with
//!   [`TopicPattern::matches`].
//! - `>` matches *one* or more tokens, while `#` matches zero or more, so
//!   `order.#` needs both `order` and `order.>` (or a broader subscription
//!   filtered locally).
//!
//! # Examples
//!
//! ```
//! use herald::topic::{EventType, TopicPattern};
//!
//! let created = EventType::new("order.created")?;
//! let pattern = TopicPattern::parse("order.#")?;
//! assert!(pattern.matches(&created));
//! assert!(pattern.matches("order"));
//! assert!(!pattern.matches("orders.created"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::ser::{Serialize, Serializer};

/// The longest event type name or topic pattern, in bytes (AMQP's limit on
/// routing keys).
const MAX_LEN: usize = 255;

// ---------------------------------------------------------------------------
// Validation shared by event types and patterns
// ---------------------------------------------------------------------------

/// What is wrong with a name, before it is turned into the error type of the
/// caller (event type or pattern), which owns a copy of the name.
#[derive(Debug)]
enum Flaw {
    Empty,
    TooLong(usize),
    EmptySegment(usize),
    InvalidCharacter { character: char, index: usize },
    PartialWildcard { start: usize, end: usize },
}

/// Whether `c` may appear in a segment that is not a wildcard.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Checks `s` against the rules in the module docs; with `wildcards`, a
/// segment may also be exactly `*` or `#`. Reports the leftmost flaw and
/// does not allocate.
fn scan(s: &str, wildcards: bool) -> Result<(), Flaw> {
    if s.is_empty() {
        return Err(Flaw::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(Flaw::TooLong(s.len()));
    }
    let mut start = 0;
    for (position, segment) in s.split('.').enumerate() {
        scan_segment(segment, start, position, wildcards)?;
        start += segment.len() + 1;
    }
    Ok(())
}

/// Checks one segment that starts at byte `start` of the whole name.
fn scan_segment(segment: &str, start: usize, position: usize, wildcards: bool) -> Result<(), Flaw> {
    if segment.is_empty() {
        return Err(Flaw::EmptySegment(position));
    }
    if wildcards && (segment == "*" || segment == "#") {
        return Ok(());
    }
    for (offset, character) in segment.char_indices() {
        if is_name_char(character) {
            continue;
        }
        if wildcards && (character == '*' || character == '#') {
            return Err(Flaw::PartialWildcard {
                start,
                end: start + segment.len(),
            });
        }
        return Err(Flaw::InvalidCharacter {
            character,
            index: start + offset,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// EventType
// ---------------------------------------------------------------------------

/// Why a string is not a valid event type name.
///
/// See the [module docs](self) for the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventTypeError {
    /// The name is the empty string.
    #[error("invalid event type: the name is empty")]
    Empty,
    /// The name is longer than [`EventType::MAX_LEN`] bytes.
    #[error("invalid event type: the name is {len} bytes long, at most 255 are allowed")]
    TooLong {
        /// Length of the rejected name, in bytes.
        len: usize,
    },
    /// A segment is empty: the name starts or ends with `.` or contains `..`.
    #[error("invalid event type {name:?}: segment {} is empty", .position + 1)]
    EmptySegment {
        /// The rejected name.
        name: String,
        /// Zero-based index of the empty segment (the message counts from
        /// one).
        position: usize,
    },
    /// The name contains a character other than ASCII letters, digits, `_`,
    /// `-` and the `.` between segments.
    #[error(
        "invalid event type {name:?}: character {character:?} at byte {index} is not allowed \
         (segments may contain ASCII letters, digits, '_' and '-')"
    )]
    InvalidCharacter {
        /// The rejected name.
        name: String,
        /// The first character that is not allowed.
        character: char,
        /// Byte offset of that character in `name`.
        index: usize,
    },
}

impl EventTypeError {
    fn from_flaw(flaw: Flaw, name: &str) -> Self {
        match flaw {
            Flaw::Empty => Self::Empty,
            Flaw::TooLong(len) => Self::TooLong { len },
            Flaw::EmptySegment(position) => Self::EmptySegment {
                name: name.to_owned(),
                position,
            },
            Flaw::InvalidCharacter { character, index } => Self::InvalidCharacter {
                name: name.to_owned(),
                character,
                index,
            },
            // Event types do not allow wildcards, so `scan` reports a wildcard
            // character as an invalid one and never as a partial wildcard.
            Flaw::PartialWildcard { start, .. } => Self::InvalidCharacter {
                name: name.to_owned(),
                character: name[start..].chars().next().unwrap_or('*'),
                index: start,
            },
        }
    }
}

/// Checks that `s` is a valid event type name without allocating (unless it
/// is not, to build the error).
///
/// [`EventType::new`] runs the same check; use this function on hot paths
/// that only need to know, such as a publisher checking a name it was handed
/// as `&str`.
///
/// # Errors
///
/// The first rule that `s` breaks, as an [`EventTypeError`].
///
/// # Examples
///
/// ```
/// use herald::topic::{validate_event_type, EventTypeError};
///
/// assert!(validate_event_type("order.created").is_ok());
/// assert_eq!(
///     validate_event_type("order..created"),
///     Err(EventTypeError::EmptySegment { name: "order..created".into(), position: 1 }),
/// );
/// ```
pub fn validate_event_type(s: &str) -> Result<(), EventTypeError> {
    scan(s, false).map_err(|flaw| EventTypeError::from_flaw(flaw, s))
}

/// A validated event type name, such as `order.created`.
///
/// Cheap to clone (the name is shared). Compares, hashes and orders like the
/// name itself, dereferences to `str`, and serializes as a plain string;
/// deserializing validates. See the [module docs](self) for the rules.
///
/// # Examples
///
/// ```
/// use herald::topic::EventType;
///
/// let event_type = EventType::new("order.created")?;
/// assert_eq!(event_type.as_str(), "order.created");
/// assert_eq!(event_type.split('.').count(), 2); // derefs to `str`
///
/// assert!(EventType::new("order created").is_err());
/// assert!("order.*".parse::<EventType>().is_err());
/// # Ok::<(), herald::topic::EventTypeError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(Arc<str>);

impl EventType {
    /// The longest valid name, in bytes.
    pub const MAX_LEN: usize = MAX_LEN;

    /// Validates `name` and wraps it.
    ///
    /// # Errors
    ///
    /// An [`EventTypeError`] naming the first rule that `name` breaks.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::topic::{EventType, EventTypeError};
    ///
    /// assert!(EventType::new("billing.invoice-paid").is_ok());
    /// assert_eq!(EventType::new(""), Err(EventTypeError::Empty));
    /// ```
    pub fn new(name: impl AsRef<str>) -> Result<Self, EventTypeError> {
        let name = name.as_ref();
        validate_event_type(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for EventType {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EventType {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for EventType {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for EventType {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for EventType {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for EventType {
    type Err = EventTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for EventType {
    type Error = EventTypeError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for EventType {
    type Error = EventTypeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate_event_type(&s)?;
        Ok(Self(Arc::from(s)))
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventTypeVisitor;

        impl Visitor<'_> for EventTypeVisitor {
            type Value = EventType;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event type name such as \"order.created\"")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<EventType, E> {
                EventType::new(s).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(EventTypeVisitor)
    }
}

// ---------------------------------------------------------------------------
// TopicPattern
// ---------------------------------------------------------------------------

/// Why a string is not a valid topic pattern.
///
/// See the [module docs](self) for the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error("invalid topic pattern: the pattern is empty")]
    Empty,
    /// The pattern is longer than [`TopicPattern::MAX_LEN`] bytes.
    #[error("invalid topic pattern: the pattern is {len} bytes long, at most 255 are allowed")]
    TooLong {
        /// Length of the rejected pattern, in bytes.
        len: usize,
    },
    /// A segment is empty: the pattern starts or ends with `.` or contains
    /// `..`.
    #[error("invalid topic pattern {pattern:?}: segment {} is empty", .position + 1)]
    EmptySegment {
        /// The rejected pattern.
        pattern: String,
        /// Zero-based index of the empty segment (the message counts from
        /// one).
        position: usize,
    },
    /// The pattern contains a character other than ASCII letters, digits,
    /// `_`, `-`, the `.` between segments and whole-segment wildcards.
    #[error(
        "invalid topic pattern {pattern:?}: character {character:?} at byte {index} is not allowed \
         (segments may contain ASCII letters, digits, '_' and '-', or be exactly `*` or `#`)"
    )]
    InvalidCharacter {
        /// The rejected pattern.
        pattern: String,
        /// The first character that is not allowed.
        character: char,
        /// Byte offset of that character in `pattern`.
        index: usize,
    },
    /// A segment contains `*` or `#` together with other characters, as in
    /// `ord*`; wildcards match whole segments only.
    #[error(
        "invalid topic pattern {pattern:?}: wildcard `{}` must be a whole segment, found {segment:?}",
        first_wildcard(.segment)
    )]
    PartialWildcard {
        /// The rejected pattern.
        pattern: String,
        /// The segment that contains the wildcard.
        segment: String,
    },
}

/// The first wildcard character in `segment`, for [`PatternError`]'s message.
fn first_wildcard(segment: &str) -> char {
    segment
        .chars()
        .find(|&c| c == '*' || c == '#')
        .unwrap_or('*')
}

impl PatternError {
    fn from_flaw(flaw: Flaw, pattern: &str) -> Self {
        match flaw {
            Flaw::Empty => Self::Empty,
            Flaw::TooLong(len) => Self::TooLong { len },
            Flaw::EmptySegment(position) => Self::EmptySegment {
                pattern: pattern.to_owned(),
                position,
            },
            Flaw::InvalidCharacter { character, index } => Self::InvalidCharacter {
                pattern: pattern.to_owned(),
                character,
                index,
            },
            Flaw::PartialWildcard { start, end } => Self::PartialWildcard {
                pattern: pattern.to_owned(),
                segment: pattern[start..end].to_owned(),
            },
        }
    }
}

/// One segment of a parsed pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    /// A literal segment: the byte range `start..end` of the pattern's source.
    Literal { start: usize, end: usize },
    /// `*`: exactly one segment.
    Star,
    /// `#`: zero or more segments.
    Hash,
}

#[derive(Debug)]
struct Inner {
    /// The pattern as given.
    source: Box<str>,
    /// The parsed segments, with runs of `#` collapsed into one (`#.#` and
    /// `#` match the same names).
    segments: Box<[Segment]>,
    /// Whether the pattern has no wildcard.
    exact: bool,
}

/// A parsed topic pattern such as `order.*` or `billing.#`, which selects
/// event types by name.
///
/// `*` matches exactly one segment and `#` matches zero or more; see the
/// [module docs](self) for the rules and how they map onto brokers. Parsing
/// does the work up front, so [`matches`](Self::matches) neither allocates
/// nor re-parses. Cheap to clone (the parsed pattern is shared). Compares,
/// hashes and orders by the pattern's text, and serializes as a plain
/// string; deserializing validates.
///
/// # Examples
///
/// ```
/// use herald::topic::TopicPattern;
///
/// let pattern = TopicPattern::parse("order.*.line.#")?;
/// assert!(pattern.matches("order.42.line"));
/// assert!(pattern.matches("order.42.line.added.by-admin"));
/// assert!(!pattern.matches("order.line"));
///
/// let everything: TopicPattern = "#".parse()?;
/// assert!(everything.matches("order.created"));
/// # Ok::<(), herald::topic::PatternError>(())
/// ```
#[derive(Clone)]
pub struct TopicPattern(Arc<Inner>);

impl TopicPattern {
    /// The longest valid pattern, in bytes.
    pub const MAX_LEN: usize = MAX_LEN;

    /// Parses and validates `pattern`.
    ///
    /// # Errors
    ///
    /// A [`PatternError`] naming the first rule that `pattern` breaks.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::topic::{PatternError, TopicPattern};
    ///
    /// assert!(TopicPattern::parse("*.created").is_ok());
    /// assert_eq!(
    ///     TopicPattern::parse("ord*"),
    ///     Err(PatternError::PartialWildcard { pattern: "ord*".into(), segment: "ord*".into() }),
    /// );
    /// ```
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        scan(pattern, true).map_err(|flaw| PatternError::from_flaw(flaw, pattern))?;

        let mut segments = Vec::new();
        let mut start = 0;
        for text in pattern.split('.') {
            let segment = match text {
                "*" => Segment::Star,
                "#" => Segment::Hash,
                _ => Segment::Literal {
                    start,
                    end: start + text.len(),
                },
            };
            if !(segment == Segment::Hash && segments.last() == Some(&Segment::Hash)) {
                segments.push(segment);
            }
            start += text.len() + 1;
        }
        let exact = segments
            .iter()
            .all(|segment| matches!(segment, Segment::Literal { .. }));

        Ok(Self(Arc::new(Inner {
            source: pattern.into(),
            segments: segments.into_boxed_slice(),
            exact,
        })))
    }

    /// The pattern as given to [`parse`](Self::parse).
    pub fn as_str(&self) -> &str {
        &self.0.source
    }

    /// Whether the pattern has no wildcard, and so matches exactly one event
    /// type: its own text.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::topic::TopicPattern;
    ///
    /// assert!(TopicPattern::parse("order.created")?.is_exact());
    /// assert!(!TopicPattern::parse("order.*")?.is_exact());
    /// # Ok::<(), herald::topic::PatternError>(())
    /// ```
    pub fn is_exact(&self) -> bool {
        self.0.exact
    }

    /// Whether `event_type` matches the pattern.
    ///
    /// Segments are compared whole and case-sensitively; `*` takes exactly
    /// one segment and `#` zero or more, trying every split where needed
    /// (`a.#.b` matches `a.b`, `a.x.b` and `a.x.y.b`). Does not allocate.
    ///
    /// `event_type` is not validated: pass an [`EventType`] (it derefs to
    /// `str`) or a name checked with [`validate_event_type`]. Any other
    /// string is matched by its `.`-separated pieces, without panicking.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::topic::TopicPattern;
    ///
    /// let pattern = TopicPattern::parse("a.#.b")?;
    /// assert!(pattern.matches("a.b"));
    /// assert!(pattern.matches("a.x.y.b"));
    /// assert!(!pattern.matches("a.x.y"));
    ///
    /// let one = TopicPattern::parse("*.created")?;
    /// assert!(one.matches("order.created"));
    /// assert!(!one.matches("created"));
    /// assert!(!one.matches("shop.order.created"));
    /// # Ok::<(), herald::topic::PatternError>(())
    /// ```
    pub fn matches(&self, event_type: &str) -> bool {
        let inner = &*self.0;
        if inner.exact {
            return *inner.source == *event_type;
        }
        match_segments(&inner.source, &inner.segments, event_type)
    }
}

/// Matches `text` against `segments` (whose literals are ranges of `source`).
///
/// This is the classic wildcard-matching loop with one backtracking point:
/// `#` first takes no segment, and on a later mismatch the most recent `#`
/// takes one more and matching resumes after it. Remembering only the most
/// recent `#` suffices because everything between two `#`s matches a fixed
/// number of segments, so any split an earlier `#` could still try is also
/// available to the later one.
///
/// The text is walked by byte offsets: `cursor` is where the current segment
/// starts, and `cursor > text.len()` means every segment has been consumed
/// (the last segment ends at `text.len()`, and the next starts one past the
/// separator).
fn match_segments(source: &str, segments: &[Segment], text: &str) -> bool {
    /// The segment starting at `cursor` and where the one after it starts.
    fn segment_at(text: &str, cursor: usize) -> (&str, usize) {
        let rest = &text[cursor..];
        let len = rest.find('.').unwrap_or(rest.len());
        (&rest[..len], cursor + len + 1)
    }

    let mut p = 0;
    let mut cursor = 0;
    // (pattern index after the `#`, text cursor where the `#`'s share ends)
    let mut backtrack: Option<(usize, usize)> = None;

    loop {
        if cursor > text.len() {
            // Text consumed: what is left of the pattern must match nothing.
            return segments[p..].iter().all(|s| *s == Segment::Hash);
        }
        let (current, next) = segment_at(text, cursor);
        let advanced = match segments.get(p) {
            Some(Segment::Hash) => {
                p += 1;
                backtrack = Some((p, cursor));
                continue;
            }
            Some(Segment::Star) => true,
            Some(Segment::Literal { start, end }) => source[*start..*end] == *current,
            None => false,
        };
        if advanced {
            p += 1;
            cursor = next;
            continue;
        }
        match backtrack {
            Some((after_hash, hash_end)) => {
                let (_, hash_end) = segment_at(text, hash_end);
                backtrack = Some((after_hash, hash_end));
                p = after_hash;
                cursor = hash_end;
            }
            None => return false,
        }
    }
}

impl AsRef<str> for TopicPattern {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for TopicPattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for TopicPattern {}

impl std::hash::Hash for TopicPattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for TopicPattern {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TopicPattern {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl FromStr for TopicPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for TopicPattern {
    type Error = PatternError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<&EventType> for TopicPattern {
    /// The exact pattern that matches `event_type` and nothing else.
    fn from(event_type: &EventType) -> Self {
        let source: Box<str> = event_type.as_str().into();
        let mut segments = Vec::new();
        let mut start = 0;
        for text in source.split('.') {
            segments.push(Segment::Literal {
                start,
                end: start + text.len(),
            });
            start += text.len() + 1;
        }
        Self(Arc::new(Inner {
            source,
            segments: segments.into_boxed_slice(),
            exact: true,
        }))
    }
}

impl Serialize for TopicPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TopicPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PatternVisitor;

        impl Visitor<'_> for PatternVisitor {
            type Value = TopicPattern;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a topic pattern such as \"order.*\" or \"order.#\"")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<TopicPattern, E> {
                TopicPattern::parse(s).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(PatternVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn assert_matches(p: &str, yes: &[&str], no: &[&str]) {
        let parsed = pattern(p);
        for t in yes {
            assert!(parsed.matches(t), "{p:?} should match {t:?}");
        }
        for t in no {
            assert!(!parsed.matches(t), "{p:?} should not match {t:?}");
        }
    }

    // --- event types -------------------------------------------------------

    #[test]
    fn accepts_valid_event_types() {
        for name in [
            "a",
            "order.created",
            "Order_1.line-added.V2",
            "0.1.2",
            "-._",
        ] {
            let event_type = EventType::new(name).unwrap();
            assert_eq!(event_type.as_str(), name);
            assert_eq!(event_type, name);
        }
        assert!(EventType::new("a".repeat(EventType::MAX_LEN)).is_ok());
    }

    #[test]
    fn rejects_empty_event_type() {
        assert_eq!(EventType::new(""), Err(EventTypeError::Empty));
        assert_eq!(
            EventTypeError::Empty.to_string(),
            "invalid event type: the name is empty"
        );
    }

    #[test]
    fn rejects_event_type_longer_than_255_bytes() {
        let name = "a".repeat(256);
        assert_eq!(
            EventType::new(&name),
            Err(EventTypeError::TooLong { len: 256 })
        );
        assert_eq!(
            EventTypeError::TooLong { len: 256 }.to_string(),
            "invalid event type: the name is 256 bytes long, at most 255 are allowed"
        );
    }

    #[test]
    fn rejects_event_type_with_empty_segment() {
        let err = EventType::new("order..created").unwrap_err();
        assert_eq!(
            err,
            EventTypeError::EmptySegment {
                name: "order..created".into(),
                position: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid event type \"order..created\": segment 2 is empty"
        );
        for (name, position) in [(".order", 0), ("order.", 1), (".", 0), ("a.b..", 2)] {
            assert_eq!(
                validate_event_type(name),
                Err(EventTypeError::EmptySegment {
                    name: name.into(),
                    position
                }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn rejects_event_type_with_invalid_character() {
        let cases = [
            ("order created", ' ', 5),
            ("order.*", '*', 6),
            ("#", '#', 0),
            ("order.crééé", 'é', 8),
            ("a/b", '/', 1),
            ("a:b", ':', 1),
            ("ord*", '*', 3),
        ];
        for (name, character, index) in cases {
            assert_eq!(
                validate_event_type(name),
                Err(EventTypeError::InvalidCharacter {
                    name: name.into(),
                    character,
                    index
                }),
                "{name:?}"
            );
        }
        assert_eq!(
            EventType::new("order created").unwrap_err().to_string(),
            "invalid event type \"order created\": character ' ' at byte 5 is not allowed \
             (segments may contain ASCII letters, digits, '_' and '-')"
        );
    }

    #[test]
    fn reports_the_leftmost_problem() {
        assert!(matches!(
            validate_event_type("a..b c"),
            Err(EventTypeError::EmptySegment { position: 1, .. })
        ));
        assert!(matches!(
            validate_event_type("a c..b"),
            Err(EventTypeError::InvalidCharacter { index: 1, .. })
        ));
        // Length is checked before characters.
        let long = format!("{}..", "a".repeat(300));
        assert_eq!(
            validate_event_type(&long),
            Err(EventTypeError::TooLong { len: 302 })
        );
    }

    #[test]
    fn event_type_conversions_agree() {
        let a = EventType::new("order.created").unwrap();
        let b: EventType = "order.created".parse().unwrap();
        let c = EventType::try_from("order.created").unwrap();
        let d = EventType::try_from(String::from("order.created")).unwrap();
        assert!(a == b && b == c && c == d);
        assert_eq!(a.to_string(), "order.created");
        assert_eq!(format!("{a:?}"), "\"order.created\"");
        assert_eq!(&*a, "order.created");
        assert!(EventType::try_from(String::from("a..b")).is_err());

        let mut set = std::collections::HashSet::new();
        set.insert(a);
        assert!(set.contains("order.created"));
    }

    #[test]
    fn event_type_serde_is_a_validated_string() {
        let a = EventType::new("order.created").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"order.created\"");
        let back: EventType = serde_json::from_str("\"order.created\"").unwrap();
        assert_eq!(back, a);
        let err = serde_json::from_str::<EventType>("\"order..created\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid event type \"order..created\": segment 2 is empty"),
            "{err}"
        );
        assert!(serde_json::from_str::<EventType>("42").is_err());
    }

    // --- pattern errors ----------------------------------------------------

    #[test]
    fn rejects_empty_pattern() {
        assert_eq!(TopicPattern::parse(""), Err(PatternError::Empty));
        assert_eq!(
            PatternError::Empty.to_string(),
            "invalid topic pattern: the pattern is empty"
        );
    }

    #[test]
    fn rejects_pattern_longer_than_255_bytes() {
        assert!(TopicPattern::parse(&"a".repeat(255)).is_ok());
        let err = TopicPattern::parse(&"a".repeat(256)).unwrap_err();
        assert_eq!(err, PatternError::TooLong { len: 256 });
        assert_eq!(
            err.to_string(),
            "invalid topic pattern: the pattern is 256 bytes long, at most 255 are allowed"
        );
    }

    #[test]
    fn rejects_pattern_with_empty_segment() {
        for (p, position) in [("a..b", 1), (".#", 0), ("#.", 1), ("*..*", 1), ("..", 0)] {
            assert_eq!(
                TopicPattern::parse(p),
                Err(PatternError::EmptySegment {
                    pattern: p.into(),
                    position
                }),
                "{p:?}"
            );
        }
        assert_eq!(
            TopicPattern::parse("order..*").unwrap_err().to_string(),
            "invalid topic pattern \"order..*\": segment 2 is empty"
        );
    }

    #[test]
    fn rejects_pattern_with_invalid_character() {
        let err = TopicPattern::parse("order.cre ated").unwrap_err();
        assert_eq!(
            err,
            PatternError::InvalidCharacter {
                pattern: "order.cre ated".into(),
                character: ' ',
                index: 9
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid topic pattern \"order.cre ated\": character ' ' at byte 9 is not allowed \
             (segments may contain ASCII letters, digits, '_' and '-', or be exactly `*` or `#`)"
        );
        assert!(matches!(
            TopicPattern::parse("ö.*"),
            Err(PatternError::InvalidCharacter {
                character: 'ö',
                index: 0,
                ..
            })
        ));
        assert!(matches!(
            TopicPattern::parse("a.>"),
            Err(PatternError::InvalidCharacter {
                character: '>',
                index: 2,
                ..
            })
        ));
    }

    #[test]
    fn rejects_partial_wildcards() {
        let err = TopicPattern::parse("ord*").unwrap_err();
        assert_eq!(
            err,
            PatternError::PartialWildcard {
                pattern: "ord*".into(),
                segment: "ord*".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid topic pattern \"ord*\": wildcard `*` must be a whole segment, found \"ord*\""
        );
        for (p, segment) in [
            ("order.#x", "#x"),
            ("**", "**"),
            ("a.##.b", "##"),
            ("*#", "*#"),
        ] {
            assert_eq!(
                TopicPattern::parse(p),
                Err(PatternError::PartialWildcard {
                    pattern: p.into(),
                    segment: segment.into()
                }),
                "{p:?}"
            );
        }
        assert!(
            TopicPattern::parse("order.#x")
                .unwrap_err()
                .to_string()
                .contains("wildcard `#` must be a whole segment")
        );
    }

    // --- matching ----------------------------------------------------------

    #[test]
    fn exact_pattern_matches_only_itself() {
        let p = pattern("order.created");
        assert!(p.is_exact());
        assert_matches(
            "order.created",
            &["order.created"],
            &[
                "order",
                "order.created.x",
                "Order.created",
                "x.order.created",
            ],
        );
    }

    #[test]
    fn hash_alone_matches_everything() {
        assert!(!pattern("#").is_exact());
        assert_matches("#", &["a", "a.b", "a.b.c.d.e.f.g"], &[]);
    }

    #[test]
    fn hash_hash_matches_like_hash() {
        assert_matches("#.#", &["a", "a.b", "a.b.c"], &[]);
        assert_matches("#.#.#", &["a", "a.b.c.d"], &[]);
        assert_eq!(pattern("#.#").as_str(), "#.#");
    }

    #[test]
    fn hash_in_the_middle_backtracks() {
        assert_matches(
            "a.#.b",
            &["a.b", "a.x.b", "a.x.y.b", "a.b.b", "a.b.x.b"],
            &["a", "b", "a.x", "a.b.x", "x.a.b"],
        );
        assert_matches(
            "a.#.#.b",
            &["a.b", "a.x.b", "a.x.y.b", "a.b.b.b"],
            &["a", "a.x", "b.a.b"],
        );
        assert_matches(
            "#.b.#",
            &["b", "a.b", "b.c", "a.b.c", "a.b.b"],
            &["a", "a.c"],
        );
        assert_matches("#.a.b", &["a.b", "a.a.b", "x.a.a.b"], &["a.b.a", "b"]);
    }

    #[test]
    fn trailing_hash_matches_zero_segments() {
        assert_matches("a.#", &["a", "a.b", "a.b.c"], &["b", "ab", "b.a"]);
        assert_matches("#.a", &["a", "x.a", "x.y.a"], &["a.x"]);
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert_matches("*", &["a", "order"], &["a.b"]);
        assert_matches("*.*", &["a.b"], &["a", "a.b.c"]);
        assert_matches("*.created", &["order.created"], &["created", "a.b.created"]);
        assert_matches("order.*", &["order.created"], &["order", "order.a.b"]);
    }

    #[test]
    fn star_then_hash_needs_at_least_one_segment() {
        assert_matches("a.*.#", &["a.b", "a.b.c", "a.b.c.d"], &["a", "b.c"]);
        assert_matches("#.*", &["a", "a.b"], &[]);
        assert_matches("*.#.*", &["a.b", "a.b.c"], &["a"]);
        assert_matches("#.*.*.#", &["a.b", "a.b.c"], &["a"]);
    }

    #[test]
    fn matching_is_case_sensitive() {
        assert_matches("Order.*", &["Order.created"], &["order.created"]);
    }

    #[test]
    fn matching_unvalidated_strings_does_not_panic() {
        let p = pattern("a.#");
        assert!(p.matches("a."));
        assert!(!p.matches(""));
        assert!(pattern("#").matches(""));
        assert!(pattern("*").matches(""));
        assert!(!pattern("*.*").matches("é"));
        assert!(pattern("*.*").matches("é."));
    }

    #[test]
    fn pattern_equality_hash_and_order_follow_the_text() {
        use std::collections::HashSet;
        let a = pattern("order.*");
        let b: TopicPattern = "order.*".parse().unwrap();
        assert_eq!(a, b);
        assert_ne!(pattern("#"), pattern("#.#"));
        assert!(pattern("a.*") < pattern("b"));
        let set: HashSet<_> = [a.clone(), b, pattern("order.#")].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(a.to_string(), "order.*");
        assert_eq!(format!("{a:?}"), "\"order.*\"");
        assert_eq!(a.as_ref(), "order.*");
        assert_eq!(TopicPattern::try_from("order.*").unwrap(), a);
    }

    #[test]
    fn exact_pattern_from_event_type() {
        let event_type = EventType::new("order.line.added").unwrap();
        let p = TopicPattern::from(&event_type);
        assert!(p.is_exact());
        assert_eq!(p, pattern("order.line.added"));
        assert!(p.matches(&event_type));
        assert!(!p.matches("order.line"));
    }

    #[test]
    fn pattern_serde_is_a_validated_string() {
        let p = pattern("order.#");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"order.#\"");
        let back: TopicPattern = serde_json::from_str("\"order.#\"").unwrap();
        assert_eq!(back, p);
        assert!(back.matches("order"));
        let err = serde_json::from_str::<TopicPattern>("\"ord*\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("wildcard `*` must be a whole segment"),
            "{err}"
        );
    }
}
