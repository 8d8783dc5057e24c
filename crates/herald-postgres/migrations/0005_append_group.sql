-- Coalesced appends: one call applies a group of independent appends, each
-- in its own subtransaction, and commits them together (one round trip, one
-- flush to disk). The store calls it with the appends of concurrent callers.
--
-- Append i writes stream p_streams[i] with the expectation
-- p_expected_kinds[i] (0 any, 1 no stream, 2 the stream exists, 3 exactly
-- version p_expected_versions[i]); its p_counts[i] events are the next
-- p_counts[i] entries of the event arrays. p_given says which event ids the
-- caller gave (only those can be stored already).
--
-- One row per append, in order, says how it ended:
--   0 written: r_version is the stream's new version, r_positions the
--     events' positions in order;
--   1 wrong expected version: r_version is the stream's version (null: no
--     stream); nothing written;
--   2 a given id is stored already: nothing written; the caller finds out
--     whether it is an idempotent repeat;
--   3 lost a race without a verdict (a concurrent writer stored one of the
--     ids, or deleted the stream): nothing written; the caller starts again;
--   4 failed: r_detail holds the SQLSTATE and message; nothing written.
-- Only the failing append's subtransaction rolls back, so one append's
-- conflict or error never fails the others.
--
-- Each append writes its stream's row before it draws a position, as a
-- single append does, so the transaction holds its id (and the lock on
-- `events`) before any of its positions exists: the watermark's reasoning
-- holds unchanged. The store sorts a group by stream name, so groups in
-- flight together lock streams in one order and never deadlock.
--
-- A group never waits more than 100 ms for a lock (lock_timeout, for this
-- transaction only): an append whose stream is held longer (by an outbox
-- transaction, say) fails here with lock_not_available and the caller
-- appends it alone, so it does not hold up the rest of its group.
--
-- SET search_path FROM CURRENT binds the names below to this schema (the
-- migration runs with search_path set to it), so the function runs
-- correctly on any connection.
CREATE FUNCTION append_group(
    p_streams text[],
    p_expected_kinds smallint[],
    p_expected_versions bigint[],
    p_counts integer[],
    p_ids uuid[],
    p_given boolean[],
    p_types text[],
    p_data text[],
    p_correlation_ids uuid[],
    p_causation_ids uuid[],
    p_headers text[]
)
RETURNS TABLE (r_outcome smallint, r_version bigint, r_positions bigint[], r_detail text)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    first integer := 1;
    last integer;
    n bigint;
    stream_name text;
    current_version bigint;
    recorded timestamptz;
BEGIN
    PERFORM set_config('lock_timeout', '100ms', true);
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        n := p_counts[i];
        last := first + p_counts[i] - 1;
        stream_name := p_streams[i];
        r_outcome := 0;
        r_version := NULL;
        r_positions := NULL;
        r_detail := NULL;
        BEGIN
            IF true = ANY (p_given[first:last]) AND EXISTS (
                SELECT 1 FROM events e
                WHERE e.id = ANY (ARRAY(
                    SELECT u.id FROM unnest(p_ids[first:last], p_given[first:last]) AS u (id, given)
                    WHERE u.given
                ))
            ) THEN
                r_outcome := 2;
            ELSIF p_expected_kinds[i] = 0 THEN
                INSERT INTO streams AS s (name, version, first_recorded_at, last_recorded_at)
                SELECT stream_name, n - 1, c.now, c.now
                FROM (SELECT clock_timestamp() AS now) AS c
                ON CONFLICT (name) DO UPDATE
                    SET version = s.version + n, last_recorded_at = excluded.last_recorded_at
                RETURNING s.version, s.last_recorded_at INTO current_version, recorded;
            ELSIF p_expected_kinds[i] = 1 THEN
                INSERT INTO streams AS s (name, version, first_recorded_at, last_recorded_at)
                SELECT stream_name, n - 1, c.now, c.now
                FROM (SELECT clock_timestamp() AS now) AS c
                ON CONFLICT (name) DO NOTHING
                RETURNING s.version, s.last_recorded_at INTO current_version, recorded;
                IF NOT FOUND THEN
                    SELECT s.version INTO current_version FROM streams AS s WHERE s.name = stream_name;
                    IF FOUND THEN
                        r_outcome := 1;
                        r_version := current_version;
                    ELSE
                        r_outcome := 3;
                    END IF;
                END IF;
            ELSE
                -- The row lock makes the version read final until commit.
                SELECT s.version INTO current_version
                FROM streams AS s WHERE s.name = stream_name FOR UPDATE;
                IF NOT FOUND THEN
                    r_outcome := 1;
                ELSIF p_expected_kinds[i] = 3 AND current_version <> p_expected_versions[i] THEN
                    r_outcome := 1;
                    r_version := current_version;
                ELSE
                    UPDATE streams AS s
                    SET version = s.version + n, last_recorded_at = clock_timestamp()
                    WHERE s.name = stream_name
                    RETURNING s.version, s.last_recorded_at INTO current_version, recorded;
                END IF;
            END IF;
            IF r_outcome = 0 THEN
                WITH inserted AS (
                    INSERT INTO events (position, id, type, stream, version, recorded_at, data,
                        correlation_id, causation_id, headers)
                    SELECT nextval('event_positions'), u.id, u.type, stream_name,
                        current_version - n + u.ord, recorded, u.data::json, u.correlation_id,
                        u.causation_id, u.headers::jsonb
                    FROM unnest(p_ids[first:last], p_types[first:last], p_data[first:last],
                            p_correlation_ids[first:last], p_causation_ids[first:last],
                            p_headers[first:last])
                        WITH ORDINALITY AS u (id, type, data, correlation_id, causation_id, headers, ord)
                    ORDER BY u.ord
                    RETURNING events.position, events.version
                )
                SELECT array_agg(inserted.position ORDER BY inserted.version)
                INTO r_positions FROM inserted;
                r_version := current_version;
            END IF;
        EXCEPTION
            WHEN unique_violation THEN
                r_outcome := 3;
                r_version := NULL;
                r_positions := NULL;
            WHEN OTHERS THEN
                r_outcome := 4;
                r_version := NULL;
                r_positions := NULL;
                r_detail := SQLSTATE || ': ' || SQLERRM;
        END;
        RETURN NEXT;
        first := last + 1;
    END LOOP;
END
$$;
