-- Member $3 takes partition $2 of group $1 for $4 seconds if it is free,
-- expired or its own; a partition never seen starts at checkpoint $5.
-- Returns the partition's checkpoint and epoch, or no row when another
-- member holds it. Racing members serialize on the row: the loser sees
-- the winner's unexpired lease.
INSERT INTO {schema}.group_partitions AS p
    (subscriber, partition, owner, expires_at, position, epoch)
VALUES ($1::text, $2::integer, $3::text, now() + make_interval(secs => $4::float8), $5::bigint, 0)
ON CONFLICT (subscriber, partition) DO UPDATE
SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE p.owner IS NULL OR p.owner = excluded.owner OR p.expires_at <= now()
RETURNING position, epoch
