-- Records a failure: a new dead letter ($1 its id), or, when subscriber $2
-- has one for event $3 already, adds the attempts (saturating at u32::MAX),
-- appends the errors and updates the reason and the last failure, keeping
-- its id, event and first failure.
INSERT INTO {schema}.dead_letters AS d
    (id, subscriber, event_id, event, attempts, reason, errors, first_failed_at, last_failed_at)
VALUES ($1::uuid, $2::text, $3::uuid, $4::json, $5::bigint, $6::text, $7::jsonb,
        $8::timestamptz, $9::timestamptz)
ON CONFLICT (subscriber, event_id) DO UPDATE SET
    attempts = least(d.attempts + excluded.attempts, 4294967295),
    errors = d.errors || excluded.errors,
    reason = excluded.reason,
    last_failed_at = excluded.last_failed_at
RETURNING id, subscriber, event::text AS event, attempts, reason, errors::text AS errors,
    first_failed_at, last_failed_at
