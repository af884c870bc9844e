//! The typed requests of the item protocol and their wire form.

use bytes::Bytes;
use dht_core::codec::WireValue;
use dht_core::wire::DecodeLimits;
use dht_core::{Cas, ItemBody, MutableItem, PutOptions, ReasonCode, Rejection, Target};

use super::wire::{self, request_proto};
use super::{envelope_proto, Decoded, ItemRequest, Refusal};

/// One item to store, with its put options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PutItem {
    /// The item.
    pub item: MutableItem,
    /// Compare-and-swap and the deadline it carries.
    pub opts: PutOptions,
    /// The value in a coded form (compressed, or a patch), sent instead of the value
    /// to peers speaking [`super::ITEM_PROTOCOL_CODED`] (others get `item` as is).
    /// In a decoded request it is `Some` only when the value came coded, and `item`'s
    /// value is then empty until the replica rebuilds it ([`PutItem::with_value`]).
    pub coded: Option<WireValue>,
}

impl PutItem {
    /// An item sent as is.
    pub fn plain(item: MutableItem, opts: PutOptions) -> Self {
        PutItem {
            item,
            opts,
            coded: None,
        }
    }

    /// The item with its value rebuilt from the coded form.
    pub fn with_value(mut self, value: Bytes) -> MutableItem {
        self.item.body = ItemBody::Value(value);
        self.item
    }
}

/// Sync: the items changed after `since` (the responder's change sequence) that the
/// requester is responsible for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncRequest {
    /// Cursor: responder-local change sequence, exclusive.
    pub since: u64,
    /// Most items in the answer.
    pub limit: u32,
    /// Only items with this salt (empty: all salts).
    pub salt: Bytes,
}

/// A request of the item protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Store items (in request order; each decoded on its own).
    Put(Vec<Decoded<PutItem>>),
    /// Read the item at a target.
    Get(Target),
    /// A page of changes.
    Sync(SyncRequest),
    /// The full nodes the responder knows.
    Members,
}

impl Request {
    /// A put of `items`.
    pub fn put(items: impl IntoIterator<Item = PutItem>) -> Self {
        Request::Put(items.into_iter().map(Ok).collect())
    }

    /// Decodes a request read from the wire. A request without a kind, or a get of
    /// other than 32 target bytes, is refused as a whole (`malformed`); a put item that
    /// does not decode is carried as its rejection.
    pub fn decode(frame: ItemRequest, limits: &DecodeLimits) -> Result<Self, Refusal> {
        let frame = match frame {
            ItemRequest::Message(m) => m,
            ItemRequest::Oversized { len, limit, .. } => {
                return Err(Refusal::new(
                    ReasonCode::TooLarge.as_str(),
                    format!("message of {len} bytes exceeds the limit of {limit}"),
                ))
            }
        };
        match frame.kind {
            Some(request_proto::Kind::Put(p)) => Ok(Request::Put(
                p.items
                    .into_iter()
                    .map(|i| decode_put_item(i, limits))
                    .collect(),
            )),
            Some(request_proto::Kind::Get(g)) => Target::from_slice(&g.target)
                .map(Request::Get)
                .ok_or_else(|| Refusal::new(Refusal::MALFORMED, "target must be 32 bytes")),
            Some(request_proto::Kind::Sync(s)) => Ok(Request::Sync(SyncRequest {
                since: s.since,
                limit: s.limit,
                salt: s.salt,
            })),
            Some(request_proto::Kind::Members(_)) => Ok(Request::Members),
            None => Err(Refusal::new(Refusal::MALFORMED, "empty request")),
        }
    }
}

impl From<Request> for wire::RequestProto {
    fn from(request: Request) -> Self {
        let kind = match request {
            Request::Put(items) => request_proto::Kind::Put(wire::PutRequestProto {
                items: items
                    .iter()
                    .map(|i| match i {
                        Ok(i) => put_item_proto(i),
                        // Only a decoded request carries a rejected item, and the node
                        // never sends one on: it goes as an empty (malformed) item.
                        Err(_) => wire::PutItemProto::default(),
                    })
                    .collect(),
            }),
            Request::Get(target) => request_proto::Kind::Get(wire::GetRequestProto {
                target: Bytes::copy_from_slice(target.as_bytes()),
            }),
            Request::Sync(s) => request_proto::Kind::Sync(wire::SyncRequestProto {
                since: s.since,
                limit: s.limit,
                salt: s.salt,
            }),
            Request::Members => request_proto::Kind::Members(wire::MembersRequestProto {}),
        };
        wire::RequestProto { kind: Some(kind) }
    }
}

impl From<Request> for ItemRequest {
    fn from(request: Request) -> Self {
        ItemRequest::Message(request.into())
    }
}

fn put_item_proto(p: &PutItem) -> wire::PutItemProto {
    let (cas_kind, cas_seq) = match p.opts.cas {
        None => (0, 0),
        Some(Cas::Absent) => (1, 0),
        Some(Cas::Seq(s)) => (2, s),
    };
    wire::PutItemProto {
        envelope: Some(envelope_proto(&p.item, p.opts.expires_at_ms)),
        cas_kind,
        cas_seq,
        coded: p.coded.as_ref().map(coded_proto),
    }
}

/// The wire form of a coded value. A plain one is never coded (its item carries it).
fn coded_proto(w: &WireValue) -> wire::ValueCodecProto {
    match w {
        WireValue::Plain(_) => wire::ValueCodecProto::default(),
        WireValue::Zstd(frame) => wire::ValueCodecProto {
            form: 1,
            data: frame.clone(),
            base_seq: 0,
            base_hash: Bytes::new(),
        },
        WireValue::Patch {
            base_seq,
            base_hash,
            patch,
        } => wire::ValueCodecProto {
            form: 2,
            data: patch.clone(),
            base_seq: *base_seq,
            base_hash: Bytes::copy_from_slice(base_hash),
        },
    }
}

/// A coded value read from the wire.
fn decode_coded(c: wire::ValueCodecProto) -> Result<WireValue, Rejection> {
    match c.form {
        1 => Ok(WireValue::Zstd(c.data)),
        2 => Ok(WireValue::Patch {
            base_seq: c.base_seq,
            base_hash: <[u8; 32]>::try_from(&c.base_hash[..])
                .map_err(|_| Rejection::Malformed("patch base hash must be 32 bytes".into()))?,
            patch: c.data,
        }),
        f => Err(Rejection::Malformed(format!("unknown value form {f}"))),
    }
}

fn decode_put_item(p: wire::PutItemProto, limits: &DecodeLimits) -> Decoded<PutItem> {
    let env = p
        .envelope
        .ok_or_else(|| Rejection::Malformed("put without item".into()))?
        .into_envelope(limits)?;
    let cas = match p.cas_kind {
        0 => None,
        1 => Some(Cas::Absent),
        2 => Some(Cas::Seq(p.cas_seq)),
        k => return Err(Rejection::Malformed(format!("unknown cas kind {k}"))),
    };
    let coded = p.coded.map(decode_coded).transpose()?;
    if coded.is_some() && env.item.value().is_none_or(|v| !v.is_empty()) {
        return Err(Rejection::Malformed(
            "a coded value goes with an empty value item".into(),
        ));
    }
    Ok(PutItem {
        item: env.item,
        opts: PutOptions {
            cas,
            expires_at_ms: env.expires_at_ms,
        },
        coded,
    })
}
