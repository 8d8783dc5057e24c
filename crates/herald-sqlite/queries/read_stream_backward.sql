-- A stream backward from version ?2, at most ?3 entries; see
-- read_stream_forward.sql.
SELECT position, id, type, stream, version, recorded_at, data, metadata,
       version AS at, 0 AS linked
  FROM events
 WHERE stream = ?1 AND version <= ?2
UNION ALL
SELECT e.position, e.id, e.type, e.stream, e.version, e.recorded_at, e.data, e.metadata,
       l.version AS at, 1 AS linked
  FROM stream_entries AS l
  JOIN events AS e ON e.position = l.position
 WHERE l.stream = ?1 AND l.version <= ?2
 ORDER BY at DESC
 LIMIT ?3
