-- A watermark mark (see watermark.rs): the position sequence's last value,
-- then a fresh transaction id, in that order, in a transaction that is
-- rolled back (it wrote nothing, so that costs no flush to disk).
BEGIN;
SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {schema}.event_positions;
SELECT pg_current_xact_id()::text::bigint;
ROLLBACK;
