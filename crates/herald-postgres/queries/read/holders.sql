-- How many of the transactions $1 (virtual ids) still hold the lock appends
-- take on the events table.
SELECT count(*)
FROM pg_locks
WHERE locktype = 'relation' AND mode = 'RowExclusiveLock'
    AND relation = '{schema}.events'::regclass
    AND virtualtransaction = ANY ($1::text[])
