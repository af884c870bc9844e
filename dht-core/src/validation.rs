//! The rules every path applies: the store, the network handlers, the gateway and client
//! reads all go through [`Validator::validate`] (stateless checks: sizes, authorization,
//! signature) and stores additionally through [`admit`] (ordering against what is stored).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::Rejection;
use crate::item::{MutableItem, Target, MAX_SALT_LEN};
use crate::keys::PublicKey;

/// Default value limit: 1 MiB (a hub edge's full transport list is well over 100 KB).
pub const DEFAULT_MAX_VALUE_LEN: usize = 1024 * 1024;
/// Default lifetime of a stored item without a republish.
pub const DEFAULT_TTL: Duration = Duration::from_secs(6 * 60 * 60);

/// Milliseconds since the unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What is accepted: limits, lifetime, and who may publish for whom.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Largest accepted value, in bytes.
    pub max_value_len: usize,
    /// How long an item lives after its last (re)publish.
    pub ttl: Duration,
    /// Salt -> keys allowed to publish items about any subject under that salt
    /// (the transport, service and DMSG discoveries' mirror keys).
    pub authorized_publishers: HashMap<Bytes, HashSet<PublicKey>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            ttl: DEFAULT_TTL,
            authorized_publishers: HashMap::new(),
        }
    }
}

impl Policy {
    /// Allows `key` to publish items about any subject under `salt`.
    pub fn authorize(mut self, salt: impl Into<Bytes>, key: PublicKey) -> Self {
        self.authorized_publishers
            .entry(salt.into())
            .or_default()
            .insert(key);
        self
    }

    /// Whether `key` is an authorized publisher for `salt`.
    pub fn is_authorized_publisher(&self, salt: &[u8], key: &PublicKey) -> bool {
        self.authorized_publishers
            .get(salt)
            .is_some_and(|keys| keys.contains(key))
    }
}

/// An item that passed [`Validator::validate`]. Stores only accept these, so no path can
/// store an item whose signature was never checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedItem {
    item: MutableItem,
    target: Target,
    by_authorized_publisher: bool,
}

impl VerifiedItem {
    /// The item.
    pub fn item(&self) -> &MutableItem {
        &self.item
    }

    /// The item's target.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Whether the signer is an authorized publisher (not the subject itself). Such items
    /// are exempt from per-signer quotas and never evicted.
    pub fn by_authorized_publisher(&self) -> bool {
        self.by_authorized_publisher
    }

    /// Unwraps the item.
    pub fn into_item(self) -> MutableItem {
        self.item
    }

    /// Re-wraps an item read back from a store that only ever holds verified items.
    pub(crate) fn from_trusted_store(item: MutableItem, by_authorized_publisher: bool) -> Self {
        VerifiedItem {
            target: item.target(),
            item,
            by_authorized_publisher,
        }
    }
}

/// Applies a [`Policy`] to items. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Validator {
    policy: Arc<Policy>,
}

impl Validator {
    /// A validator for a policy.
    pub fn new(policy: Policy) -> Self {
        Validator {
            policy: Arc::new(policy),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Stateless checks, cheapest first: sizes, authorization, signature.
    pub fn validate(&self, item: MutableItem) -> Result<VerifiedItem, Rejection> {
        if item.salt.len() > MAX_SALT_LEN {
            return Err(Rejection::TooLarge {
                what: "salt",
                size: item.salt.len(),
                limit: MAX_SALT_LEN,
            });
        }
        let value_len = item.body.value_bytes().len();
        if value_len > self.policy.max_value_len {
            return Err(Rejection::TooLarge {
                what: "value",
                size: value_len,
                limit: self.policy.max_value_len,
            });
        }
        let by_authorized_publisher = if item.signer == item.subject {
            false
        } else if self
            .policy
            .is_authorized_publisher(&item.salt, &item.signer)
        {
            true
        } else {
            return Err(Rejection::Unauthorized {
                signer: item.signer,
                subject: item.subject,
                salt: String::from_utf8_lossy(&item.salt).into_owned(),
            });
        };
        item.signer
            .verify(&item.signing_payload(), &item.signature)
            .map_err(Rejection::BadSignature)?;
        Ok(VerifiedItem {
            target: item.target(),
            item,
            by_authorized_publisher,
        })
    }

    /// [`Validator::validate`], and the item must belong at `target` (an item fetched or
    /// sent for one target must not be accepted for another).
    pub fn validate_for(
        &self,
        target: &Target,
        item: MutableItem,
    ) -> Result<VerifiedItem, Rejection> {
        let actual = item.target();
        if actual != *target {
            return Err(Rejection::TargetMismatch {
                expected: *target,
                actual,
            });
        }
        self.validate(item)
    }

    /// The wall-clock expiry of an item put now: the requested expiry (an item arriving
    /// from a replica keeps the deadline its publisher gave it), capped at `now + ttl`.
    pub fn expiry_for(&self, requested_ms: Option<u64>, now_ms: u64) -> Result<u64, Rejection> {
        let cap = now_ms.saturating_add(self.policy.ttl.as_millis() as u64);
        match requested_ms {
            Some(t) if t <= now_ms => Err(Rejection::Expired {
                expires_at_ms: t,
                now_ms,
            }),
            Some(t) => Ok(t.min(cap)),
            None => Ok(cap),
        }
    }
}

/// A compare-and-swap condition on the stored seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Only store when nothing (live) is stored at the target.
    Absent,
    /// Only store when the stored seq is exactly this.
    Seq(u64),
}

/// Options of a put.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Compare-and-swap on the stored seq.
    pub cas: Option<Cas>,
    /// Requested expiry (unix ms). Replicas pass the deadline on; publishers leave it
    /// `None` to get the full TTL.
    pub expires_at_ms: Option<u64>,
}

/// A stored item with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    /// The item (a tombstone is stored without a value).
    pub item: MutableItem,
    /// When it lapses, unix ms.
    pub expires_at_ms: u64,
    /// Whether an authorized publisher signed it.
    pub by_authorized_publisher: bool,
}

impl StoredItem {
    /// Whether the item has lapsed at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms <= now_ms
    }

    /// The stored item as a [`VerifiedItem`] (it was verified when stored).
    pub fn verified(&self) -> VerifiedItem {
        VerifiedItem::from_trusted_store(self.item.clone(), self.by_authorized_publisher)
    }
}

/// What a put does to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing (live) was stored: insert.
    Insert,
    /// A lower seq was stored: replace it.
    Replace {
        /// The seq replaced.
        previous_seq: u64,
    },
    /// The identical item is stored: extend its expiry.
    Refresh,
}

/// The ordering rule: decides what `incoming` does given what is `existing` at its
/// target (expired items count as absent). Every store calls this under its write lock.
pub fn admit(
    existing: Option<&StoredItem>,
    incoming: &VerifiedItem,
    cas: Option<Cas>,
    now_ms: u64,
) -> Result<Admission, Rejection> {
    let existing = existing.filter(|e| !e.is_expired(now_ms));
    let inc = incoming.item();
    if let Some(e) = existing {
        if e.item.subject != inc.subject || e.item.salt != inc.salt {
            return Err(Rejection::TargetMismatch {
                expected: e.item.target(),
                actual: incoming.target(),
            });
        }
    }
    match (cas, existing) {
        (Some(Cas::Absent), Some(e)) => {
            return Err(Rejection::CasMismatch {
                expected: None,
                stored: Some(e.item.seq),
            })
        }
        (Some(Cas::Seq(want)), e) if e.map(|e| e.item.seq) != Some(want) => {
            return Err(Rejection::CasMismatch {
                expected: Some(want),
                stored: e.map(|e| e.item.seq),
            })
        }
        _ => {}
    }
    let Some(e) = existing else {
        return Ok(Admission::Insert);
    };
    let stored = e.item.seq;
    if inc.seq > stored {
        Ok(Admission::Replace {
            previous_seq: stored,
        })
    } else if inc.seq < stored {
        Err(Rejection::Stale {
            incoming: inc.seq,
            stored,
        })
    } else if e.item.same_content(inc) {
        Ok(Admission::Refresh)
    } else {
        Err(Rejection::Equivocation { seq: stored })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::ReasonCode;

    fn stored(v: &VerifiedItem, expires: u64) -> StoredItem {
        StoredItem {
            item: v.item().clone(),
            expires_at_ms: expires,
            by_authorized_publisher: v.by_authorized_publisher(),
        }
    }

    #[test]
    fn ordering_rules() {
        let key = SigningKey::generate_ed25519();
        let pk = key.public_key();
        let val = Validator::default();
        let v5 = val
            .validate(MutableItem::sign(&key, pk, "tp", 5, "a"))
            .unwrap();
        let v5b = val
            .validate(MutableItem::sign(&key, pk, "tp", 5, "b"))
            .unwrap();
        let v4 = val
            .validate(MutableItem::sign(&key, pk, "tp", 4, "z"))
            .unwrap();
        let v6 = val
            .validate(MutableItem::sign(&key, pk, "tp", 6, "c"))
            .unwrap();
        let s5 = stored(&v5, 1000);
        assert_eq!(admit(None, &v5, None, 0), Ok(Admission::Insert));
        assert_eq!(admit(Some(&s5), &v5, None, 0), Ok(Admission::Refresh));
        assert_eq!(
            admit(Some(&s5), &v6, None, 0),
            Ok(Admission::Replace { previous_seq: 5 })
        );
        assert_eq!(
            admit(Some(&s5), &v4, None, 0).unwrap_err().code(),
            ReasonCode::Stale
        );
        assert_eq!(
            admit(Some(&s5), &v5b, None, 0).unwrap_err().code(),
            ReasonCode::Equivocation
        );
        // An expired item counts as absent.
        assert_eq!(admit(Some(&s5), &v4, None, 1000), Ok(Admission::Insert));
        // Compare-and-swap.
        assert_eq!(
            admit(Some(&s5), &v6, Some(Cas::Seq(4)), 0)
                .unwrap_err()
                .code(),
            ReasonCode::CasMismatch
        );
        assert!(admit(Some(&s5), &v6, Some(Cas::Seq(5)), 0).is_ok());
        assert_eq!(
            admit(Some(&s5), &v6, Some(Cas::Absent), 0)
                .unwrap_err()
                .code(),
            ReasonCode::CasMismatch
        );
        assert!(admit(None, &v6, Some(Cas::Absent), 0).is_ok());
    }

    #[test]
    fn expiry_is_capped_and_past_deadlines_rejected() {
        let val = Validator::new(Policy {
            ttl: Duration::from_secs(10),
            ..Policy::default()
        });
        assert_eq!(val.expiry_for(None, 1_000), Ok(11_000));
        assert_eq!(val.expiry_for(Some(5_000), 1_000), Ok(5_000));
        assert_eq!(val.expiry_for(Some(99_000), 1_000), Ok(11_000));
        assert_eq!(
            val.expiry_for(Some(500), 1_000).unwrap_err().code(),
            ReasonCode::Expired
        );
    }
}
