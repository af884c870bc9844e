//! Round trips of every request and response through the wire, and the decoding of
//! malformed frames.

use bytes::Bytes;
use dht_core::wire::{DecodeLimits, Envelope};
use dht_core::{
    Admission, Cas, MutableItem, Policy, PutOptions, ReasonCode, Rejection, SigningKey,
};
use prost::Message;

use super::wire::{self, request_proto};
use super::*;
use crate::report::ReplicaResult;

fn item(seq: u64) -> MutableItem {
    let key = SigningKey::generate_ed25519();
    MutableItem::sign(&key, key.public_key(), "svc", seq, &b"[1,2,3]"[..])
}

fn limits() -> DecodeLimits {
    decode_limits(&Policy::default())
}

/// Through the wire and back, bytes included.
fn request_round_trip(r: Request) -> Request {
    let bytes = wire::RequestProto::from(r).encode_to_vec();
    Request::decode(
        ItemRequest::Message(wire::RequestProto::decode(&bytes[..]).unwrap()),
        &limits(),
    )
    .unwrap()
}

fn response_round_trip(r: Response) -> Response {
    let bytes = ResponseFrame::from(r).encode_to_vec();
    Response::decode(ResponseFrame::decode(&bytes[..]).unwrap(), &limits()).unwrap()
}

#[test]
fn every_request_round_trips() {
    let it = item(3);
    let requests = [
        Request::put([
            PutItem {
                item: it.clone(),
                opts: PutOptions::default(),
                coded: None,
            },
            PutItem {
                item: it.clone(),
                opts: PutOptions {
                    cas: Some(Cas::Absent),
                    expires_at_ms: Some(it.expires_at_ms - 1),
                },
                coded: None,
            },
            PutItem {
                item: it.clone(),
                opts: PutOptions {
                    cas: Some(Cas::Seq(2)),
                    expires_at_ms: None,
                },
                coded: None,
            },
        ]),
        Request::put([]),
        Request::Get(it.target()),
        Request::Sync(SyncRequest {
            since: 1 << 40,
            limit: 17,
            salt: Bytes::from_static(b"tp"),
        }),
        Request::Sync(SyncRequest {
            since: 0,
            limit: 0,
            salt: Bytes::new(),
        }),
    ];
    for r in requests {
        assert_eq!(request_round_trip(r.clone()), r);
    }
}

#[test]
fn every_response_round_trips() {
    let it = item(9);
    let results = [
        PutResult::Stored(Admission::Insert),
        PutResult::Stored(Admission::Replace { previous_seq: 7 }),
        PutResult::Stored(Admission::Refresh),
        PutResult::Stored(Admission::Supersede { seq: 9 }),
        PutResult::NeedBase { held_seq: 1 << 40 },
        PutResult::NeedBase { held_seq: 0 },
        PutResult::Rejected {
            code: ReasonCode::Stale,
            detail: "old".into(),
        },
    ];
    let responses = [
        Response::Put(results.to_vec()),
        Response::Get(None),
        Response::held(it.clone(), 0),
        Response::held(it.clone(), it.expires_at_ms - 5),
        Response::Sync(SyncPage {
            items: vec![Ok(Envelope {
                item: it.clone(),
                expires_at_ms: None,
            })],
            next: (1 << 40) + 1,
            done: true,
            epoch: u64::MAX,
        }),
        Response::refused(Refusal::RATE_LIMITED, "too many requests"),
    ];
    for r in responses {
        assert_eq!(response_round_trip(r.clone()), r);
    }
}

#[test]
fn a_put_result_keeps_its_whole_admission() {
    for a in [
        Admission::Insert,
        Admission::Replace { previous_seq: 7 },
        Admission::Refresh,
        Admission::Supersede { seq: 9 },
    ] {
        let wire = wire::PutResultProto::from(&PutResult::Stored(a));
        assert_eq!(
            ReplicaResult::from(PutResult::from(wire)),
            ReplicaResult::Stored(a)
        );
    }
    // An unknown outcome or reason tag reads as a malformed rejection.
    let odd = PutResult::from(wire::PutResultProto {
        outcome: 99,
        reason: 12345,
        detail: "?".into(),
        previous_seq: 0,
    });
    assert!(matches!(
        odd,
        PutResult::Rejected {
            code: ReasonCode::Malformed,
            ..
        }
    ));
}

#[test]
fn malformed_requests_are_refused_or_rejected_per_item() {
    let l = limits();
    let empty =
        Request::decode(ItemRequest::Message(wire::RequestProto { kind: None }), &l).unwrap_err();
    assert_eq!(empty.code, Refusal::MALFORMED);
    let short = wire::RequestProto {
        kind: Some(request_proto::Kind::Get(wire::GetRequestProto {
            target: Bytes::from_static(b"short"),
        })),
    };
    assert_eq!(
        Request::decode(ItemRequest::Message(short), &l)
            .unwrap_err()
            .detail,
        "target must be 32 bytes"
    );
    // One bad item of a batch is rejected alone.
    let mut good = wire::RequestProto::from(Request::put([PutItem {
        item: item(1),
        opts: PutOptions::default(),
        coded: None,
    }]));
    if let Some(request_proto::Kind::Put(p)) = &mut good.kind {
        let mut bad_cas = p.items[0].clone();
        bad_cas.cas_kind = 7;
        p.items.push(bad_cas);
        p.items.push(wire::PutItemProto::default());
    }
    let Request::Put(items) = Request::decode(ItemRequest::Message(good), &l).unwrap() else {
        panic!("a put")
    };
    assert!(items[0].is_ok());
    assert_eq!(
        items[1],
        Err(Rejection::Malformed("unknown cas kind 7".into()))
    );
    assert_eq!(items[2].as_ref().unwrap_err().code(), ReasonCode::Malformed);
    // A copy over the value limit is carried as its rejection.
    let big = {
        let key = SigningKey::generate_ed25519();
        MutableItem::sign(&key, key.public_key(), "svc", 1, vec![0u8; 64])
    };
    let frame = ResponseFrame::from(Response::held(big, 0));
    let tight = DecodeLimits { max_value_len: 10 };
    let Response::Get(Some(Err(r))) = Response::decode(frame, &tight).unwrap() else {
        panic!("a rejected copy")
    };
    assert_eq!(r.code(), ReasonCode::TooLarge);
    assert_eq!(
        Response::decode(ResponseFrame { kind: None }, &l),
        Err(response::EmptyResponse)
    );
}

#[test]
fn a_refusal_names_its_reason_code_when_it_has_one() {
    assert_eq!(
        Refusal::new(ReasonCode::TooLarge.as_str(), "").reason(),
        Some(ReasonCode::TooLarge)
    );
    assert_eq!(Refusal::new(Refusal::RATE_LIMITED, "").reason(), None);
}

/// A request through the codec's writer on `protocol`, and back through its reader.
async fn through_codec(r: Request, protocol: &libp2p::StreamProtocol) -> (usize, Request) {
    use libp2p::request_response::Codec;
    let traffic = prometheus_client::metrics::family::Family::default();
    let mut codec = ItemCodec::new(2 << 20, &traffic);
    let mut io = futures::io::Cursor::new(Vec::new());
    codec
        .write_request(protocol, &mut io, r.into())
        .await
        .unwrap();
    let bytes = io.into_inner();
    let len = bytes.len();
    let mut io = futures::io::Cursor::new(bytes);
    let frame = codec.read_request(protocol, &mut io).await.unwrap();
    (len, Request::decode(frame, &limits()).unwrap())
}

fn big_item(seq: u64, value: Vec<u8>) -> MutableItem {
    let key = SigningKey::generate_ed25519();
    MutableItem::sign(&key, key.public_key(), "tp", seq, value)
}

#[tokio::test]
async fn coded_values_go_only_to_peers_speaking_1_1_0() {
    use dht_core::codec::WireValue;
    let value: Vec<u8> = (0..400u32)
        .flat_map(|i| format!("{{\"t_id\":\"{i:08x}\",\"type\":\"stcpr\"}},").into_bytes())
        .collect();
    let it = big_item(2, value.clone());
    let base: Vec<u8> = value[..value.len() - 30].to_vec();
    for coded in [
        WireValue::encode_for(&value, None),
        WireValue::encode_for(&value, Some((1, &base))),
    ] {
        assert!(!matches!(coded, WireValue::Plain(_)), "{coded:?}");
        let put = PutItem {
            item: it.clone(),
            opts: PutOptions::default(),
            coded: Some(coded.clone()),
        };
        // 1.0.0: the value as is, no coded form.
        let (plain_len, back) = through_codec(Request::put([put.clone()]), &ITEM_PROTOCOL).await;
        assert_eq!(back, Request::put([PutItem::plain(it.clone(), put.opts)]));
        assert!(plain_len > value.len());
        // 1.1.0: the coded form with an empty value, which the replica fills in.
        let (coded_len, back) = through_codec(Request::put([put]), &ITEM_PROTOCOL_CODED).await;
        assert!(coded_len < plain_len / 2, "{coded_len} vs {plain_len}");
        let Request::Put(mut items) = back else {
            panic!("a put")
        };
        let got = items.pop().unwrap().unwrap();
        assert_eq!(got.coded.as_ref(), Some(&coded));
        assert_eq!(got.item.value().map(|v| v.len()), Some(0));
        let Ok(dht_core::codec::Decoded::Value(v)) =
            got.coded.clone().unwrap().decode(Some((1, &base)), 1 << 20)
        else {
            panic!("decodes")
        };
        assert_eq!(got.with_value(v), it);
    }
}

#[test]
fn malformed_coded_values_are_rejected_per_item() {
    let it = big_item(2, vec![]);
    let coded = |form: u32, hash: usize| wire::PutItemProto {
        envelope: Some(envelope_proto(&it, None)),
        cas_kind: 0,
        cas_seq: 0,
        coded: Some(wire::ValueCodecProto {
            form,
            data: Bytes::from_static(b"x"),
            base_seq: 1,
            base_hash: vec![0u8; hash].into(),
        }),
    };
    let with_value = wire::PutItemProto {
        envelope: Some(envelope_proto(&item(2), None)),
        ..coded(1, 0)
    };
    let frame = wire::RequestProto {
        kind: Some(request_proto::Kind::Put(wire::PutRequestProto {
            items: vec![
                coded(1, 0),
                coded(2, 32),
                coded(3, 0),
                coded(2, 31),
                with_value,
            ],
        })),
    };
    let Request::Put(items) = Request::decode(ItemRequest::Message(frame), &limits()).unwrap()
    else {
        panic!("a put")
    };
    assert!(items[0].is_ok() && items[1].is_ok());
    let codes: Vec<_> = items[2..]
        .iter()
        .map(|i| i.as_ref().unwrap_err().code())
        .collect();
    assert_eq!(codes, [ReasonCode::Malformed; 3]);
}

#[test]
fn members_round_trip_within_their_bounds_and_garbage_entries_are_dropped() {
    use super::response::{MAX_MEMBERS, MAX_MEMBER_ADDRS};
    use libp2p::{Multiaddr, PeerId};
    assert_eq!(request_round_trip(Request::Members), Request::Members);
    let addr: Multiaddr = "/ip4/10.0.0.1/tcp/4000".parse().unwrap();
    let members: Vec<(PeerId, Vec<Multiaddr>)> = (0..3)
        .map(|_| (PeerId::random(), vec![addr.clone()]))
        .collect();
    assert_eq!(
        response_round_trip(Response::Members(members.clone())),
        Response::Members(members)
    );
    // A hostile answer: too many members, too many addresses, ids and addresses that do
    // not decode, a member without addresses.
    let good = wire::MemberProto {
        peer_id: Bytes::from(PeerId::random().to_bytes()),
        addrs: vec![Bytes::from(addr.to_vec()); MAX_MEMBER_ADDRS + 5],
    };
    let mut list = vec![
        wire::MemberProto {
            peer_id: Bytes::from_static(b"not a peer id"),
            addrs: vec![Bytes::from(addr.to_vec())],
        },
        wire::MemberProto {
            peer_id: Bytes::from(PeerId::random().to_bytes()),
            addrs: vec![Bytes::from_static(b"\xff\xff garbage")],
        },
        wire::MemberProto {
            peer_id: Bytes::from(PeerId::random().to_bytes()),
            addrs: Vec::new(),
        },
    ];
    list.extend(std::iter::repeat_n(good, MAX_MEMBERS + 10));
    let frame = wire::ResponseProto {
        kind: Some(wire::response_proto::Kind::Members(
            wire::MembersResponseProto { members: list },
        )),
    };
    let bytes = frame.encode_to_vec();
    match Response::decode(ResponseFrame::decode(&bytes[..]).unwrap(), &limits()).unwrap() {
        Response::Members(m) => {
            // The three bad entries count against the bound, then are dropped.
            assert_eq!(m.len(), MAX_MEMBERS - 3);
            assert!(m.iter().all(|(_, a)| a.len() == MAX_MEMBER_ADDRS));
        }
        other => panic!("not a members answer: {other:?}"),
    }
}
