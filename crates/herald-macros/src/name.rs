//! Compile-time validation of event type names.
//!
//! These rules mirror the ones `herald` applies at run time, so a name that
//! passes here is also accepted there.

/// The longest event name allowed, in bytes.
pub(crate) const MAX_LEN: usize = 255;

/// How many characters of a too-long name its error message quotes.
const LONG_NAME_PREFIX: usize = 32;

/// Checks `name` against the event name rules.
///
/// A valid name is 1 to [`MAX_LEN`] bytes long and is made of segments
/// separated by `.`; every segment is non-empty and holds only ASCII letters,
/// ASCII digits, `_` and `-`.
///
/// # Errors
///
/// Returns a message naming the first rule broken, such as
/// `invalid event name "order..created": segment 2 is empty`. Segments are
/// numbered from 1 and character indices are byte offsets into `name`.
pub(crate) fn validate(name: &str) -> Result<(), String> {
    let invalid = |reason: String| format!("invalid event name {name:?}: {reason}");

    if name.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    if name.len() > MAX_LEN {
        // Quote only the start of the name: the whole of it would drown the
        // reason.
        let start: String = name.chars().take(LONG_NAME_PREFIX).collect();
        return Err(format!(
            "invalid event name starting with {start:?}: \
             it is {} bytes long, at most {MAX_LEN} are allowed",
            name.len()
        ));
    }

    let mut start = 0;
    for (number, segment) in name.split('.').enumerate() {
        if segment.is_empty() {
            return Err(invalid(format!("segment {} is empty", number + 1)));
        }
        if let Some((offset, c)) = segment.char_indices().find(|&(_, c)| !is_allowed(c)) {
            return Err(invalid(format!(
                "character {c:?} at index {} is not allowed \
                 (use letters, digits, '_' and '-')",
                start + offset
            )));
        }
        start += segment.len() + 1;
    }
    Ok(())
}

/// Whether `c` may appear inside a segment.
fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

#[cfg(test)]
mod tests {
    use super::{MAX_LEN, validate};

    #[test]
    fn accepts_dotted_names_of_letters_digits_underscores_and_dashes() {
        for name in [
            "order",
            "order.created",
            "Order.Created.v2",
            "billing.invoice_paid",
            "user-account.e-mail-changed",
            "a.b.c.d.e.f",
            "0.1",
            "_",
            "-",
        ] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn accepts_a_name_of_exactly_the_maximum_length() {
        let name = "a".repeat(MAX_LEN);
        assert_eq!(validate(&name), Ok(()));
    }

    #[test]
    fn rejects_an_empty_name() {
        assert_eq!(
            validate(""),
            Err(r#"invalid event name "": it is empty"#.to_owned())
        );
    }

    #[test]
    fn rejects_a_name_longer_than_the_maximum() {
        let name = "a".repeat(MAX_LEN + 1);
        assert_eq!(
            validate(&name),
            Err(format!(
                "invalid event name starting with {:?}: \
                 it is 256 bytes long, at most 255 are allowed",
                "a".repeat(32)
            ))
        );
    }

    #[test]
    fn counts_the_length_in_bytes_not_characters() {
        // 128 two-byte characters: 128 chars, 256 bytes.
        let name = "é".repeat(128);
        let err = validate(&name).unwrap_err();
        assert!(err.contains("256 bytes long"), "{err}");
    }

    #[test]
    fn rejects_an_empty_segment_and_numbers_segments_from_one() {
        assert_eq!(
            validate("order..created"),
            Err(r#"invalid event name "order..created": segment 2 is empty"#.to_owned())
        );
        assert_eq!(
            validate(".order"),
            Err(r#"invalid event name ".order": segment 1 is empty"#.to_owned())
        );
        assert_eq!(
            validate("order."),
            Err(r#"invalid event name "order.": segment 2 is empty"#.to_owned())
        );
        assert_eq!(
            validate("."),
            Err(r#"invalid event name ".": segment 1 is empty"#.to_owned())
        );
    }

    #[test]
    fn rejects_a_disallowed_character_and_reports_its_byte_index() {
        assert_eq!(
            validate("order.*"),
            Err(r#"invalid event name "order.*": character '*' at index 6 is not allowed (use letters, digits, '_' and '-')"#.to_owned())
        );
        assert_eq!(
            validate("order.#"),
            Err(r#"invalid event name "order.#": character '#' at index 6 is not allowed (use letters, digits, '_' and '-')"#.to_owned())
        );
        assert_eq!(
            validate("order created"),
            Err(r#"invalid event name "order created": character ' ' at index 5 is not allowed (use letters, digits, '_' and '-')"#.to_owned())
        );
        assert_eq!(
            validate("a.b.c>"),
            Err(r#"invalid event name "a.b.c>": character '>' at index 5 is not allowed (use letters, digits, '_' and '-')"#.to_owned())
        );
    }

    #[test]
    fn rejects_non_ascii_letters_at_their_byte_index() {
        let err = validate("café.créé").unwrap_err();
        assert!(
            err.contains("character 'é' at index 3 is not allowed"),
            "{err}"
        );
        let err = validate("ab.cré").unwrap_err();
        assert!(
            err.contains("character 'é' at index 5 is not allowed"),
            "{err}"
        );
    }

    #[test]
    fn reports_the_first_problem_from_the_left() {
        assert!(validate("a..*").unwrap_err().contains("segment 2 is empty"));
        assert!(validate("a.*..").unwrap_err().contains("character '*'"));
    }

    #[test]
    fn escapes_control_characters_in_the_message() {
        let err = validate("order\ncreated").unwrap_err();
        assert_eq!(
            err,
            r#"invalid event name "order\ncreated": character '\n' at index 5 is not allowed (use letters, digits, '_' and '-')"#
        );
    }
}
