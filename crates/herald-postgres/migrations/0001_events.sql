-- Events, streams and links. The runner sets search_path to the store's
-- schema, so names here are unqualified.

-- Global positions. Never reused: a rolled-back append leaves a gap, and so
-- does a deleted event (see `erased`).
CREATE SEQUENCE event_positions AS bigint MINVALUE 1 NO CYCLE;

-- One row per stream that holds or held events; deleted with the stream.
-- `version` is the version of the last entry (links included), so holes left
-- by deleted linked events never lower it. COLLATE "C" sorts names by bytes,
-- as Rust does.
CREATE TABLE streams (
    name text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL,
    first_recorded_at timestamptz NOT NULL,
    last_recorded_at timestamptz NOT NULL
);

-- Every event, once, in the stream it was appended to. `data` is `json`, not
-- `jsonb`: it keeps the payload's text byte for byte.
CREATE TABLE events (
    position bigint PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    type text COLLATE "C" NOT NULL,
    stream text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    recorded_at timestamptz NOT NULL,
    data json NOT NULL,
    correlation_id uuid NOT NULL,
    causation_id uuid,
    headers jsonb,
    UNIQUE (stream, version)
);

-- Links: an existing event at a version of another stream. Deleting the
-- event deletes its links, which leaves holes in the linking streams.
CREATE TABLE links (
    stream text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    position bigint NOT NULL REFERENCES events (position) ON DELETE CASCADE,
    PRIMARY KEY (stream, version)
);
CREATE INDEX links_position ON links (position);

-- Positions of deleted events, so that readers of the global log know the
-- gap they leave is final (see the watermark in the crate docs).
CREATE TABLE erased (
    position bigint PRIMARY KEY
);
