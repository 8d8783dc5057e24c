-- Competing consumers: the members of each competing durable subscriber
-- (a group, named after the subscriber) and its partitions, each with its
-- lease and its checkpoint. Expiry times are the database's clock
-- (`now()`), so members on machines whose clocks differ agree on them.

-- Live members renew their row every third of the lease TTL; rows whose
-- expiry passed are dead members, deleted by the next renewal.
CREATE TABLE group_members (
    subscriber text COLLATE "C" NOT NULL,
    member text COLLATE "C" NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (subscriber, member)
);

-- One row per partition ever worked on: `owner` holds the lease until
-- `expires_at` (free when NULL or past); `position` is the partition's
-- checkpoint; `epoch` is bumped by every rewind, so that a save made
-- before it is refused.
CREATE TABLE group_partitions (
    subscriber text COLLATE "C" NOT NULL,
    partition integer NOT NULL,
    owner text COLLATE "C",
    expires_at timestamptz NOT NULL,
    position bigint NOT NULL,
    epoch bigint NOT NULL,
    PRIMARY KEY (subscriber, partition)
);
