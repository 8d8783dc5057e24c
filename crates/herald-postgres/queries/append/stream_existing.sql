-- Moves an existing stream's version on by $2 events if it is at version $4
-- (any version when $4 is null). UPDATE waits for a concurrent writer of the
-- row and then checks the version it committed, so of N writers racing with
-- the same expected version exactly one wins.
UPDATE {schema}.streams AS s
SET version = s.version + $2::bigint, last_recorded_at = clock_timestamp()
WHERE s.name = $1::text
    AND s.version = coalesce($4::bigint, s.version)
    AND NOT EXISTS (SELECT 1 FROM {schema}.events WHERE id = ANY ($3::uuid[]))
RETURNING s.version, s.last_recorded_at
