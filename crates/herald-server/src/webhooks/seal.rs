//! Webhook secrets sealed at rest.
//!
//! Subscription definitions are events, and events can be read by anyone
//! holding a token (the global log, the stream, server-sent events). A
//! secret is therefore stored sealed: encrypted and authenticated with
//! ChaCha20-Poly1305 under a 256-bit key that never appears in the event
//! log. The key is kept in the store's checkpoint table, the one place the
//! store traits offer that the HTTP API does not expose, as eight 32-bit
//! words under the names `herald:webhooks:key:0` to `:7` (names that no
//! subscriber can have, since webhook subscribers are `webhook:<name>` and
//! names hold no `:`). The subscription's name is the associated data, so a
//! sealed secret cannot be moved to another subscription.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use herald::store::{CheckpointStore, StoreError};

const WORDS: usize = 8;
const NONCE_LEN: usize = 12;

fn word_name(i: usize) -> String {
    format!("herald:webhooks:key:{i}")
}

/// Why a sealed secret could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum OpenError {
    /// Not base64, or too short to hold a nonce.
    #[error("the sealed secret of subscription {0:?} is malformed")]
    Malformed(String),
    /// The key or the name does not match what sealed it.
    #[error(
        "the sealed secret of subscription {0:?} does not open with this store's key \
         (was the key in the checkpoints table changed?)"
    )]
    WrongKey(String),
}

/// Seals and opens secrets with the store's key.
pub(crate) struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// The store's key, created (from the OS's random source) on first use.
    pub(crate) async fn load_or_create(store: &dyn CheckpointStore) -> Result<Self, StoreError> {
        if let Some(key) = load(store).await? {
            return Ok(Self::with_key(&key));
        }
        let fresh = ChaCha20Poly1305::generate_key(&mut OsRng);
        for (i, chunk) in fresh.chunks_exact(4).enumerate() {
            let word = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            store.save(&word_name(i), u64::from(word)).await?;
        }
        // Read back: if another server sharing the store wrote its key at
        // the same time, both use what the store holds now.
        let key = load(store)
            .await?
            .ok_or_else(|| StoreError::backend("the webhook key vanished after it was saved"))?;
        Ok(Self::with_key(&key))
    }

    fn with_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// `secret` sealed for subscription `name`: base64 of nonce and
    /// ciphertext.
    pub(crate) fn seal(&self, name: &str, secret: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            // Encryption fails only for messages over 256 GiB.
            .unwrap_or_else(|_| unreachable!("a secret is far below the AEAD's limit"));
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    /// The secret of subscription `name` from its sealed form.
    pub(crate) fn open(&self, name: &str, sealed: &str) -> Result<String, OpenError> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| OpenError::Malformed(name.to_owned()))?;
        if bytes.len() <= NONCE_LEN {
            return Err(OpenError::Malformed(name.to_owned()));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| OpenError::WrongKey(name.to_owned()))?;
        String::from_utf8(plain).map_err(|_| OpenError::Malformed(name.to_owned()))
    }
}

/// The key, when all of its words are in the store (a crash while writing
/// them leaves some: the key is then written anew, nothing having been
/// sealed with a partial one).
async fn load(store: &dyn CheckpointStore) -> Result<Option<[u8; 32]>, StoreError> {
    let mut key = [0u8; 32];
    for i in 0..WORDS {
        let Some(word) = store.load(&word_name(i)).await? else {
            return Ok(None);
        };
        let word = u32::try_from(word).map_err(|_| {
            StoreError::backend(format!(
                "checkpoint {} holds {word}, not a 32-bit key word",
                word_name(i)
            ))
        })?;
        key[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seals_and_opens_with_the_same_key_only_for_the_same_name() {
        let store = herald::store::MemoryStore::new();
        let sealer = Sealer::load_or_create(&store).await.unwrap();
        let sealed = sealer.seal("orders", "s3cret");
        assert!(!sealed.contains("s3cret"));
        let again = Sealer::load_or_create(&store).await.unwrap();
        assert_eq!(again.open("orders", &sealed).unwrap(), "s3cret");
        assert!(matches!(
            again.open("billing", &sealed),
            Err(OpenError::WrongKey(_))
        ));
        assert!(matches!(
            again.open("orders", "not base64!"),
            Err(OpenError::Malformed(_))
        ));
        let other = Sealer::load_or_create(&herald::store::MemoryStore::new())
            .await
            .unwrap();
        assert!(other.open("orders", &sealed).is_err());
    }
}
