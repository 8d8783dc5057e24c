-- Dead letters oldest first (by first failure), whose last failure is in
-- [?1, ?2), microseconds.
SELECT id, subscriber, event, attempts, reason, errors, first_failed_at, last_failed_at
FROM dead_letters
WHERE last_failed_at >= ?1 AND last_failed_at < ?2
ORDER BY first_failed_at, id
