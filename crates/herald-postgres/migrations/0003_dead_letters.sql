-- Dead letters: events a subscriber gave up on, kept to inspect, retry or
-- discard.
--
-- One row per subscriber and event: the same event failing again for the
-- same subscriber updates its row (attempts added, errors appended, reason
-- and last_failed_at updated), keeping its id and first_failed_at.
CREATE TABLE dead_letters (
    id uuid PRIMARY KEY,
    subscriber text COLLATE "C" NOT NULL,
    event_id uuid NOT NULL,
    -- The recorded event as its JSON; `json` keeps the text byte for byte.
    event json NOT NULL,
    -- A u32, saturating.
    attempts bigint NOT NULL,
    reason text NOT NULL,
    -- Every failed attempt's error, oldest first: a JSON array.
    errors jsonb NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at timestamptz NOT NULL,
    UNIQUE (subscriber, event_id)
);

-- Listing oldest first, for everyone or for one subscriber.
CREATE INDEX dead_letters_first_failed ON dead_letters (first_failed_at, id);
CREATE INDEX dead_letters_subscriber ON dead_letters (subscriber, first_failed_at, id);
