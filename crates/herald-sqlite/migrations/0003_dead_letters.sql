-- Dead letters: events a subscriber gave up on, kept to inspect, retry or
-- discard.
--
-- One row per subscriber and event: the same event failing again for the
-- same subscriber updates its row (attempts added, errors appended, reason
-- and last_failed_at updated), keeping its id and first_failed_at. Times are
-- microseconds since the Unix epoch (UTC).
CREATE TABLE dead_letters (
    -- The dead letter's id: a UUID as its 16 bytes.
    id              BLOB    PRIMARY KEY NOT NULL,
    subscriber      TEXT    NOT NULL,
    -- The event's id: a UUID as its 16 bytes.
    event_id        BLOB    NOT NULL,
    -- The recorded event, as its JSON.
    event           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    -- Every failed attempt's error, oldest first, as a JSON array.
    errors          TEXT    NOT NULL,
    first_failed_at INTEGER NOT NULL,
    last_failed_at  INTEGER NOT NULL,
    UNIQUE (subscriber, event_id)
);

-- Listing oldest first, for everyone or for one subscriber.
CREATE INDEX dead_letters_first_failed ON dead_letters (first_failed_at, id);
CREATE INDEX dead_letters_subscriber ON dead_letters (subscriber, first_failed_at, id);

-- Retention: removing the dead letters whose last failure is old.
CREATE INDEX dead_letters_last_failed ON dead_letters (last_failed_at);
