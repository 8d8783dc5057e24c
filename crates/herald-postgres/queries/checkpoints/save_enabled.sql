-- Saves whether subscriber $1 is enabled ($2), replacing what it had.
INSERT INTO {schema}.subscriber_states (subscriber, enabled, updated_at)
VALUES ($1::text, $2::boolean, now())
ON CONFLICT (subscriber)
DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at
