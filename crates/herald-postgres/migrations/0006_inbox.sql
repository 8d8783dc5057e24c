-- The inbox: the events each subscriber handled, each row written in the
-- same transaction as the handler's own writes. The primary key is what
-- makes a second delivery of an event wait for the first and then find it
-- handled.
CREATE TABLE inbox (
    subscriber text COLLATE "C" NOT NULL,
    event_id uuid NOT NULL,
    handled_at timestamptz NOT NULL,
    PRIMARY KEY (subscriber, event_id)
);
