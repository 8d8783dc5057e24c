-- Deletes a locked stream (see the store module docs): its links, then its
-- events (whose links elsewhere go with them, leaving holes), recording their
-- positions as erased; then the stream row.
WITH dropped_links AS (
    DELETE FROM {schema}.links WHERE stream = $1::text
),
dropped AS (
    DELETE FROM {schema}.events WHERE stream = $1::text RETURNING position
),
recorded AS (
    INSERT INTO {schema}.erased (position) SELECT position FROM dropped
)
DELETE FROM {schema}.streams WHERE name = $1::text
