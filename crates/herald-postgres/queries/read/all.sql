-- One batch of the global log after position $1: up to $2 positions, each an
-- event or an erased (deleted) position, with whether the event passes the
-- filters (type equal to one of $3, or `.type` matching one of the regexes
-- $4; recorded in [$5, $6)). Payloads of events that do not pass are left
-- out.
--
-- Every row also carries the snapshot's xmin, which the watermark needs (see
-- watermark.rs); with no row after $1, one row of it alone comes back.
SELECT m.xmin, b.present, b.matched, b.position, b.id, b.type,
    b.stream, b.version, b.recorded_at, b.data, b.correlation_id, b.causation_id, b.headers
FROM (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin
) AS m
LEFT JOIN LATERAL (
    SELECT f.*,
        CASE WHEN f.matched THEN f.full_data END AS data,
        CASE WHEN f.matched THEN f.full_headers END AS headers
    FROM (
        SELECT x.*,
            x.present
                AND ((cardinality($3::text[]) = 0 AND cardinality($4::text[]) = 0)
                    OR x.type = ANY ($3::text[]) OR ('.' || x.type) ~ ANY ($4::text[]))
                AND ($5::timestamptz IS NULL OR x.recorded_at >= $5::timestamptz)
                AND ($6::timestamptz IS NULL OR x.recorded_at < $6::timestamptz) AS matched
        FROM (
            (SELECT e.position, true AS present, e.id, e.type, e.stream, e.version,
                e.recorded_at, e.data::text AS full_data, e.correlation_id, e.causation_id,
                e.headers::text AS full_headers
            FROM {schema}.events AS e
            WHERE e.position > $1::bigint
            ORDER BY e.position
            LIMIT $2::bigint)
            UNION ALL
            (SELECT r.position, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
            FROM {schema}.erased AS r
            WHERE r.position > $1::bigint
            ORDER BY r.position
            LIMIT $2::bigint)
        ) AS x
        ORDER BY x.position
        LIMIT $2::bigint
    ) AS f
) AS b ON true
ORDER BY b.position
