-- Whether each durable subscriber is enabled, so that a subscriber disabled
-- in one process stays disabled after a restart and in every process
-- sharing the schema. A subscriber without a row has never been saved.
CREATE TABLE subscriber_states (
    subscriber text PRIMARY KEY,
    enabled boolean NOT NULL,
    updated_at timestamptz NOT NULL
);
