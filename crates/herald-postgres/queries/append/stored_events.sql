-- The stored events among the ids of an append, to tell an idempotent repeat
-- from a duplicate.
SELECT position, id, type, stream, version, recorded_at, data::text AS data,
    correlation_id, causation_id, headers::text AS headers
FROM {schema}.events
WHERE id = ANY ($1::uuid[])
