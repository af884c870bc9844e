//! The prost messages of the item protocol, field for field as in
//! `dht-node/proto/item_protocol.proto` (checked by `tests/protocol_files.rs`). Private
//! to [`crate::protocol`]: the rest of the node sees only the typed [`super::Request`]
//! and [`super::Response`].

use bytes::Bytes;
use dht_core::wire::EnvelopeProto;
use prost::Message;

/// A request of the item protocol.
#[derive(Clone, PartialEq, Message)]
pub struct RequestProto {
    /// The request.
    #[prost(oneof = "request_proto::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<request_proto::Kind>,
}

/// The kinds of [`RequestProto`].
pub mod request_proto {
    /// Request kinds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Store items.
        #[prost(message, tag = "1")]
        Put(super::PutRequestProto),
        /// Read the item at a target.
        #[prost(message, tag = "2")]
        Get(super::GetRequestProto),
        /// Bulk, change-ordered sync of what the requester should hold.
        #[prost(message, tag = "3")]
        Sync(super::SyncRequestProto),
        /// The full nodes the responder knows (its routing table).
        #[prost(message, tag = "4")]
        Members(super::MembersRequestProto),
    }
}

/// Ask for the full nodes the responder knows.
#[derive(Clone, PartialEq, Message)]
pub struct MembersRequestProto {}

/// One full node: its id and dialable addresses.
#[derive(Clone, PartialEq, Message)]
pub struct MemberProto {
    /// The peer id (multihash bytes).
    #[prost(bytes = "bytes", tag = "1")]
    pub peer_id: Bytes,
    /// Its dialable addresses (multiaddr bytes).
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub addrs: Vec<Bytes>,
}

/// The full nodes the responder knows.
#[derive(Clone, PartialEq, Message)]
pub struct MembersResponseProto {
    /// At most 1,024 members, at most 8 addresses each.
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<MemberProto>,
}

/// One item to store.
#[derive(Clone, PartialEq, Message)]
pub struct PutItemProto {
    /// The item and the expiry it carries.
    #[prost(message, optional, tag = "1")]
    pub envelope: Option<EnvelopeProto>,
    /// 0 none, 1 only if absent, 2 only if the stored seq is `cas_seq`.
    #[prost(uint32, tag = "2")]
    pub cas_kind: u32,
    /// Expected stored seq for `cas_kind == 2`.
    #[prost(uint64, tag = "3")]
    pub cas_seq: u64,
    /// The value in a coded form (item protocol 1.1.0 only); the item's value is then
    /// empty. In memory, before the codec writes it, the item keeps its full value too:
    /// the codec sends one or the other depending on the negotiated protocol.
    #[prost(message, optional, tag = "4")]
    pub coded: Option<ValueCodecProto>,
}

/// A value in a coded form (see `dht_core::codec::WireValue`).
#[derive(Clone, PartialEq, Message)]
pub struct ValueCodecProto {
    /// 1 zstd frame of the value, 2 patch from the base.
    #[prost(uint32, tag = "1")]
    pub form: u32,
    /// The zstd frame or the patch.
    #[prost(bytes = "bytes", tag = "2")]
    pub data: Bytes,
    /// The seq of the base (form 2).
    #[prost(uint64, tag = "3")]
    pub base_seq: u64,
    /// SHA-256 of the base value (form 2).
    #[prost(bytes = "bytes", tag = "4")]
    pub base_hash: Bytes,
}

/// Store one or more items.
#[derive(Clone, PartialEq, Message)]
pub struct PutRequestProto {
    /// Items.
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<PutItemProto>,
}

/// Read one target.
#[derive(Clone, PartialEq, Message)]
pub struct GetRequestProto {
    /// 32-byte target.
    #[prost(bytes = "bytes", tag = "1")]
    pub target: Bytes,
}

/// Sync: items changed after `since` (responder's change sequence) that the requester is
/// responsible for.
#[derive(Clone, PartialEq, Message)]
pub struct SyncRequestProto {
    /// Cursor: responder-local change sequence, exclusive.
    #[prost(uint64, tag = "1")]
    pub since: u64,
    /// Most items in the answer.
    #[prost(uint32, tag = "2")]
    pub limit: u32,
    /// Only items with this salt (empty: all salts).
    #[prost(bytes = "bytes", tag = "3")]
    pub salt: Bytes,
}

/// A response of the item protocol.
#[derive(Clone, PartialEq, Message)]
pub struct ResponseProto {
    /// The response.
    #[prost(oneof = "response_proto::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<response_proto::Kind>,
}

/// The kinds of [`ResponseProto`].
pub mod response_proto {
    /// Response kinds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Outcome per item.
        #[prost(message, tag = "1")]
        Put(super::PutResponseProto),
        /// The item, if held.
        #[prost(message, tag = "2")]
        Get(super::GetResponseProto),
        /// A page of items.
        #[prost(message, tag = "3")]
        Sync(super::SyncResponseProto),
        /// The request was refused as a whole.
        #[prost(message, tag = "4")]
        Error(super::ErrorProto),
        /// The full nodes the responder knows.
        #[prost(message, tag = "5")]
        Members(super::MembersResponseProto),
    }
}

/// The outcome of one put item.
#[derive(Clone, PartialEq, Message)]
pub struct PutResultProto {
    /// 1 inserted, 2 replaced, 3 refreshed, 4 superseded (a different item at the same
    /// seq lost to this one in the total order), 5 need base (a patch's base is not
    /// held: send the full value; `previous_seq` is the seq held, 0 if none), 0 rejected.
    #[prost(uint32, tag = "1")]
    pub outcome: u32,
    /// [`dht_core::ReasonCode::tag`] when rejected.
    #[prost(uint32, tag = "2")]
    pub reason: u32,
    /// Human-readable detail.
    #[prost(string, tag = "3")]
    pub detail: String,
    /// The seq replaced (outcome 2), superseded (outcome 4) or held (outcome 5).
    #[prost(uint64, tag = "4")]
    pub previous_seq: u64,
}

/// Outcome per item, in request order.
#[derive(Clone, PartialEq, Message)]
pub struct PutResponseProto {
    /// One per requested item.
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<PutResultProto>,
}

/// The item held at a target.
#[derive(Clone, PartialEq, Message)]
pub struct GetResponseProto {
    /// Absent when nothing is held.
    #[prost(message, optional, tag = "1")]
    pub envelope: Option<EnvelopeProto>,
}

/// A page of sync.
#[derive(Clone, PartialEq, Message)]
pub struct SyncResponseProto {
    /// Items (with their expiries).
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<EnvelopeProto>,
    /// Cursor for the next request.
    #[prost(uint64, tag = "2")]
    pub next: u64,
    /// Nothing more after this page.
    #[prost(bool, tag = "3")]
    pub done: bool,
    /// The responder's store epoch: cursors are only meaningful within one epoch (a
    /// store created anew starts a new one).
    #[prost(uint64, tag = "4")]
    pub epoch: u64,
}

/// A refused request.
#[derive(Clone, PartialEq, Message)]
pub struct ErrorProto {
    /// Stable code: "rate_limited", "malformed", "not_serving", "internal".
    #[prost(string, tag = "1")]
    pub code: String,
    /// Detail.
    #[prost(string, tag = "2")]
    pub detail: String,
}
