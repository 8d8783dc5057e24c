-- Member $2 of group $1 is alive for $3 seconds more: its heartbeat and its
-- unexpired leases move on, dead members go. Returns one row per renewed
-- lease (member NULL) and one per other live member (partition NULL).
WITH beat AS (
    INSERT INTO {schema}.group_members (subscriber, member, expires_at)
    VALUES ($1::text, $2::text, now() + make_interval(secs => $3::float8))
    ON CONFLICT (subscriber, member) DO UPDATE SET expires_at = excluded.expires_at
), dead AS (
    DELETE FROM {schema}.group_members
    WHERE subscriber = $1::text AND member <> $2::text AND expires_at <= now()
), held AS (
    UPDATE {schema}.group_partitions
    SET expires_at = now() + make_interval(secs => $3::float8)
    WHERE subscriber = $1::text AND owner = $2::text AND expires_at > now()
    RETURNING partition, position, epoch
)
SELECT NULL::text AS member, partition, position, epoch FROM held
UNION ALL
SELECT member, NULL, NULL, NULL FROM {schema}.group_members
WHERE subscriber = $1::text AND member <> $2::text AND expires_at > now()
