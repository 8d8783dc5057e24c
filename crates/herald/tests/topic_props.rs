//! Property tests for `herald::topic`: `TopicPattern::matches` against a
//! plain recursive reference matcher, and validation against a plain
//! reference validator.

use herald::topic::{EventType, EventTypeError, PatternError, TopicPattern, validate_event_type};
use proptest::prelude::*;

/// Reference matcher: AMQP topic semantics, written for obviousness rather
/// than speed. `*` takes exactly one segment, `#` any number (including
/// zero), anything else must equal the segment.
fn reference_matches(pattern: &[&str], name: &[&str]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((&"#", rest)) => (0..=name.len()).any(|taken| reference_matches(rest, &name[taken..])),
        Some((&"*", rest)) => !name.is_empty() && reference_matches(rest, &name[1..]),
        Some((literal, rest)) => {
            name.first() == Some(literal) && reference_matches(rest, &name[1..])
        }
    }
}

/// Reference validator: 1..=255 bytes, non-empty `.`-separated segments of
/// ASCII letters, digits, `_` and `-`; with `wildcards`, a segment may also be
/// exactly `*` or `#`.
fn reference_valid(s: &str, wildcards: bool) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|segment| {
            (wildcards && (segment == "*" || segment == "#"))
                || (!segment.is_empty()
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        })
}

/// Pattern segments over a small alphabet, so that wildcards and literals
/// collide often.
fn pattern_segments() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c", "*", "#", "#"]),
        0..=6,
    )
}

/// Event type segments over the literals of [`pattern_segments`].
fn name_segments() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=6)
}

/// Any valid event type name, with a wider alphabet.
fn valid_event_type() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,12}(\\.[A-Za-z0-9_-]{1,12}){0,8}"
}

/// Strings near the rules' edges: valid characters mixed with separators,
/// wildcards and a few invalid characters.
fn edgy_string() -> impl Strategy<Value = String> {
    "[ab.*#_ é/>-]{0,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn matches_agrees_with_reference(pattern in pattern_segments(), name in name_segments()) {
        let pattern_text = pattern.join(".");
        let name_text = name.join(".");
        if pattern.is_empty() {
            prop_assert_eq!(TopicPattern::parse(&pattern_text), Err(PatternError::Empty));
            return Ok(());
        }
        let parsed = TopicPattern::parse(&pattern_text).expect("generated patterns are valid");
        prop_assert_eq!(
            parsed.matches(&name_text),
            reference_matches(&pattern, &name),
            "pattern {:?} against {:?}", pattern_text, name_text
        );
        prop_assert_eq!(parsed.is_exact(), !pattern.iter().any(|s| *s == "*" || *s == "#"));
    }

    #[test]
    fn matches_agrees_with_reference_for_cloned_and_deserialized_patterns(
        pattern in pattern_segments().prop_filter("non-empty", |p| !p.is_empty()),
        name in name_segments(),
    ) {
        let pattern_text = pattern.join(".");
        let name_text = name.join(".");
        let parsed = TopicPattern::parse(&pattern_text).unwrap();
        let json = serde_json::to_string(&parsed).unwrap();
        let back: TopicPattern = serde_json::from_str(&json).unwrap();
        let expected = reference_matches(&pattern, &name);
        prop_assert_eq!(&back, &parsed);
        prop_assert_eq!(back.matches(&name_text), expected);
        prop_assert_eq!(parsed.clone().matches(&name_text), expected);
        prop_assert_eq!(parsed.to_string(), pattern_text);
    }

    #[test]
    fn every_valid_event_type_is_an_exact_pattern_that_matches_itself(name in valid_event_type()) {
        let event_type = EventType::new(&name).expect("generated names are valid");
        prop_assert_eq!(event_type.as_str(), name.as_str());

        let pattern = TopicPattern::parse(&name).expect("a valid event type is a valid pattern");
        prop_assert!(pattern.is_exact());
        prop_assert!(pattern.matches(&event_type));
        prop_assert_eq!(TopicPattern::from(&event_type), pattern.clone());

        let longer = format!("{name}.x");
        prop_assert!(!pattern.matches(&longer));
        let parent = name.rsplit_once('.').map(|(parent, _)| parent);
        if let Some(parent) = parent {
            prop_assert!(!pattern.matches(parent));
        }
    }

    #[test]
    fn exact_pattern_matches_only_equal_names(a in name_segments(), b in name_segments()) {
        let (a, b) = (a.join("."), b.join("."));
        prop_assert_eq!(TopicPattern::parse(&a).unwrap().matches(&b), a == b);
    }

    #[test]
    fn validation_agrees_with_reference(s in edgy_string()) {
        let valid = reference_valid(&s, false);
        prop_assert_eq!(validate_event_type(&s).is_ok(), valid, "{:?}", s);
        prop_assert_eq!(EventType::new(&s).is_ok(), valid, "{:?}", s);
        prop_assert_eq!(s.parse::<EventType>().is_ok(), valid, "{:?}", s);
        prop_assert_eq!(
            TopicPattern::parse(&s).is_ok(),
            reference_valid(&s, true),
            "{:?}", s
        );
        // Every error message names the rejected text, quoted.
        if let Err(err) = EventType::new(&s) {
            if !matches!(err, EventTypeError::Empty | EventTypeError::TooLong { .. }) {
                prop_assert!(err.to_string().contains(&format!("{s:?}")), "{}", err);
            }
        }
        if let Err(err) = TopicPattern::parse(&s) {
            if !matches!(err, PatternError::Empty | PatternError::TooLong { .. }) {
                prop_assert!(err.to_string().contains(&format!("{s:?}")), "{}", err);
            }
        }
    }

    #[test]
    fn event_type_validation_round_trips_through_serde_json(s in prop_oneof![valid_event_type(), edgy_string()]) {
        let json = serde_json::to_string(&s).unwrap();
        let decoded = serde_json::from_str::<EventType>(&json);
        match validate_event_type(&s) {
            Ok(()) => {
                let event_type = decoded.expect("a valid name deserializes");
                prop_assert_eq!(event_type.as_str(), s.as_str());
                prop_assert_eq!(serde_json::to_string(&event_type).unwrap(), json);
            }
            Err(err) => {
                let decode_err = decoded.expect_err("an invalid name does not deserialize");
                prop_assert!(decode_err.to_string().contains(&err.to_string()), "{}", decode_err);
            }
        }
    }

    #[test]
    fn pattern_validation_round_trips_through_serde_json(s in edgy_string()) {
        let json = serde_json::to_string(&s).unwrap();
        let decoded = serde_json::from_str::<TopicPattern>(&json);
        match TopicPattern::parse(&s) {
            Ok(pattern) => {
                let back = decoded.expect("a valid pattern deserializes");
                prop_assert_eq!(&back, &pattern);
                prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
            }
            Err(err) => {
                let decode_err = decoded.expect_err("an invalid pattern does not deserialize");
                prop_assert!(decode_err.to_string().contains(&err.to_string()), "{}", decode_err);
            }
        }
    }

    #[test]
    fn length_limit_is_255_bytes(segment_len in 1usize..40, count in 1usize..12) {
        let name = vec!["x".repeat(segment_len); count].join(".");
        let ok = name.len() <= 255;
        prop_assert_eq!(EventType::new(&name).is_ok(), ok);
        prop_assert_eq!(TopicPattern::parse(&name).is_ok(), ok);
        if !ok {
            prop_assert_eq!(validate_event_type(&name), Err(EventTypeError::TooLong { len: name.len() }));
            prop_assert_eq!(TopicPattern::parse(&name), Err(PatternError::TooLong { len: name.len() }));
        }
    }
}
