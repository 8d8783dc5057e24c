-- Follows `WITH s AS (<one of the stream_* statements>)`: links the events at
-- positions $5, in order, at the stream's next versions.
INSERT INTO {schema}.links (stream, version, position)
SELECT $1::text, s.version - $2::bigint + u.ord, u.position
FROM s, unnest($5::bigint[]) WITH ORDINALITY AS u (position, ord)
RETURNING version
