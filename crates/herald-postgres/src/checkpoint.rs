//! [`CheckpointStore`] for [`PgStore`]: checkpoints in the `checkpoints`
//! table of the store's schema, enabled states in `subscriber_states`.

use async_trait::async_trait;
use herald::store::{CheckpointStore, StoreError};

use crate::error::backend;
use crate::store::PgStore;

/// Checkpoints live in the store's schema, in the `checkpoints` table, one
/// row per subscriber (its position and the time it was saved). A save is
/// one statement (an upsert), committed when it returns, so a saved
/// checkpoint is as durable as an append and every process sharing the
/// schema sees it. Whether a subscriber is enabled is kept the same way, in
/// `subscriber_states`.
#[async_trait]
impl CheckpointStore for PgStore {
    async fn load(&self, subscriber: &str) -> Result<Option<u64>, StoreError> {
        let position: Option<i64> = sqlx::query_scalar(&self.inner().sql.checkpoint_load)
            .bind(subscriber)
            .fetch_optional(self.pool())
            .await
            .map_err(backend("load a checkpoint"))?;
        position
            .map(|p| {
                u64::try_from(p).map_err(|_| {
                    StoreError::backend(format!(
                        "the stored checkpoint of subscriber {subscriber:?} is negative: {p}"
                    ))
                })
            })
            .transpose()
    }

    async fn save(&self, subscriber: &str, position: u64) -> Result<(), StoreError> {
        let position = i64::try_from(position).map_err(|_| {
            StoreError::backend(format!(
                "checkpoint {position} of subscriber {subscriber:?} is beyond any position"
            ))
        })?;
        sqlx::query(&self.inner().sql.checkpoint_save)
            .bind(subscriber)
            .bind(position)
            .execute(self.pool())
            .await
            .map_err(backend("save a checkpoint"))?;
        Ok(())
    }

    async fn reset(&self, subscriber: &str) -> Result<(), StoreError> {
        sqlx::query(&self.inner().sql.checkpoint_reset)
            .bind(subscriber)
            .execute(self.pool())
            .await
            .map_err(backend("reset a checkpoint"))?;
        Ok(())
    }

    async fn load_enabled(&self, subscriber: &str) -> Result<Option<bool>, StoreError> {
        sqlx::query_scalar(&self.inner().sql.enabled_load)
            .bind(subscriber)
            .fetch_optional(self.pool())
            .await
            .map_err(backend("load whether a subscriber is enabled"))
    }

    async fn save_enabled(&self, subscriber: &str, enabled: bool) -> Result<(), StoreError> {
        sqlx::query(&self.inner().sql.enabled_save)
            .bind(subscriber)
            .bind(enabled)
            .execute(self.pool())
            .await
            .map_err(backend("save whether a subscriber is enabled"))?;
        Ok(())
    }
}
