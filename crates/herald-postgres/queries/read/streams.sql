-- Stream info for streams after $1 (by name, bytewise), starting with $2, at
-- most $3. The count takes links (but not holes) into account.
SELECT s.name, s.version, s.first_recorded_at, s.last_recorded_at,
    (SELECT count(*) FROM {schema}.events AS e WHERE e.stream = s.name)
        + (SELECT count(*) FROM {schema}.links AS l WHERE l.stream = s.name) AS count
FROM {schema}.streams AS s
WHERE ($1::text IS NULL OR s.name > $1::text)
    AND ($2::text IS NULL OR (s.name >= $2::text AND starts_with(s.name, $2::text)))
ORDER BY s.name
LIMIT $3::bigint
