-- What the store knows of one stream.
SELECT s.name, s.version, s.first_recorded_at, s.last_recorded_at,
    (SELECT count(*) FROM {schema}.events AS e WHERE e.stream = s.name)
        + (SELECT count(*) FROM {schema}.links AS l WHERE l.stream = s.name) AS count
FROM {schema}.streams AS s
WHERE s.name = $1::text
