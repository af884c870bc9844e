//! The Skywire data shapes the DHT carries, byte-compatible with what the transport,
//! service and DMSG discoveries send and serve. Parsers keep unknown fields.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A transport entry, as `GET /v3/transports/edge:{pk}` serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransportEntry {
    /// Transport id (name-based UUID, see [`transport_id`]).
    pub t_id: String,
    /// The two edges, hex keys sorted ascending.
    pub edges: [String; 2],
    /// stcpr, sudph, stcp, dmsg, squicr, swsr, swtr, webrtc.
    #[serde(rename = "type")]
    pub transport_type: String,
    /// user, automatic, skycoin.
    pub label: String,
    /// Fields of newer discoveries (timing, quality), kept as they came.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl TransportEntry {
    /// A new entry between two edges (hex keys); edges are sorted and the id derived.
    pub fn new(a: &str, b: &str, transport_type: &str, label: &str) -> Self {
        let mut edges = [a.to_ascii_lowercase(), b.to_ascii_lowercase()];
        edges.sort();
        TransportEntry {
            t_id: transport_id(&edges[0], &edges[1], transport_type),
            edges,
            transport_type: transport_type.into(),
            label: label.into(),
            extra: Default::default(),
        }
    }
}

/// Skywire's transport id: SHA256(16 zero bytes || edgeA || edgeB || type), first 16
/// bytes, version nibble cleared, RFC 4122 variant set, as a UUID string. Edges are the
/// raw 33-byte keys (hex given), in sorted order.
pub fn transport_id(edge_a: &str, edge_b: &str, transport_type: &str) -> String {
    let mut h = Sha256::new();
    h.update([0u8; 16]);
    h.update(hex::decode(edge_a).unwrap_or_else(|_| edge_a.as_bytes().to_vec()));
    h.update(hex::decode(edge_b).unwrap_or_else(|_| edge_b.as_bytes().to_vec()));
    h.update(transport_type.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] &= 0x0f;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// The canonical bytes of an edge's full transport list: the DHT value under salt "tp"
/// and the body of `GET /v3/transports/edge:{pk}`. Entries are ordered by id so every
/// writer produces the same bytes for the same set.
pub fn encode_transport_list(entries: &[TransportEntry]) -> Vec<u8> {
    let mut sorted: Vec<&TransportEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.t_id.cmp(&b.t_id));
    serde_json::to_vec(&sorted).expect("transport entries serialise")
}

/// A service entry of the service discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// `<hex pk>:<port>`.
    pub address: String,
    /// skysocks (alias proxy), vpn, visor, coin.
    #[serde(rename = "type")]
    pub service_type: String,
    /// Everything else (geo, version, local_ips, info, ...), kept as it came.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The canonical bytes of a visor's full service list (salt "svc"), ordered by type then
/// address.
pub fn encode_service_list(entries: &[ServiceEntry]) -> Vec<u8> {
    let mut sorted: Vec<&ServiceEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| (&a.service_type, &a.address).cmp(&(&b.service_type, &b.address)));
    serde_json::to_vec(&sorted).expect("service entries serialise")
}

/// A DMSG discovery entry: kept as raw JSON (it is signed by its own key over Go's
/// field order, so it must travel byte for byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmsgEntry {
    /// The entry's `static` key (hex).
    pub static_pk: String,
    /// The entry's JSON, as the DMSG discovery serves it.
    pub raw: Vec<u8>,
}

impl DmsgEntry {
    /// Parses the entry enough to know its key; the bytes are kept untouched.
    pub fn from_json(raw: Vec<u8>) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "static")]
            static_pk: String,
        }
        let head: Head = serde_json::from_slice(&raw)?;
        Ok(DmsgEntry {
            static_pk: head.static_pk,
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_id_is_a_name_based_uuid() {
        let a = format!("02{}", "11".repeat(32));
        let b = format!("03{}", "22".repeat(32));
        let id = transport_id(&a, &b, "stcpr");
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "0", "version nibble cleared: {id}");
        assert!(
            matches!(&id[19..20], "8" | "9" | "a" | "b"),
            "variant: {id}"
        );
        assert_eq!(id, transport_id(&a, &b, "stcpr"));
        assert_ne!(id, transport_id(&a, &b, "sudph"));
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let text = r#"[{"t_id":"x","edges":["02aa","03bb"],"type":"stcpr","label":"automatic","latency":12}]"#;
        let entries: Vec<TransportEntry> = serde_json::from_str(text).unwrap();
        assert_eq!(entries[0].extra["latency"], 12);
        assert_eq!(encode_transport_list(&entries), text.as_bytes());
    }

    #[test]
    fn list_encoding_is_order_independent() {
        let a = format!("02{}", "11".repeat(32));
        let e1 = TransportEntry::new(&a, &format!("03{}", "22".repeat(32)), "stcpr", "automatic");
        let e2 = TransportEntry::new(&a, &format!("03{}", "33".repeat(32)), "dmsg", "user");
        assert_eq!(
            encode_transport_list(&[e1.clone(), e2.clone()]),
            encode_transport_list(&[e2, e1])
        );
    }
}
