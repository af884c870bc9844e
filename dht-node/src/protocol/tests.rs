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
            },
            PutItem {
                item: it.clone(),
                opts: PutOptions {
                    cas: Some(Cas::Absent),
                    expires_at_ms: Some(it.expires_at_ms - 1),
                },
            },
            PutItem {
                item: it.clone(),
                opts: PutOptions {
                    cas: Some(Cas::Seq(2)),
                    expires_at_ms: None,
                },
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
