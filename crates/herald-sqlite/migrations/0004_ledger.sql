-- The idempotency ledger: which events each subscriber handled.
CREATE TABLE ledger (
    subscriber TEXT    NOT NULL,
    -- The event's id: a UUID as its 16 bytes.
    event_id   BLOB    NOT NULL,
    -- microseconds since the Unix epoch
    handled_at INTEGER NOT NULL,
    PRIMARY KEY (subscriber, event_id)
) WITHOUT ROWID;
