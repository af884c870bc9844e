//! The files of a node's data directory: the node key, the item store and its epoch
//! (the saved routing table and sync cursors are written by [`crate::state`] and
//! [`crate::maintenance`]). Checked at start-up, before anything listens.

use std::path::Path;

use dht_core::store::{RedbStore, StoreConfig};
use libp2p::identity;
use tracing::warn;

use crate::NodeError;

/// The node key (libp2p protobuf encoding).
const KEY_FILE: &str = "node.key";
/// The redb item store.
pub(crate) const STORE_FILE: &str = "items.redb";
/// The epoch of the store (see [`store_epoch`]).
const EPOCH_FILE: &str = "store.epoch";
/// Sync cursors into each peer's store.
pub(crate) const CURSORS_FILE: &str = "sync-cursors.json";

/// Loads the node key from the data directory, creating it on first run.
pub fn load_or_create_keypair(dir: &Path) -> Result<identity::Keypair, NodeError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.is_empty() => Err(NodeError::KeyFile {
            path,
            problem: "the node key file is empty; restore it from a backup to keep this \
                      node's peer id, or delete it to start under a new one",
        }),
        Ok(bytes) => {
            identity::Keypair::from_protobuf_encoding(&bytes).map_err(|_| NodeError::KeyFile {
                path,
                problem: "not a node key (damaged, or not written by dht-node); restore it \
                          from a backup to keep this node's peer id, or delete it to start \
                          under a new one",
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = identity::Keypair::generate_ed25519();
            let bytes = k.to_protobuf_encoding().map_err(|source| NodeError::Key {
                what: "new node key",
                source,
            })?;
            std::fs::write(&path, bytes)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(k)
        }
        Err(e) => Err(e.into()),
    }
}

/// The libp2p identity of a Skywire secp256k1 key, so a DMSG server's DHT identity can
/// be its existing key.
pub fn keypair_from_skywire_secret(secret: &[u8]) -> Result<identity::Keypair, NodeError> {
    let mut raw = secret.to_vec();
    let sk = identity::secp256k1::SecretKey::try_from_bytes(&mut raw).map_err(|source| {
        NodeError::Key {
            what: "secp256k1 secret key",
            source,
        }
    })?;
    Ok(identity::Keypair::from(identity::secp256k1::Keypair::from(
        sk,
    )))
}

/// Refuses to start on a store that vanished or is damaged (its items would be lost
/// without a word), unless `repair` asks to move it aside and start empty: the node
/// then rebuilds what it is responsible for from the network (catch-up, hand-off).
pub(crate) fn check_store_file(dir: &Path, repair: bool) -> Result<(), NodeError> {
    let path = dir.join(STORE_FILE);
    let had_store = dir.join(EPOCH_FILE).exists();
    if !path.exists() {
        if had_store && !repair {
            return Err(NodeError::Store(dht_core::StoreError::Damaged {
                path,
                detail: "the file is missing, though this data directory held a store".into(),
            }));
        }
        if had_store {
            warn!(path = %path.display(), "item store missing: starting empty (repair)");
            std::fs::remove_file(dir.join(EPOCH_FILE))?;
        }
        return Ok(());
    }
    if !repair {
        return Ok(());
    }
    // Open it once to find out; a damaged one is moved aside.
    let probe = RedbStore::open(&path, StoreConfig::default());
    match probe {
        Err(dht_core::StoreError::Damaged { detail, .. }) => {
            let aside = dht_core::store::move_aside(&path)?;
            warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                %detail,
                "damaged item store moved aside: starting empty and rebuilding from the network"
            );
            let _ = std::fs::remove_file(dir.join(EPOCH_FILE));
            Ok(())
        }
        Err(e) => Err(e.into()),
        Ok(store) => {
            drop(store);
            Ok(())
        }
    }
}

/// The epoch of the store in `dir`: a random id written beside a store created anew, so
/// that peers holding sync cursors into an earlier store start over.
pub(crate) fn store_epoch(dir: &Path) -> Result<u64, NodeError> {
    let path = dir.join(EPOCH_FILE);
    let store_exists = dir.join(STORE_FILE).exists();
    if store_exists {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(epoch) = text.trim().parse() {
                return Ok(epoch);
            }
        }
    }
    let epoch: u64 = rand::random();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, epoch.to_string())?;
    std::fs::rename(&tmp, &path)?;
    Ok(epoch)
}
