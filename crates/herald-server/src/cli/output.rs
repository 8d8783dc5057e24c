//! How results are shown: readable tables by default, JSON with `--json`.

use std::io::{IsTerminal, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::{ContentArrangement, Table, presets};
use herald::store::StreamInfo;
use herald::{DeadLetter, RecordedEvent};
use serde::Serialize;
use serde_json::Value;

use super::client::{CliError, Published, Subscription};

/// How wide a payload preview in a table may be, in characters.
const PREVIEW: usize = 60;

/// Where and how a command writes its results.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    /// JSON instead of tables.
    pub(crate) json: bool,
}

impl Output {
    /// Whether progress bars may be drawn: a terminal on stdout and no
    /// `--json`.
    pub(crate) fn interactive(self) -> bool {
        !self.json && std::io::stdout().is_terminal()
    }

    /// Writes `value` as pretty JSON.
    pub(crate) fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
        writeln!(out)?;
        Ok(())
    }

    /// Writes `value` as one line of JSON (for feeds: one event a line).
    pub(crate) fn json_line<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, value).map_err(std::io::Error::from)?;
        writeln!(out)?;
        out.flush()?;
        Ok(())
    }

    /// Writes a line of text.
    pub(crate) fn line(self, text: impl std::fmt::Display) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()?;
        Ok(())
    }

    /// Writes `value` as JSON, or `text()` as lines.
    pub(crate) fn either<T: Serialize + ?Sized>(
        self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        if self.json {
            self.json(value)
        } else {
            self.line(text())
        }
    }
}

/// A table's text, without the padding at the ends of lines.
fn render(table: &Table) -> String {
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    table
}

/// A time as `2024-05-01T12:00:00.123Z`.
pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Compact JSON, cut to `max` characters.
pub(crate) fn preview(value: &Value, max: usize) -> String {
    let text = value.to_string();
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Events as a table.
pub(crate) fn events_table(events: &[RecordedEvent]) -> String {
    let mut t = table(&[
        "POSITION",
        "STREAM",
        "VERSION",
        "TYPE",
        "ID",
        "RECORDED AT",
        "DATA",
    ]);
    for e in events {
        t.add_row(vec![
            opt(e.position()),
            e.stream().unwrap_or("-").to_owned(),
            opt(e.version()),
            e.event_type().to_owned(),
            e.id().to_string(),
            time(e.recorded_at()),
            preview(&e.data().to_value(), PREVIEW),
        ]);
    }
    render(&t)
}

/// One event on one line, for a live feed.
pub(crate) fn event_line(e: &RecordedEvent) -> String {
    format!(
        "{:>8}  {}  {}  {}@{}  {}  {}",
        opt(e.position()),
        time(e.recorded_at()),
        e.event_type(),
        e.stream().unwrap_or("-"),
        opt(e.version()),
        e.id(),
        preview(&e.data().to_value(), 200),
    )
}

/// What a publish did.
pub(crate) fn published_text(published: &Published) -> String {
    let mut t = table(&["ID", "STREAM", "VERSION", "POSITION"]);
    for e in &published.events {
        t.add_row(vec![
            e.id.to_string(),
            e.stream
                .clone()
                .or_else(|| published.stream.clone())
                .unwrap_or_else(|| "-".to_owned()),
            opt(e.version),
            opt(e.position),
        ]);
    }
    render(&t)
}

/// Streams as a table.
pub(crate) fn streams_table(streams: &[StreamInfo]) -> String {
    let mut t = table(&[
        "STREAM",
        "VERSION",
        "EVENTS",
        "FIRST RECORDED",
        "LAST RECORDED",
    ]);
    for s in streams {
        t.add_row(vec![
            s.stream.to_string(),
            s.version.to_string(),
            s.count.to_string(),
            time(s.first_recorded_at),
            time(s.last_recorded_at),
        ]);
    }
    render(&t)
}

/// Dead letters as a table.
pub(crate) fn dead_letters_table(letters: &[DeadLetter]) -> String {
    let mut t = table(&[
        "ID",
        "SUBSCRIBER",
        "TYPE",
        "EVENT",
        "ATTEMPTS",
        "LAST FAILED",
        "REASON",
    ]);
    for l in letters {
        t.add_row(vec![
            l.id.to_string(),
            l.subscriber.clone(),
            l.event.event_type().to_owned(),
            l.event.id().to_string(),
            l.attempts.to_string(),
            time(l.last_failed_at),
            preview(&Value::String(l.reason.clone()), PREVIEW)
                .trim_matches('"')
                .to_owned(),
        ]);
    }
    render(&t)
}

/// One dead letter in full: its fields, every attempt's error, the event.
pub(crate) fn dead_letter_text(l: &DeadLetter) -> String {
    let mut text = String::new();
    let mut t = table(&["FIELD", "VALUE"]);
    t.add_row(vec!["id".to_owned(), l.id.to_string()]);
    t.add_row(vec!["subscriber".to_owned(), l.subscriber.clone()]);
    t.add_row(vec!["attempts".to_owned(), l.attempts.to_string()]);
    t.add_row(vec!["reason".to_owned(), l.reason.clone()]);
    t.add_row(vec!["first failed".to_owned(), time(l.first_failed_at)]);
    t.add_row(vec!["last failed".to_owned(), time(l.last_failed_at)]);
    text.push_str(&render(&t));
    text.push_str("\n\nerrors:\n");
    for (i, e) in l.errors.iter().enumerate() {
        let e = serde_json::to_value(e).unwrap_or(Value::Null);
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        text.push_str(&format!("  {}. {message}\n", i + 1));
    }
    text.push_str("\nevent:\n");
    text.push_str(&event_text(&l.event));
    text
}

/// One event in full, payload and metadata pretty-printed.
pub(crate) fn event_text(e: &RecordedEvent) -> String {
    let mut t = table(&["FIELD", "VALUE"]);
    t.add_row(vec!["id".to_owned(), e.id().to_string()]);
    t.add_row(vec!["type".to_owned(), e.event_type().to_owned()]);
    t.add_row(vec![
        "stream".to_owned(),
        e.stream().unwrap_or("-").to_owned(),
    ]);
    t.add_row(vec!["version".to_owned(), opt(e.version())]);
    t.add_row(vec!["position".to_owned(), opt(e.position())]);
    t.add_row(vec!["recorded at".to_owned(), time(e.recorded_at())]);
    let data = serde_json::to_string_pretty(&e.data().to_value()).unwrap_or_default();
    let metadata = serde_json::to_string_pretty(e.metadata()).unwrap_or_default();
    format!("{}\n\ndata:\n{data}\n\nmetadata:\n{metadata}", render(&t))
}

/// Subscribers as a table, with the fields the server reports.
pub(crate) fn subscriptions_table(subs: &[Subscription]) -> String {
    let mut t = table(&["NAME", "TOPICS", "URL", "STATUS", "CHECKPOINT", "LAG"]);
    for s in subs {
        let field = |name: &str| match s.0.get(name) {
            None | Some(Value::Null) => "-".to_owned(),
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            Some(other) => other.to_string(),
        };
        let status = if s.0.contains_key("status") {
            field("status")
        } else {
            field("state")
        };
        t.add_row(vec![
            s.name().to_owned(),
            field("topics"),
            field("url"),
            status,
            opt(s.checkpoint()),
            opt(s.lag()),
        ]);
    }
    render(&t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn previews_cut_long_payloads() {
        assert_eq!(preview(&json!({"a": 1}), 10), r#"{"a":1}"#);
        let cut = preview(&json!({"text": "x".repeat(100)}), 20);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.ends_with('…'));
    }
}
