-- One batch of the global log after position $1: up to $2 positions, each an
-- event or an erased (deleted) position (`present` false, other columns
-- null), in position order. The first column is the snapshot's xmin, which
-- the watermark needs (see watermark.rs); it is computed once.
SELECT (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint) AS xmin, x.*
FROM (
    (SELECT true AS present, e.position, e.id, e.type, e.stream, e.version, e.recorded_at,
        e.data::text AS data, e.correlation_id, e.causation_id, e.headers::text AS headers
    FROM {schema}.events AS e
    WHERE e.position > $1::bigint
    ORDER BY e.position
    LIMIT $2::bigint)
    UNION ALL
    (SELECT false, r.position, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM {schema}.erased AS r
    WHERE r.position > $1::bigint
    ORDER BY r.position
    LIMIT $2::bigint)
) AS x
ORDER BY x.position
LIMIT $2::bigint
