//! The rules every path applies: the store, the network handlers, the gateway and client
//! reads all go through [`Validator::validate`] (stateless checks: sizes, authorization,
//! signature) and stores additionally through [`admit`] (ordering against what is stored,
//! by the one total order [`precedence`]).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::Rejection;
use crate::item::{MutableItem, Target, MAX_SALT_LEN};
use crate::keys::PublicKey;

/// Default value limit: 1 MiB (a hub edge's full transport list is well over 100 KB).
pub const DEFAULT_MAX_VALUE_LEN: usize = 1024 * 1024;
/// Default lifetime of an item: the expiry the constructors without an explicit one sign,
/// and the longest a store keeps an item (see [`Policy::ttl`]).
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
    /// The longest a store keeps an item after it was put, whatever the item's signed
    /// expiry says.
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

    /// The wall-clock expiry of an item put now: the requested deadline (an item arriving
    /// from a replica keeps at most the deadline that replica gave it), capped at
    /// `now + ttl`. It ignores the item's signed expiry.
    /// See [`Validator::deadline_for`] for the deadline a store gives an item.
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

    /// The deadline a store gives `item` put now with the `requested_ms` deadline (a
    /// replica's, from [`PutOptions::expires_at_ms`]): the earliest of the item's signed
    /// expiry, the requested deadline and `now + ttl`. An item whose signed expiry (or
    /// requested deadline) is not after `now_ms` is [`Rejection::Expired`].
    pub fn deadline_for(
        &self,
        item: &MutableItem,
        requested_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, Rejection> {
        check_signed_expiry(item, now_ms)?;
        Ok(self
            .expiry_for(requested_ms, now_ms)?
            .min(item.expires_at_ms))
    }
}

/// Rejects an item whose signed expiry is not after `now_ms`.
fn check_signed_expiry(item: &MutableItem, now_ms: u64) -> Result<(), Rejection> {
    if item.expires_at_ms <= now_ms {
        return Err(Rejection::Expired {
            expires_at_ms: item.expires_at_ms,
            now_ms,
        });
    }
    Ok(())
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
    /// Requested deadline (unix ms). Replicas pass their deadline on; publishers leave it
    /// `None`. The stored deadline never exceeds the item's signed expiry.
    pub expires_at_ms: Option<u64>,
}

/// A stored item with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    /// The item (a tombstone is stored without a value).
    pub item: MutableItem,
    /// When it lapses here, unix ms: never after the item's signed expiry.
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
    /// A different item with the same seq was stored and the incoming one wins
    /// [`precedence`]: replace it. The publisher equivocated (or re-signed the same
    /// content differently); replicas converge on the winner.
    Supersede {
        /// The seq both items claim.
        seq: u64,
    },
    /// An item with the same signing payload is stored: nothing changes (in particular
    /// not the stored deadline, which only the publisher's signature moves).
    Refresh,
}

/// SHA-256 of an item's signing payload.
fn payload_digest(item: &MutableItem) -> [u8; 32] {
    Sha256::digest(item.signing_payload()).into()
}

/// THE total order on the items of one target: every replica, reader and read repair
/// applies it, so that replicas that saw the same items in any order hold the same one.
/// `Greater` means `a` wins.
///
/// 1. The higher seq wins.
/// 2. At equal seq a tombstone beats a value (a delete is never undone by a conflicting
///    write at its own seq).
/// 3. Then the item with the lower SHA-256 of its signing payload wins.
/// 4. Then the lower signature bytes win (identical payloads signed differently, e.g. by
///    the subject and by an authorized publisher).
/// 5. Then the lower signer key (scheme tag, then bytes) wins, so that only identical
///    items compare `Equal`.
pub fn precedence(a: &MutableItem, b: &MutableItem) -> Ordering {
    a.seq
        .cmp(&b.seq)
        .then_with(|| a.is_tombstone().cmp(&b.is_tombstone()))
        .then_with(|| {
            if a.same_signed_bytes(b) {
                Ordering::Equal
            } else {
                payload_digest(b).cmp(&payload_digest(a))
            }
        })
        .then_with(|| b.signature.as_bytes().cmp(a.signature.as_bytes()))
        .then_with(|| {
            (b.signer.scheme().tag(), b.signer.as_bytes())
                .cmp(&(a.signer.scheme().tag(), a.signer.as_bytes()))
        })
}

/// The ordering rule: decides what `incoming` does given what is `existing` at its
/// target (expired items count as absent). Every store calls this under its write lock.
///
/// An incoming item whose signed expiry is not after `now_ms` is [`Rejection::Expired`].
/// Against a live stored item: a higher seq replaces it, a lower seq is
/// [`Rejection::Stale`]; at equal seq an item with the same signing payload is a
/// [`Admission::Refresh`] (unless it was signed differently and wins [`precedence`]: then
/// it supersedes), a different item that wins [`precedence`] is a
/// [`Admission::Supersede`], and one that loses is a [`Rejection::Equivocation`].
pub fn admit(
    existing: Option<&StoredItem>,
    incoming: &VerifiedItem,
    cas: Option<Cas>,
    now_ms: u64,
) -> Result<Admission, Rejection> {
    let existing = existing.filter(|e| !e.is_expired(now_ms));
    let inc = incoming.item();
    check_signed_expiry(inc, now_ms)?;
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
        return Ok(Admission::Replace {
            previous_seq: stored,
        });
    }
    if inc.seq < stored {
        return Err(Rejection::Stale {
            incoming: inc.seq,
            stored,
        });
    }
    let wins = precedence(inc, &e.item) == Ordering::Greater;
    if e.item.same_signed_bytes(inc) {
        // The same payload: nothing new, unless signed differently and winning the
        // tie-break (so that replicas also agree on the signature they hold).
        Ok(if wins {
            Admission::Supersede { seq: stored }
        } else {
            Admission::Refresh
        })
    } else if wins {
        Ok(Admission::Supersede { seq: stored })
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
        // A different item at the same seq: the precedence winner supersedes, the loser
        // is an equivocation, whichever of the two is stored.
        let (win, lose) = if precedence(v5b.item(), v5.item()) == Ordering::Greater {
            (&v5b, &v5)
        } else {
            (&v5, &v5b)
        };
        assert_eq!(
            admit(Some(&stored(lose, 1000)), win, None, 0),
            Ok(Admission::Supersede { seq: 5 })
        );
        assert_eq!(
            admit(Some(&stored(win, 1000)), lose, None, 0)
                .unwrap_err()
                .code(),
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
        // An item whose signed expiry passed is refused, stored or not.
        let until = v5.item().expires_at_ms;
        assert_eq!(
            admit(None, &v5, None, until).unwrap_err().code(),
            ReasonCode::Expired
        );
        assert_eq!(
            admit(Some(&s5), &v5, None, until).unwrap_err().code(),
            ReasonCode::Expired
        );
    }

    #[test]
    fn precedence_is_seq_then_tombstone_then_lower_digest_then_lower_signature() {
        let key = SigningKey::generate_ed25519();
        let mirror = SigningKey::generate_secp256k1();
        let pk = key.public_key();
        let v5 = MutableItem::sign_until(&key, pk, "tp", 5, "a", 10);
        let v6 = MutableItem::sign_until(&key, pk, "tp", 6, "a", 10);
        let t5 = MutableItem::tombstone_until(&key, pk, "tp", 5, 10);
        assert_eq!(precedence(&v6, &v5), Ordering::Greater);
        assert_eq!(precedence(&v5, &v6), Ordering::Less);
        assert_eq!(precedence(&t5, &v5), Ordering::Greater);
        assert_eq!(precedence(&v6, &t5), Ordering::Greater);
        assert_eq!(precedence(&v5, &v5.clone()), Ordering::Equal);
        // Equal seq, both values: the lower payload digest wins.
        let other = MutableItem::sign_until(&key, pk, "tp", 5, "b", 10);
        let want = payload_digest(&other).cmp(&payload_digest(&v5)).reverse();
        assert_ne!(want, Ordering::Equal);
        assert_eq!(precedence(&other, &v5), want);
        assert_eq!(precedence(&v5, &other), want.reverse());
        // Only the expiry differs: a different payload, ordered by digest too.
        let later = MutableItem::sign_until(&key, pk, "tp", 5, "a", 11);
        assert_ne!(precedence(&later, &v5), Ordering::Equal);
        // The same payload signed by another key: the lower signature wins.
        let by_mirror = MutableItem::sign_until(&mirror, pk, "tp", 5, "a", 10);
        let want = by_mirror
            .signature
            .as_bytes()
            .cmp(v5.signature.as_bytes())
            .reverse();
        assert_eq!(precedence(&by_mirror, &v5), want);
        assert_eq!(precedence(&v5, &by_mirror), want.reverse());
    }

    #[test]
    fn the_same_payload_signed_differently_converges_on_the_precedence_winner() {
        let key = SigningKey::generate_ed25519();
        let mirror = SigningKey::generate_secp256k1();
        let pk = key.public_key();
        let val = Validator::new(Policy::default().authorize("tp", mirror.public_key()));
        let own = val
            .validate(MutableItem::sign_until(&key, pk, "tp", 5, "a", u64::MAX))
            .unwrap();
        let mirrored = val
            .validate(MutableItem::sign_until(&mirror, pk, "tp", 5, "a", u64::MAX))
            .unwrap();
        let (win, lose) = if precedence(own.item(), mirrored.item()) == Ordering::Greater {
            (&own, &mirrored)
        } else {
            (&mirrored, &own)
        };
        assert_eq!(
            admit(Some(&stored(lose, 1000)), win, None, 0),
            Ok(Admission::Supersede { seq: 5 })
        );
        assert_eq!(
            admit(Some(&stored(win, 1000)), lose, None, 0),
            Ok(Admission::Refresh)
        );
    }

    #[test]
    fn the_deadline_is_the_earliest_of_signed_requested_and_ttl() {
        let val = Validator::new(Policy {
            ttl: Duration::from_secs(10),
            ..Policy::default()
        });
        let key = SigningKey::generate_ed25519();
        let item = |until| MutableItem::sign_until(&key, key.public_key(), "tp", 1, "v", until);
        assert_eq!(val.deadline_for(&item(u64::MAX), None, 1_000), Ok(11_000));
        assert_eq!(val.deadline_for(&item(4_000), None, 1_000), Ok(4_000));
        assert_eq!(
            val.deadline_for(&item(4_000), Some(3_000), 1_000),
            Ok(3_000)
        );
        assert_eq!(
            val.deadline_for(&item(4_000), Some(9_000), 1_000),
            Ok(4_000)
        );
        for (until, requested) in [(1_000, None), (999, Some(5_000)), (5_000, Some(1_000))] {
            assert_eq!(
                val.deadline_for(&item(until), requested, 1_000)
                    .unwrap_err()
                    .code(),
                ReasonCode::Expired
            );
        }
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
