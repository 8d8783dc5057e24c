//! Payloads too large for one message, kept in an object store bucket
//! (the claim-check pattern): the message carries the object's name.

use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use herald::BoxError;
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

/// `<PREFIX>_PAYLOADS`, found or created when first needed.
pub(crate) struct Payloads {
    js: jetstream::Context,
    bucket: String,
    max_age: Duration,
    store: OnceCell<object_store::ObjectStore>,
}

impl Payloads {
    pub(crate) fn new(js: jetstream::Context, bucket: String, max_age: Duration) -> Self {
        Self {
            js,
            bucket,
            max_age,
            store: OnceCell::new(),
        }
    }

    /// The stream behind the bucket, to delete it with the others.
    pub(crate) fn stream_name(&self) -> String {
        format!("OBJ_{}", self.bucket)
    }

    async fn store(&self) -> Result<&object_store::ObjectStore, BoxError> {
        self.store
            .get_or_try_init(|| async {
                if let Ok(store) = self.js.get_object_store(&self.bucket).await {
                    return Ok(store);
                }
                let created = self
                    .js
                    .create_object_store(object_store::Config {
                        bucket: self.bucket.clone(),
                        description: Some("herald: event payloads too large for a message".into()),
                        max_age: self.max_age,
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(store) => Ok(store),
                    // Another process created it in between.
                    Err(e) => self
                        .js
                        .get_object_store(&self.bucket)
                        .await
                        .map_err(|_| BoxError::from(e)),
                }
            })
            .await
    }

    /// Stores `data` as object `name`, replacing one of that name.
    pub(crate) async fn put(&self, name: &str, data: &Bytes) -> Result<(), BoxError> {
        let mut reader: &[u8] = data;
        self.store().await?.put(name, &mut reader).await?;
        Ok(())
    }

    /// Deletes object `name`; a missing one is no error.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), BoxError> {
        match self.store().await?.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The data of object `name`.
    pub(crate) async fn get(&self, name: &str) -> Result<Bytes, BoxError> {
        let mut object = self.store().await?.get(name).await?;
        let mut data = Vec::new();
        object.read_to_end(&mut data).await?;
        Ok(data.into())
    }
}
