-- A stream's entries from version $2 up, at most $3: its own events and its
-- links, merged by version. Links to deleted events are gone (holes).
SELECT * FROM (
    (SELECT e.version AS at, false AS linked, e.position, e.id, e.type, e.stream, e.version,
        e.recorded_at, e.data::text AS data, e.correlation_id, e.causation_id,
        e.headers::text AS headers
    FROM {schema}.events AS e
    WHERE e.stream = $1::text AND e.version >= $2::bigint
    ORDER BY e.version
    LIMIT $3::bigint)
    UNION ALL
    (SELECT l.version, true, e.position, e.id, e.type, e.stream, e.version,
        e.recorded_at, e.data::text, e.correlation_id, e.causation_id, e.headers::text
    FROM {schema}.links AS l
    JOIN {schema}.events AS e ON e.position = l.position
    WHERE l.stream = $1::text AND l.version >= $2::bigint
    ORDER BY l.version
    LIMIT $3::bigint)
) AS entries
ORDER BY at
LIMIT $3::bigint
