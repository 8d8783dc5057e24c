-- Dead letters oldest first (by first failure, then id), of subscriber $1
-- (every subscriber's when null), whose last failure is at or after $2 and
-- before $3 (either bound open when null).
SELECT id, subscriber, event::text AS event, attempts, reason, errors::text AS errors,
    first_failed_at, last_failed_at
FROM {schema}.dead_letters
WHERE ($1::text IS NULL OR subscriber = $1::text)
  AND ($2::timestamptz IS NULL OR last_failed_at >= $2::timestamptz)
  AND ($3::timestamptz IS NULL OR last_failed_at < $3::timestamptz)
ORDER BY first_failed_at, id
