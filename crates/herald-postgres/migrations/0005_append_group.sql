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
-- One append's conflict or error never fails the others.
--
-- The whole group is first tried set-based, in one subtransaction: the
-- group's existing streams are locked and read in one statement, versions
-- and conflicts are worked out in memory, then one UPDATE moves the
-- existing streams on, one INSERT creates the new ones and one INSERT
-- writes every event. If that raises (a concurrent writer stored one of the
-- ids, a lock held too long, two appends of the group share an id), it
-- rolls back and each append is applied again in a subtransaction of its
-- own, so that only the failing ones fail.
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
    appends integer := coalesce(array_length(p_streams, 1), 0);
    events_total integer := coalesce(array_length(p_ids, 1), 0);
    starts integer[] := '{}';
    outcomes smallint[];
    versions bigint[];
    positions bigint[];
    details text[];
    -- The group's streams as known so far: name, version (null: none),
    -- whether it exists in the table, whether the group writes it.
    names text[];
    heads bigint[];
    existing boolean[];
    touched boolean[];
    created text[];
    event_streams text[];
    event_versions bigint[];
    keep boolean[];
    fast boolean := true;
    recorded timestamptz;
    first integer := 1;
    last integer;
    n bigint;
    k integer;
    v bigint;
    kind smallint;
    stream_name text;
    current_version bigint;
BEGIN
    PERFORM set_config('lock_timeout', '100ms', true);
    IF appends = 0 THEN
        RETURN;
    END IF;
    FOR i IN 1 .. appends LOOP
        starts[i] := first;
        first := first + p_counts[i];
    END LOOP;
    outcomes := array_fill(0::smallint, ARRAY[appends]);
    versions := array_fill(NULL::bigint, ARRAY[appends]);
    details := array_fill(NULL::text, ARRAY[appends]);

    BEGIN
        -- Appends that give an id that is stored already write nothing.
        IF true = ANY (p_given) THEN
            FOR i IN 1 .. appends LOOP
                last := starts[i] + p_counts[i] - 1;
                IF true = ANY (p_given[starts[i]:last]) AND EXISTS (
                    SELECT 1 FROM events e
                    WHERE e.id = ANY (ARRAY(
                        SELECT u.id
                        FROM unnest(p_ids[starts[i]:last], p_given[starts[i]:last]) AS u (id, given)
                        WHERE u.given
                    ))
                ) THEN
                    outcomes[i] := 2;
                END IF;
            END LOOP;
        END IF;
        -- Lock the existing streams, in name order, and read their versions:
        -- final until commit.
        SELECT coalesce(array_agg(l.name ORDER BY l.name), '{}'),
            coalesce(array_agg(l.version ORDER BY l.name), '{}')
        INTO names, heads
        FROM (
            SELECT s.name, s.version FROM streams AS s
            WHERE s.name = ANY (p_streams)
            ORDER BY s.name
            FOR UPDATE
        ) AS l;
        existing := array_fill(true, ARRAY[coalesce(array_length(names, 1), 0)]);
        touched := array_fill(false, ARRAY[coalesce(array_length(names, 1), 0)]);
        -- Each append in turn against the versions the earlier ones left.
        FOR i IN 1 .. appends LOOP
            CONTINUE WHEN outcomes[i] <> 0;
            k := array_position(names, p_streams[i]);
            IF k IS NULL THEN
                names := names || p_streams[i];
                heads := heads || NULL::bigint;
                existing := existing || false;
                touched := touched || false;
                k := array_length(names, 1);
            END IF;
            v := heads[k];
            kind := p_expected_kinds[i];
            IF (kind = 1 AND v IS NOT NULL) OR (kind = 2 AND v IS NULL)
                OR (kind = 3 AND (v IS NULL OR v <> p_expected_versions[i])) THEN
                outcomes[i] := 1;
                versions[i] := v;
            ELSE
                versions[i] := coalesce(v, -1) + p_counts[i];
                heads[k] := versions[i];
                touched[k] := true;
            END IF;
        END LOOP;
        recorded := clock_timestamp();
        -- Writing the streams' rows first gives the transaction its id
        -- before it draws any position.
        UPDATE streams AS s
        SET version = u.version, last_recorded_at = recorded
        FROM unnest(names, heads, existing, touched) AS u (name, version, existing, touched)
        WHERE u.existing AND u.touched AND s.name = u.name;
        WITH made AS (
            INSERT INTO streams (name, version, first_recorded_at, last_recorded_at)
            SELECT u.name, u.version, recorded, recorded
            FROM unnest(names, heads, existing, touched) AS u (name, version, existing, touched)
            WHERE NOT u.existing AND u.touched
            ORDER BY u.name
            ON CONFLICT (name) DO NOTHING
            RETURNING name
        )
        SELECT coalesce(array_agg(made.name), '{}') INTO created FROM made;
        -- A stream another transaction created meanwhile: its appends start
        -- again alone.
        FOR i IN 1 .. appends LOOP
            IF outcomes[i] = 0 THEN
                k := array_position(names, p_streams[i]);
                IF NOT existing[k] AND NOT (p_streams[i] = ANY (created)) THEN
                    outcomes[i] := 3;
                    versions[i] := NULL;
                END IF;
            END IF;
        END LOOP;
        event_streams := array_fill(NULL::text, ARRAY[events_total]);
        event_versions := array_fill(NULL::bigint, ARRAY[events_total]);
        keep := array_fill(false, ARRAY[events_total]);
        FOR i IN 1 .. appends LOOP
            IF outcomes[i] = 0 THEN
                FOR j IN 0 .. p_counts[i] - 1 LOOP
                    event_streams[starts[i] + j] := p_streams[i];
                    event_versions[starts[i] + j] := versions[i] - p_counts[i] + 1 + j;
                    keep[starts[i] + j] := true;
                END LOOP;
            END IF;
        END LOOP;
        WITH inserted AS (
            INSERT INTO events (position, id, type, stream, version, recorded_at, data,
                correlation_id, causation_id, headers)
            SELECT nextval('event_positions'), u.id, u.type, u.stream, u.version, recorded,
                u.data::json, u.correlation_id, u.causation_id, u.headers::jsonb
            FROM unnest(p_ids, p_types, p_data, p_correlation_ids, p_causation_ids, p_headers,
                    event_streams, event_versions, keep)
                WITH ORDINALITY AS u (id, type, data, correlation_id, causation_id, headers,
                    stream, version, keep, ord)
            WHERE u.keep
            ORDER BY u.ord
            RETURNING events.position
        )
        SELECT coalesce(array_agg(inserted.position ORDER BY inserted.position), '{}')
        INTO positions FROM inserted;
    EXCEPTION
        WHEN OTHERS THEN
            fast := false;
    END;

    IF fast THEN
        -- Positions were drawn in event order.
        k := 1;
        FOR i IN 1 .. appends LOOP
            r_outcome := outcomes[i];
            r_version := versions[i];
            r_positions := NULL;
            r_detail := NULL;
            IF outcomes[i] = 0 THEN
                r_positions := positions[k:k + p_counts[i] - 1];
                k := k + p_counts[i];
            END IF;
            RETURN NEXT;
        END LOOP;
        RETURN;
    END IF;

    -- The set-based attempt failed as a whole: each append alone.
    FOR i IN 1 .. appends LOOP
        n := p_counts[i];
        first := starts[i];
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
    END LOOP;
END
$$;
