-- Whether each durable subscriber is enabled, so that a subscriber disabled
-- in one process stays disabled after a restart and in every process
-- sharing the file. A subscriber without a row has never been saved.
CREATE TABLE subscriber_states (
    subscriber TEXT    PRIMARY KEY NOT NULL,
    enabled    INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    -- microseconds since the Unix epoch
    saved_at   INTEGER NOT NULL
) WITHOUT ROWID;
