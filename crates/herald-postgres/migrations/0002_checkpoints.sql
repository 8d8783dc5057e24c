-- Where durable subscribers are in the global log: the position up to which
-- each has handled (or dead-lettered) every event it matches.
CREATE TABLE checkpoints (
    subscriber text PRIMARY KEY,
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL
);
