//! The published `.proto` files match what the code sends: frames written by the node's
//! own codec (`ItemCodec`, length prefix stripped) are decoded with the `.proto` files
//! compiled at test time (protox) into dynamic messages (prost-reflect), every field is
//! checked by NAME against the value that was sent, no field is unknown to the schema,
//! and 64-bit fields carry values above 2^32 so a width mismatch would show.

use bytes::Bytes;
use dht_core::wire::{EnvelopeProto, ItemProto, ENVELOPE_VERSION};
use dht_core::{MutableItem, SigningKey};
use dht_node::test_util::{
    request_proto, response_proto, ErrorProto, GetRequestProto, GetResponseProto, ItemCodec,
    ItemRequest, MemberProto, MembersRequestProto, MembersResponseProto, PutItemProto,
    PutRequestProto, PutResponseProto, PutResultProto, RequestProto, ResponseProto,
    SyncRequestProto, SyncResponseProto, ValueCodecProto, ITEM_PROTOCOL, ITEM_PROTOCOL_CODED,
};
use futures::io::Cursor;
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};

const BIG: u64 = (1 << 40) + 7;

fn pool() -> DescriptorPool {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let files = protox::compile(["item.proto", "item_protocol.proto"], [dir])
        .expect("the .proto files compile");
    DescriptorPool::from_file_descriptor_set(files).expect("descriptor pool")
}

fn codec() -> ItemCodec {
    ItemCodec::new(
        2 * 1024 * 1024,
        &dht_node::Metrics::new().item_protocol_bytes,
    )
}

/// The body of the frame the codec writes for a request.
async fn request_frame(req: RequestProto) -> Vec<u8> {
    request_frame_on(&ITEM_PROTOCOL, req).await
}

/// The body of the frame the codec writes for a request on `protocol`.
async fn request_frame_on(protocol: &StreamProtocol, req: RequestProto) -> Vec<u8> {
    let mut io = Cursor::new(Vec::new());
    codec()
        .write_request(protocol, &mut io, ItemRequest::Message(req))
        .await
        .unwrap();
    let bytes = io.into_inner();
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 4, "one length-prefixed frame");
    bytes[4..].to_vec()
}

/// The body of the frame the codec writes for a response.
async fn response_frame(res: ResponseProto) -> Vec<u8> {
    let mut io = Cursor::new(Vec::new());
    codec()
        .write_response(&ITEM_PROTOCOL, &mut io, res)
        .await
        .unwrap();
    io.into_inner()[4..].to_vec()
}

fn decode(pool: &DescriptorPool, name: &str, body: &[u8]) -> DynamicMessage {
    let desc = pool
        .get_message_by_name(&format!("skywire_dht.v2.{name}"))
        .unwrap_or_else(|| panic!("{name} is in the .proto files"));
    let msg = DynamicMessage::decode(desc, body).expect("decodes with the .proto");
    assert_no_unknown_fields(&msg);
    msg
}

fn assert_no_unknown_fields(msg: &DynamicMessage) {
    assert_eq!(
        msg.unknown_fields().count(),
        0,
        "{} has fields the .proto does not know",
        msg.descriptor().full_name()
    );
    for (_, value) in msg.fields() {
        match value {
            Value::Message(m) => assert_no_unknown_fields(m),
            Value::List(list) => {
                for v in list {
                    if let Value::Message(m) = v {
                        assert_no_unknown_fields(m);
                    }
                }
            }
            _ => {}
        }
    }
}

fn get(msg: &DynamicMessage, path: &str) -> Value {
    let mut cur = msg.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let v = cur
            .get_field_by_name(p)
            .unwrap_or_else(|| panic!("field {p} of {path}"))
            .into_owned();
        if i + 1 == parts.len() {
            return v;
        }
        cur = match v {
            Value::Message(m) => m,
            Value::List(l) => match l.into_iter().next() {
                Some(Value::Message(m)) => m,
                other => panic!("{path}: {other:?}"),
            },
            other => panic!("{path}: {other:?}"),
        };
    }
    unreachable!()
}

fn item() -> MutableItem {
    let key = SigningKey::generate_secp256k1();
    MutableItem::sign_until(&key, key.public_key(), "tp", BIG, &b"[list]"[..], BIG + 1)
}

fn check_item(msg: &DynamicMessage, prefix: &str, it: &MutableItem) {
    let p = |f: &str| format!("{prefix}{f}");
    assert_eq!(get(msg, &p("seq")), Value::U64(it.seq));
    assert_eq!(get(msg, &p("expires_at_ms")), Value::U64(it.expires_at_ms));
    assert_eq!(get(msg, &p("salt")), Value::Bytes(it.salt.clone()));
    assert_eq!(
        get(msg, &p("subject")),
        Value::Bytes(Bytes::copy_from_slice(it.subject.as_bytes()))
    );
    assert_eq!(
        get(msg, &p("signer")),
        Value::Bytes(Bytes::copy_from_slice(it.signer.as_bytes()))
    );
    assert_eq!(
        get(msg, &p("signature")),
        Value::Bytes(Bytes::copy_from_slice(it.signature.as_bytes()))
    );
    assert_eq!(
        get(msg, &p("value")),
        Value::Bytes(it.value().unwrap().clone())
    );
    assert_eq!(get(msg, &p("kind")), Value::U32(0));
    assert_eq!(get(msg, &p("subject_scheme")), Value::U32(2));
    assert_eq!(get(msg, &p("signer_scheme")), Value::U32(2));
}

fn envelope(it: &MutableItem) -> EnvelopeProto {
    EnvelopeProto {
        version: ENVELOPE_VERSION,
        item: Some(ItemProto::from(it)),
        expires_at_ms: BIG,
    }
}

#[tokio::test]
async fn request_frames_decode_with_the_published_proto() {
    let pool = pool();
    let it = item();
    // The wire encoding of a bare item (the kad record value).
    let bare = decode(&pool, "ItemProto", &dht_core::wire::encode_item(&it));
    check_item(&bare, "", &it);

    let put = request_frame(RequestProto {
        kind: Some(request_proto::Kind::Put(PutRequestProto {
            items: vec![PutItemProto {
                envelope: Some(envelope(&it)),
                cas_kind: 2,
                cas_seq: BIG + 2,
                coded: None,
            }],
        })),
    })
    .await;
    let m = decode(&pool, "RequestProto", &put);
    assert_eq!(get(&m, "put.items.cas_kind"), Value::U32(2));
    assert_eq!(get(&m, "put.items.cas_seq"), Value::U64(BIG + 2));
    assert_eq!(
        get(&m, "put.items.envelope.version"),
        Value::U32(ENVELOPE_VERSION)
    );
    assert_eq!(get(&m, "put.items.envelope.expires_at_ms"), Value::U64(BIG));
    check_item(&m, "put.items.envelope.item.", &it);

    // Item protocol 1.1.0: a coded value, the item's value left empty.
    let coded = ValueCodecProto {
        form: 2,
        data: Bytes::from_static(b"patch"),
        base_seq: BIG + 1,
        base_hash: Bytes::from(vec![7u8; 32]),
    };
    let put = |protocol: StreamProtocol| {
        let req = RequestProto {
            kind: Some(request_proto::Kind::Put(PutRequestProto {
                items: vec![PutItemProto {
                    envelope: Some(envelope(&it)),
                    cas_kind: 0,
                    cas_seq: 0,
                    coded: Some(coded.clone()),
                }],
            })),
        };
        async move { request_frame_on(&protocol, req).await }
    };
    let frame = put(ITEM_PROTOCOL_CODED).await;
    let m = decode(&pool, "RequestProto", &frame);
    assert_eq!(get(&m, "put.items.coded.form"), Value::U32(2));
    assert_eq!(
        get(&m, "put.items.coded.data"),
        Value::Bytes(Bytes::from_static(b"patch"))
    );
    assert_eq!(get(&m, "put.items.coded.base_seq"), Value::U64(BIG + 1));
    assert_eq!(
        get(&m, "put.items.coded.base_hash"),
        Value::Bytes(Bytes::from(vec![7u8; 32]))
    );
    assert_eq!(
        get(&m, "put.items.envelope.item.value"),
        Value::Bytes(Bytes::new())
    );
    // On 1.0.0 the same request carries the value as is and no coded form.
    let frame = put(ITEM_PROTOCOL).await;
    let m = decode(&pool, "RequestProto", &frame);
    check_item(&m, "put.items.envelope.item.", &it);
    let Value::Message(put) = get(&m, "put") else {
        panic!("a message")
    };
    let items = put.get_field_by_name("items").unwrap().into_owned();
    let Value::List(items) = items else {
        panic!("{items:?}")
    };
    let Value::Message(first) = &items[0] else {
        panic!("a message")
    };
    assert!(!first.has_field_by_name("coded"));

    let target = it.target();
    let g = request_frame(RequestProto {
        kind: Some(request_proto::Kind::Get(GetRequestProto {
            target: Bytes::copy_from_slice(target.as_bytes()),
        })),
    })
    .await;
    let m = decode(&pool, "RequestProto", &g);
    assert_eq!(
        get(&m, "get.target"),
        Value::Bytes(Bytes::copy_from_slice(target.as_bytes()))
    );

    let s = request_frame(RequestProto {
        kind: Some(request_proto::Kind::Sync(SyncRequestProto {
            since: BIG,
            limit: 77,
            salt: Bytes::from_static(b"svc"),
        })),
    })
    .await;
    let m = decode(&pool, "RequestProto", &s);
    assert_eq!(get(&m, "sync.since"), Value::U64(BIG));
    assert_eq!(get(&m, "sync.limit"), Value::U32(77));
    assert_eq!(
        get(&m, "sync.salt"),
        Value::Bytes(Bytes::from_static(b"svc"))
    );

    let r = request_frame(RequestProto {
        kind: Some(request_proto::Kind::Members(MembersRequestProto {})),
    })
    .await;
    let m = decode(&pool, "RequestProto", &r);
    assert!(m.has_field_by_name("members"));
}

#[tokio::test]
async fn response_frames_decode_with_the_published_proto() {
    let pool = pool();
    let it = item();
    let put = response_frame(ResponseProto {
        kind: Some(response_proto::Kind::Put(PutResponseProto {
            results: vec![
                PutResultProto {
                    outcome: 4,
                    reason: 6,
                    detail: "equal seq".into(),
                    previous_seq: BIG,
                },
                PutResultProto {
                    outcome: 5,
                    reason: 0,
                    detail: String::new(),
                    previous_seq: BIG + 1,
                },
            ],
        })),
    })
    .await;
    let m = decode(&pool, "ResponseProto", &put);
    assert_eq!(get(&m, "put.results.outcome"), Value::U32(4));
    assert_eq!(get(&m, "put.results.reason"), Value::U32(6));
    assert_eq!(
        get(&m, "put.results.detail"),
        Value::String("equal seq".into())
    );
    assert_eq!(get(&m, "put.results.previous_seq"), Value::U64(BIG));
    let Value::Message(put) = get(&m, "put") else {
        panic!("a message")
    };
    let results = put.get_field_by_name("results").unwrap().into_owned();
    let Value::List(results) = results else {
        panic!("{results:?}")
    };
    let Value::Message(need_base) = &results[1] else {
        panic!("a message")
    };
    assert_eq!(get(need_base, "outcome"), Value::U32(5));
    assert_eq!(get(need_base, "previous_seq"), Value::U64(BIG + 1));

    let g = response_frame(ResponseProto {
        kind: Some(response_proto::Kind::Get(GetResponseProto {
            envelope: Some(envelope(&it)),
        })),
    })
    .await;
    let m = decode(&pool, "ResponseProto", &g);
    check_item(&m, "get.envelope.item.", &it);

    let s = response_frame(ResponseProto {
        kind: Some(response_proto::Kind::Sync(SyncResponseProto {
            items: vec![envelope(&it)],
            next: BIG,
            done: true,
            epoch: BIG + 3,
        })),
    })
    .await;
    let m = decode(&pool, "ResponseProto", &s);
    assert_eq!(get(&m, "sync.next"), Value::U64(BIG));
    assert_eq!(get(&m, "sync.done"), Value::Bool(true));
    assert_eq!(get(&m, "sync.epoch"), Value::U64(BIG + 3));
    check_item(&m, "sync.items.item.", &it);

    let e = response_frame(ResponseProto {
        kind: Some(response_proto::Kind::Error(ErrorProto {
            code: "too_large".into(),
            detail: "message of 5 bytes".into(),
        })),
    })
    .await;
    let m = decode(&pool, "ResponseProto", &e);
    assert_eq!(get(&m, "error.code"), Value::String("too_large".into()));
    assert_eq!(
        get(&m, "error.detail"),
        Value::String("message of 5 bytes".into())
    );

    let peer = Bytes::from(libp2p::PeerId::random().to_bytes());
    let addr: libp2p::Multiaddr = "/ip4/10.1.2.3/tcp/4000".parse().unwrap();
    let addr = Bytes::from(addr.to_vec());
    let r = response_frame(ResponseProto {
        kind: Some(response_proto::Kind::Members(MembersResponseProto {
            members: vec![MemberProto {
                peer_id: peer.clone(),
                addrs: vec![addr.clone()],
            }],
        })),
    })
    .await;
    let m = decode(&pool, "ResponseProto", &r);
    assert_eq!(get(&m, "members.members.peer_id"), Value::Bytes(peer));
    assert_eq!(
        get(&m, "members.members.addrs"),
        Value::List(vec![Value::Bytes(addr)])
    );
}
