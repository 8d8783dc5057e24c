-- Where durable subscribers are in the global log: the position up to which
-- each has handled (or dead-lettered) every event it matches.
CREATE TABLE checkpoints (
    subscriber TEXT    PRIMARY KEY NOT NULL,
    position   INTEGER NOT NULL,
    -- microseconds since the Unix epoch
    saved_at   INTEGER NOT NULL
) WITHOUT ROWID;
