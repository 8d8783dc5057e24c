-- A watermark mark (see watermark.rs), in this order: the position
-- sequence's last value; a fresh transaction id; the transactions that hold
-- the lock appends take on the events table. In a transaction that is
-- rolled back (it wrote nothing, so that costs no flush to disk).
BEGIN;
SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {schema}.event_positions;
SELECT pg_current_xact_id()::text::bigint;
SELECT coalesce(string_agg(virtualtransaction, ','), '')
FROM pg_locks
WHERE locktype = 'relation' AND mode = 'RowExclusiveLock'
    AND relation = '{schema}.events'::regclass;
ROLLBACK;
