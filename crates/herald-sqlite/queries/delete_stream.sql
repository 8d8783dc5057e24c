-- Deletes stream ?1: its events, its links, and its row. Where its events
-- were linked into other streams, those entries become holes (a NULL
-- position) and the counts of those streams drop, but not their versions.
--
-- The store runs these statements one by one, split at each semicolon, so
-- comments here must not hold one.
UPDATE streams
   SET count = count - (
         SELECT count(*)
           FROM stream_entries AS l
           JOIN events AS e ON e.position = l.position
          WHERE l.stream = streams.name AND e.stream = ?1)
 WHERE name <> ?1
   AND name IN (
         SELECT l.stream
           FROM events AS e
           JOIN stream_entries AS l ON l.position = e.position
          WHERE e.stream = ?1);

UPDATE stream_entries
   SET position = NULL
 WHERE position IN (SELECT position FROM events WHERE stream = ?1);

DELETE FROM stream_entries WHERE stream = ?1;
DELETE FROM events WHERE stream = ?1;
DELETE FROM streams WHERE name = ?1;
