-- The positions after $1 (events and erased positions, at most $2), in
-- order, each with the snapshot's xmin (computed once), to find the head.
SELECT (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint) AS xmin, x.position
FROM (
    (SELECT position FROM {schema}.events WHERE position > $1::bigint
        ORDER BY position LIMIT $2::bigint)
    UNION ALL
    (SELECT position FROM {schema}.erased WHERE position > $1::bigint
        ORDER BY position LIMIT $2::bigint)
) AS x
ORDER BY x.position
LIMIT $2::bigint
