-- Durable subscribers' failed deliveries that wait for their next attempt:
-- one row per subscriber and event, replaced when the event is scheduled
-- again, removed when it is retried for good or given up on.
CREATE TABLE scheduled_retries (
    subscriber text COLLATE "C" NOT NULL,
    event_id uuid NOT NULL,
    -- The event's position in the global log.
    position bigint NOT NULL,
    -- Every failed attempt's error, oldest first: a JSON array.
    errors jsonb NOT NULL,
    -- When the next attempt is due.
    due timestamptz NOT NULL,
    PRIMARY KEY (subscriber, event_id)
);

-- Listing a subscriber's retries by position.
CREATE INDEX scheduled_retries_position ON scheduled_retries (subscriber, position);
