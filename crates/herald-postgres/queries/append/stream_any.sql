-- Creates the stream or moves its version on by $2 events, taking its row
-- lock for the rest of the transaction. Writes nothing when one of the given
-- ids ($3) is stored already: the caller then finds out why.
-- $4, the expected version, is always null here: it keeps the parameters of
-- the three stream_* statements alike.
INSERT INTO {schema}.streams AS s (name, version, first_recorded_at, last_recorded_at)
SELECT $1::text, $2::bigint - 1, c.now, c.now
FROM (SELECT clock_timestamp() AS now) AS c
WHERE $4::bigint IS NULL
    AND NOT EXISTS (SELECT 1 FROM {schema}.events WHERE id = ANY ($3::uuid[]))
ON CONFLICT (name) DO UPDATE
    SET version = s.version + $2::bigint, last_recorded_at = excluded.last_recorded_at
RETURNING s.version, s.last_recorded_at
