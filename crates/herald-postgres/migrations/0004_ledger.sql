-- The idempotency ledger: which events each subscriber handled.
CREATE TABLE ledger (
    subscriber text COLLATE "C" NOT NULL,
    event_id uuid NOT NULL,
    handled_at timestamptz NOT NULL,
    PRIMARY KEY (subscriber, event_id)
);
