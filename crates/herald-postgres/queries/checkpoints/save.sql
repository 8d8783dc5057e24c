-- Saves subscriber $1's checkpoint $2, replacing the one it had.
INSERT INTO {schema}.checkpoints (subscriber, position, updated_at)
VALUES ($1::text, $2::bigint, now())
ON CONFLICT (subscriber)
DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
