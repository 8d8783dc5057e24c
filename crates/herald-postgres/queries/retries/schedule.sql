-- Saves subscriber $1's retry of event $2 (at position $3, its errors $4,
-- due at $5), replacing the one it had for the event.
INSERT INTO {schema}.scheduled_retries (subscriber, event_id, position, errors, due)
VALUES ($1::text, $2::uuid, $3::bigint, $4::jsonb, $5::timestamptz)
ON CONFLICT (subscriber, event_id)
DO UPDATE SET position = excluded.position, errors = excluded.errors, due = excluded.due
