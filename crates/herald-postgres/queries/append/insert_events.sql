-- Follows `WITH s AS (<one of the stream_* statements>)`: inserts the batch
-- in one statement, positions from the sequence in batch order, versions
-- ending at the stream's new version. Inserts nothing when `s` returned no
-- row (a conflict).
INSERT INTO {schema}.events
    (position, id, type, stream, version, recorded_at, data, correlation_id, causation_id, headers)
SELECT nextval('{schema}.event_positions'), u.id, u.type, $1::text, s.version - $2::bigint + u.ord,
    s.last_recorded_at, u.data::json, u.correlation_id, u.causation_id, u.headers::jsonb
FROM s, unnest($5::uuid[], $6::text[], $7::text[], $8::uuid[], $9::uuid[], $10::text[])
    WITH ORDINALITY AS u (id, type, data, correlation_id, causation_id, headers, ord)
ORDER BY u.ord
RETURNING position, version
