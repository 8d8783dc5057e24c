-- Creates the stream, or writes nothing if it exists (or if one of the given
-- ids is stored already). A concurrent creator makes this wait for its
-- commit, then do nothing.
-- $4, the expected version, is always null here: it keeps the parameters of
-- the three stream_* statements alike.
INSERT INTO {schema}.streams AS s (name, version, first_recorded_at, last_recorded_at)
SELECT $1::text, $2::bigint - 1, c.now, c.now
FROM (SELECT clock_timestamp() AS now) AS c
WHERE $4::bigint IS NULL
    AND NOT EXISTS (SELECT 1 FROM {schema}.events WHERE id = ANY ($3::uuid[]))
ON CONFLICT (name) DO NOTHING
RETURNING s.version, s.last_recorded_at
