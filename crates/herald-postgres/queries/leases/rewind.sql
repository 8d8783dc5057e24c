-- Every partition 0..$2 of group $1 moves to checkpoint $3, in a new epoch;
-- leases are kept.
INSERT INTO {schema}.group_partitions AS p
    (subscriber, partition, owner, expires_at, position, epoch)
SELECT $1::text, g, NULL, '-infinity', $3::bigint, 1
FROM generate_series(0, $2::integer - 1) AS g
ON CONFLICT (subscriber, partition) DO UPDATE
SET position = excluded.position, epoch = p.epoch + 1
