-- The event log, streams and links.
--
-- Times are microseconds since the Unix epoch (UTC). Payloads and metadata
-- are JSON text, stored exactly as given.

-- Every event, once, in the order of the global log. AUTOINCREMENT keeps a
-- high-water mark in sqlite_sequence, so a position is never given out
-- twice, even after the events holding the highest positions are deleted.
CREATE TABLE events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The event id: a UUID as its 16 bytes.
    id          BLOB    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    -- The stream the event was appended to, and its version there.
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    data        TEXT    NOT NULL,
    metadata    TEXT    NOT NULL
);

-- read_stream over the events appended to a stream.
CREATE UNIQUE INDEX events_stream_version ON events (stream, version);

-- read_all filtered by exact event types.
CREATE INDEX events_type_position ON events (type, position);

-- One row per stream: its version (that of its last entry, holes
-- included), how many entries are not holes, and its first and last times.
CREATE TABLE streams (
    name              TEXT    PRIMARY KEY NOT NULL,
    version           INTEGER NOT NULL,
    count             INTEGER NOT NULL,
    first_recorded_at INTEGER NOT NULL,
    last_recorded_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Links: events shown in a stream other than (or again in) the one they were
-- appended to. A NULL position is a hole, left where the linked event was
-- deleted with its stream; later versions do not move.
CREATE TABLE stream_entries (
    stream   TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    position INTEGER,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;

-- Finding the links to the events of a stream that is being deleted.
CREATE INDEX stream_entries_position ON stream_entries (position);
