//! [`LeaseStore`] for [`PgStore`]: the members and partitions of competing
//! subscribers in the `group_members` and `group_partitions` tables.
//!
//! Every call is one statement (its own transaction), timed by the
//! database's `now()`. A save is an `UPDATE` that names the owner, the
//! epoch and an unexpired lease, and a takeover an upsert that requires the
//! lease to have expired: the row lock orders the two, so a member whose
//! lease expired can never move the checkpoint of the member that took its
//! partition.

use std::time::Duration;

use async_trait::async_trait;
use herald::store::{GroupView, Lease, LeaseStore, PartitionState, StoreError};
use sqlx::Row;

use crate::error::backend;
use crate::store::PgStore;

/// The statements, with the schema filled in.
fn sql(store: &PgStore, template: &str) -> String {
    template.replace("{schema}", &format!("\"{}\"", store.config().schema))
}

fn position(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::backend(format!("the stored {what} is negative: {value}")))
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::backend(format!("{what} {value} is beyond any position")))
}

fn to_i32(partition: u32) -> Result<i32, StoreError> {
    i32::try_from(partition)
        .map_err(|_| StoreError::backend(format!("partition {partition} is out of range")))
}

#[async_trait]
impl LeaseStore for PgStore {
    async fn renew(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<GroupView, StoreError> {
        let rows = sqlx::query(&sql(self, include_str!("../queries/leases/renew.sql")))
            .bind(group)
            .bind(member)
            .bind(ttl.as_secs_f64())
            .fetch_all(self.pool())
            .await
            .map_err(backend("renew a group member's leases"))?;
        let mut members = vec![member.to_owned()];
        let mut held = Vec::new();
        for row in &rows {
            let other: Option<String> = row.try_get(0).map_err(backend("read a renewal"))?;
            match other {
                Some(other) => members.push(other),
                None => {
                    let partition: i32 = row.try_get(1).map_err(backend("read a renewal"))?;
                    let at: i64 = row.try_get(2).map_err(backend("read a renewal"))?;
                    let epoch: i64 = row.try_get(3).map_err(backend("read a renewal"))?;
                    held.push(Lease::new(
                        partition as u32,
                        position(at, "partition checkpoint")?,
                        epoch as u64,
                    ));
                }
            }
        }
        Ok(GroupView::new(members, held))
    }

    async fn acquire(
        &self,
        group: &str,
        member: &str,
        partition: u32,
        ttl: Duration,
        initial: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(&sql(self, include_str!("../queries/leases/acquire.sql")))
            .bind(group)
            .bind(to_i32(partition)?)
            .bind(member)
            .bind(ttl.as_secs_f64())
            .bind(to_i64(initial, "initial checkpoint")?)
            .fetch_optional(self.pool())
            .await
            .map_err(backend("acquire a partition lease"))?;
        row.map(|row| {
            let at: i64 = row.try_get(0).map_err(backend("read a lease"))?;
            let epoch: i64 = row.try_get(1).map_err(backend("read a lease"))?;
            Ok(Lease::new(
                partition,
                position(at, "partition checkpoint")?,
                epoch as u64,
            ))
        })
        .transpose()
    }

    async fn save(
        &self,
        group: &str,
        member: &str,
        lease: Lease,
        position: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(&sql(
            self,
            "UPDATE {schema}.group_partitions SET position = $5::bigint \
             WHERE subscriber = $1::text AND partition = $2::integer AND owner = $3::text \
             AND epoch = $4::bigint AND expires_at > now()",
        ))
        .bind(group)
        .bind(to_i32(lease.partition)?)
        .bind(member)
        .bind(to_i64(lease.epoch, "epoch")?)
        .bind(to_i64(position, "checkpoint")?)
        .execute(self.pool())
        .await
        .map_err(backend("save a partition checkpoint"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn release(&self, group: &str, member: &str, partition: u32) -> Result<(), StoreError> {
        sqlx::query(&sql(
            self,
            "UPDATE {schema}.group_partitions SET owner = NULL, expires_at = '-infinity' \
             WHERE subscriber = $1::text AND partition = $2::integer AND owner = $3::text",
        ))
        .bind(group)
        .bind(to_i32(partition)?)
        .bind(member)
        .execute(self.pool())
        .await
        .map_err(backend("release a partition lease"))?;
        Ok(())
    }

    async fn leave(&self, group: &str, member: &str) -> Result<(), StoreError> {
        sqlx::query(&sql(
            self,
            "WITH gone AS (DELETE FROM {schema}.group_members \
             WHERE subscriber = $1::text AND member = $2::text) \
             UPDATE {schema}.group_partitions SET owner = NULL, expires_at = '-infinity' \
             WHERE subscriber = $1::text AND owner = $2::text",
        ))
        .bind(group)
        .bind(member)
        .execute(self.pool())
        .await
        .map_err(backend("leave a group"))?;
        Ok(())
    }

    async fn rewind(&self, group: &str, partitions: u32, position: u64) -> Result<(), StoreError> {
        sqlx::query(&sql(self, include_str!("../queries/leases/rewind.sql")))
            .bind(group)
            .bind(to_i32(partitions)?)
            .bind(to_i64(position, "checkpoint")?)
            .execute(self.pool())
            .await
            .map_err(backend("rewind a group's partitions"))?;
        Ok(())
    }

    async fn partitions(&self, group: &str) -> Result<Vec<PartitionState>, StoreError> {
        let rows = sqlx::query(&sql(
            self,
            "SELECT partition, CASE WHEN expires_at > now() THEN owner END AS owner, \
             position, epoch FROM {schema}.group_partitions \
             WHERE subscriber = $1::text ORDER BY partition",
        ))
        .bind(group)
        .fetch_all(self.pool())
        .await
        .map_err(backend("list a group's partitions"))?;
        rows.iter()
            .map(|row| {
                let read = backend("read a group's partitions");
                let partition: i32 = row.try_get(0).map_err(read)?;
                let owner: Option<String> = row
                    .try_get(1)
                    .map_err(backend("read a group's partitions"))?;
                let at: i64 = row
                    .try_get(2)
                    .map_err(backend("read a group's partitions"))?;
                let epoch: i64 = row
                    .try_get(3)
                    .map_err(backend("read a group's partitions"))?;
                Ok(PartitionState::new(
                    partition as u32,
                    owner,
                    position(at, "partition checkpoint")?,
                    epoch as u64,
                ))
            })
            .collect()
    }
}
