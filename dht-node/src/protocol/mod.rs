//! The item protocol: this project's own request-response protocol for put (with a
//! truthful per-replica answer), get and bulk sync. Routing (FIND_NODE) uses libp2p-kad
//! under [`KAD_PROTOCOL`]; items never travel in kad records.
//!
//! The node speaks it in the typed [`Request`] and [`Response`]; the prost messages of
//! the wire ([`wire`], private) and the framing ([`codec`]) stay inside this module.
//! Converting from the wire decodes every item against the policy's [`DecodeLimits`]
//! ([`decode_limits`], the one place they are built); an item that does not decode is
//! carried as its [`Rejection`], so one malformed item of a batch is refused alone.

mod codec;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod wire;

use dht_core::wire::{DecodeLimits, Envelope, EnvelopeProto, ItemProto, ENVELOPE_VERSION};
use dht_core::{MutableItem, Policy, Rejection};
use libp2p::StreamProtocol;

pub use codec::{ItemCodec, ItemRequest};
pub(crate) use request::{PutItem, Request, SyncRequest};
pub(crate) use response::{PutResult, Refusal, Response, SyncPage};
/// The prost messages, for tests that put hostile frames on the wire.
#[cfg(feature = "test-util")]
pub use wire::*;

/// The kad protocol name of this DHT (never the IPFS one).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/skywire-dht/kad/1.0.0");
/// The item protocol name.
pub const ITEM_PROTOCOL: StreamProtocol = StreamProtocol::new("/skywire-dht/item/1.0.0");

/// A response frame as the codec reads and writes it; [`Response::decode`] turns it into
/// a [`Response`].
pub(crate) type ResponseFrame = wire::ResponseProto;

/// The decode limits of `policy`: every item read from the wire is held to them.
pub(crate) fn decode_limits(policy: &Policy) -> DecodeLimits {
    DecodeLimits {
        max_value_len: policy.max_value_len,
    }
}

/// Bytes an item takes in a put or sync frame (an upper bound).
pub(crate) fn encoded_size(item: &MutableItem) -> usize {
    item.stored_size() + 128
}

/// A part of a message read from the wire: decoded, or the reason it was refused.
pub(crate) type Decoded<T> = Result<T, Rejection>;

/// The wire form of an item and its deadline (0: none given). The only place an
/// envelope is built.
fn envelope_proto(item: &MutableItem, expires_at_ms: Option<u64>) -> EnvelopeProto {
    EnvelopeProto {
        version: ENVELOPE_VERSION,
        item: Some(ItemProto::from(item)),
        expires_at_ms: expires_at_ms.unwrap_or(0),
    }
}

fn decode_envelope(env: EnvelopeProto, limits: &DecodeLimits) -> Decoded<Envelope> {
    env.into_envelope(limits).map_err(Rejection::from)
}

fn encode_envelope(env: &Decoded<Envelope>) -> EnvelopeProto {
    match env {
        Ok(e) => envelope_proto(&e.item, e.expires_at_ms),
        // Only a decoded response carries a rejected copy; it is never sent on.
        Err(_) => EnvelopeProto::default(),
    }
}
