-- As all.sql, for a filtered read: events that do not pass the filters (type
-- equal to one of $3, or `.type` matching one of the regexes $4; recorded in
-- [$5, $6)) come back with `present` false and their other columns null, as
-- the watermark needs their positions only.
SELECT (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint) AS xmin,
    x.present, x.position,
    CASE WHEN x.present THEN x.id END AS id, x.type, x.stream, x.version, x.recorded_at,
    CASE WHEN x.present THEN x.data END AS data, x.correlation_id, x.causation_id,
    CASE WHEN x.present THEN x.headers END AS headers
FROM (
    SELECT m.*, m.event
        AND ((cardinality($3::text[]) = 0 AND cardinality($4::text[]) = 0)
            OR m.type = ANY ($3::text[]) OR ('.' || m.type) ~ ANY ($4::text[]))
        AND ($5::timestamptz IS NULL OR m.recorded_at >= $5::timestamptz)
        AND ($6::timestamptz IS NULL OR m.recorded_at < $6::timestamptz) AS present
    FROM (
        (SELECT true AS event, e.position, e.id, e.type, e.stream, e.version, e.recorded_at,
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
    ) AS m
    ORDER BY m.position
    LIMIT $2::bigint
) AS x
ORDER BY x.position
