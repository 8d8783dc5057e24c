-- Durable subscribers' failed deliveries that wait for their next attempt:
-- one row per subscriber and event, replaced when the event is scheduled
-- again, removed when it is retried for good or given up on. Times are
-- microseconds since the Unix epoch (UTC).
CREATE TABLE scheduled_retries (
    subscriber TEXT    NOT NULL,
    -- The event's id: a UUID as its 16 bytes.
    event_id   BLOB    NOT NULL,
    -- The event's position in the global log.
    position   INTEGER NOT NULL,
    -- Every failed attempt's error, oldest first, as a JSON array.
    errors     TEXT    NOT NULL,
    -- When the next attempt is due.
    due        INTEGER NOT NULL,
    PRIMARY KEY (subscriber, event_id)
) WITHOUT ROWID;

-- Listing a subscriber's retries by position.
CREATE INDEX scheduled_retries_position ON scheduled_retries (subscriber, position);
