//! The store's SQL, from `queries/`, with the schema filled in.

/// Replaces `{schema}` in a query with the quoted schema name.
fn fill(template: &str, schema: &str) -> String {
    template.replace("{schema}", schema)
}

/// The columns a dead letter is read from, in order.
const DEAD_LETTER_COLUMNS: &str = "id, subscriber, event::text AS event, attempts, reason, \
     errors::text AS errors, first_failed_at, last_failed_at";

/// Every statement the store sends, for one schema.
#[derive(Debug)]
pub(crate) struct Queries {
    /// The notification channel of this schema.
    pub(crate) channel: String,
    pub(crate) append_any: String,
    pub(crate) append_no_stream: String,
    pub(crate) append_existing: String,
    pub(crate) link_any: String,
    pub(crate) link_no_stream: String,
    pub(crate) link_existing: String,
    pub(crate) stored_events: String,
    pub(crate) append_group: String,
    pub(crate) event_positions: String,
    pub(crate) stream_version: String,
    pub(crate) lock_stream: String,
    pub(crate) delete_stream: String,
    pub(crate) event: String,
    pub(crate) read_forward: String,
    pub(crate) read_backward: String,
    pub(crate) read_all: String,
    pub(crate) read_all_filtered: String,
    pub(crate) head: String,
    pub(crate) streams: String,
    pub(crate) stream_info: String,
    pub(crate) notify: String,
    pub(crate) notify_async: String,
    pub(crate) probe: String,
    pub(crate) holders: String,
    pub(crate) checkpoint_load: String,
    pub(crate) checkpoint_save: String,
    pub(crate) checkpoint_reset: String,
    pub(crate) enabled_load: String,
    pub(crate) enabled_save: String,
    pub(crate) retry_schedule: String,
    pub(crate) retry_list: String,
    pub(crate) retry_clear: String,
    pub(crate) dead_letter_record: String,
    pub(crate) dead_letter_list: String,
    pub(crate) dead_letter_get: String,
    pub(crate) dead_letter_remove: String,
    pub(crate) dead_letter_counts: String,
    pub(crate) dead_letter_purge: String,
    pub(crate) ledger_contains: String,
    pub(crate) ledger_insert: String,
}

impl Queries {
    /// The statements for `schema`, a name that
    /// [`PgConfig::validate`](crate::PgConfig::validate) accepted.
    pub(crate) fn new(schema: &str) -> Self {
        let quoted = format!("\"{schema}\"");
        let q = |template: &str| fill(template, &quoted);
        let any = include_str!("../queries/append/stream_any.sql");
        let no_stream = include_str!("../queries/append/stream_no_stream.sql");
        let existing = include_str!("../queries/append/stream_existing.sql");
        let insert = include_str!("../queries/append/insert_events.sql");
        let link = include_str!("../queries/append/link.sql");
        let with = |stream: &str, tail: &str| q(&format!("WITH s AS (\n{stream}\n)\n{tail}"));
        let channel = format!("{schema}.herald_events");
        Self {
            append_any: with(any, insert),
            append_no_stream: with(no_stream, insert),
            append_existing: with(existing, insert),
            link_any: with(any, link),
            link_no_stream: with(no_stream, link),
            link_existing: with(existing, link),
            stored_events: q(include_str!("../queries/append/stored_events.sql")),
            append_group: q("SELECT r_outcome, r_version, r_positions \
                 FROM {schema}.append_group($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"),
            event_positions: q(
                "SELECT id, position FROM {schema}.events WHERE id = ANY ($1::uuid[])",
            ),
            stream_version: q("SELECT version FROM {schema}.streams WHERE name = $1::text"),
            lock_stream: q("SELECT version FROM {schema}.streams WHERE name = $1::text FOR UPDATE"),
            delete_stream: q(include_str!("../queries/append/delete_stream.sql")),
            event: q(
                "SELECT position, id, type, stream, version, recorded_at, data::text AS data, \
                 correlation_id, causation_id, headers::text AS headers \
                 FROM {schema}.events WHERE id = $1::uuid",
            ),
            read_forward: q(include_str!("../queries/read/stream_forward.sql")),
            read_backward: q(include_str!("../queries/read/stream_backward.sql")),
            read_all: q(include_str!("../queries/read/all.sql")),
            read_all_filtered: q(include_str!("../queries/read/all_filtered.sql")),
            head: q(include_str!("../queries/read/head.sql")),
            streams: q(include_str!("../queries/read/streams.sql")),
            stream_info: q(include_str!("../queries/read/stream_info.sql")),
            notify: format!("SELECT pg_notify('{channel}', '')"),
            notify_async: format!(
                "BEGIN; SET LOCAL synchronous_commit TO off; \
                 SELECT pg_notify('{channel}', ''); COMMIT;"
            ),
            probe: q(include_str!("../queries/read/probe.sql")),
            holders: q(include_str!("../queries/read/holders.sql")),
            checkpoint_load: q(
                "SELECT position FROM {schema}.checkpoints WHERE subscriber = $1::text",
            ),
            checkpoint_save: q(include_str!("../queries/checkpoints/save.sql")),
            checkpoint_reset: q("DELETE FROM {schema}.checkpoints WHERE subscriber = $1::text"),
            enabled_load: q(
                "SELECT enabled FROM {schema}.subscriber_states WHERE subscriber = $1::text",
            ),
            enabled_save: q(include_str!("../queries/checkpoints/save_enabled.sql")),
            retry_schedule: q(include_str!("../queries/retries/schedule.sql")),
            retry_list: q("SELECT event_id, position, errors::text AS errors, due \
                 FROM {schema}.scheduled_retries WHERE subscriber = $1::text \
                 ORDER BY position, event_id"),
            retry_clear: q("DELETE FROM {schema}.scheduled_retries \
                 WHERE subscriber = $1::text AND event_id = $2::uuid"),
            ledger_contains: q("SELECT EXISTS (SELECT 1 FROM {schema}.ledger \
                 WHERE subscriber = $1::text AND event_id = $2::uuid)"),
            ledger_insert: q(
                "INSERT INTO {schema}.ledger (subscriber, event_id, handled_at) \
                 VALUES ($1::text, $2::uuid, now()) \
                 ON CONFLICT (subscriber, event_id) DO NOTHING",
            ),
            dead_letter_record: q(include_str!("../queries/dead_letters/record.sql")),
            dead_letter_list: q(include_str!("../queries/dead_letters/list.sql")),
            dead_letter_get: q(&format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {{schema}}.dead_letters WHERE id = $1::uuid"
            )),
            dead_letter_remove: q(&format!(
                "DELETE FROM {{schema}}.dead_letters WHERE id = $1::uuid \
                 RETURNING {DEAD_LETTER_COLUMNS}"
            )),
            dead_letter_counts: q(
                "SELECT subscriber, count(*) FROM {schema}.dead_letters GROUP BY subscriber",
            ),
            dead_letter_purge: q(
                "DELETE FROM {schema}.dead_letters WHERE last_failed_at < $1::timestamptz",
            ),
            channel,
        }
    }
}

/// A POSIX regular expression that PostgreSQL's `~` matches against an
/// event type exactly when `pattern` (AMQP rules) does.
///
/// The type is matched with a `.` put before it, so that every segment is
/// `\.segment`: `*` is one segment, `#` zero or more. Literal segments hold
/// only ASCII letters, digits, `_` and `-`, none of them special.
pub(crate) fn pattern_regex(pattern: &str) -> String {
    let mut regex = String::from("^");
    for segment in pattern.split('.') {
        match segment {
            "*" => regex.push_str(r"\.[^.]+"),
            "#" => regex.push_str(r"(\.[^.]+)*"),
            literal => {
                regex.push_str(r"\.");
                regex.push_str(literal);
            }
        }
    }
    regex.push('$');
    regex
}

#[cfg(test)]
mod tests {
    use super::pattern_regex;

    #[test]
    fn patterns_become_anchored_regexes() {
        assert_eq!(pattern_regex("order.*"), r"^\.order\.[^.]+$");
        assert_eq!(pattern_regex("a.#.b"), r"^\.a(\.[^.]+)*\.b$");
        assert_eq!(pattern_regex("#"), r"^(\.[^.]+)*$");
    }
}
