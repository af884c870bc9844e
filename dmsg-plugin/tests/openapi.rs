//! The gateway's and the push API's OpenAPI documents are exactly as strict as the
//! servers: for every parameter (and the item body), candidate inputs, well-formed and
//! not, are checked against the document's schema here and sent to the real server; a
//! value the document admits must not be refused as malformed (400, or no route), and one
//! it forbids must be. (Format `public-key` means "a point of its curve", which a pattern
//! cannot say; the validator below checks it with `PublicKey::parse_strict`.)

use std::collections::BTreeSet;

use base64::Engine as _;
use dht_core::json::ItemJson;
use dht_core::{MutableItem, Policy, PublicKey, SigningKey};
use dht_node::{NodeConfig, Testnet};
use dmsg_plugin::{DhtPlugin, GatewayConfig, PluginConfig, PushConfig};
use serde_json::{json, Value};

/// A JSON-schema subset validator over one OpenAPI document.
struct Doc(Value);

impl Doc {
    fn new(text: &str) -> Self {
        Doc(serde_json::from_str(text).expect("the document is JSON"))
    }

    fn resolve<'a>(&'a self, s: &'a Value) -> &'a Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let path = r.strip_prefix("#/").expect("local $ref");
                path.split('/').fold(&self.0, |v, k| &v[k])
            }
            None => s,
        }
    }

    /// Whether `schema` admits `v`.
    fn admits(&self, schema: &Value, v: &Value) -> bool {
        let s = self.resolve(schema);
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            if !all.iter().all(|sub| self.admits(sub, v)) {
                return false;
            }
        }
        if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
            if one.iter().filter(|sub| self.admits(sub, v)).count() != 1 {
                return false;
            }
        }
        if let Some(not) = s.get("not") {
            if self.admits(not, v) {
                return false;
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                return false;
            }
        }
        let typed = match s.get("type").and_then(Value::as_str) {
            Some("string") => v.as_str().is_some_and(|t| self.string_ok(s, t)),
            Some("integer") => {
                (v.is_u64() || v.is_i64())
                    && s["minimum"]
                        .as_i64()
                        .is_none_or(|m| v.as_i64().is_none_or(|x| x >= m))
            }
            Some("boolean") => v.is_boolean(),
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            _ => true,
        };
        if !typed {
            return false;
        }
        if let Some(obj) = v.as_object() {
            if let Some(req) = s.get("required").and_then(Value::as_array) {
                if !req.iter().all(|k| obj.contains_key(k.as_str().unwrap())) {
                    return false;
                }
            }
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    if let Some(x) = obj.get(k) {
                        if !self.admits(sub, x) {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    fn string_ok(&self, s: &Value, t: &str) -> bool {
        let chars = t.chars().count() as u64;
        if s["minLength"].as_u64().is_some_and(|m| chars < m)
            || s["maxLength"].as_u64().is_some_and(|m| chars > m)
        {
            return false;
        }
        if let Some(p) = s["pattern"].as_str() {
            if !regex::Regex::new(p).unwrap().is_match(t) {
                return false;
            }
        }
        match s["format"].as_str() {
            Some("public-key") => PublicKey::parse_strict(t).is_ok(),
            Some("service-address") => t
                .split_once(':')
                .is_some_and(|(pk, _)| PublicKey::parse_strict(pk).is_ok()),
            Some("byte") => base64::engine::general_purpose::STANDARD.decode(t).is_ok(),
            _ => true,
        }
    }

    /// Whether a parameter's schema admits the raw text of a path or query value.
    fn admits_raw(&self, schema: &Value, raw: &str) -> bool {
        let s = self.resolve(schema);
        let v = match s["type"].as_str() {
            Some("boolean") => match raw {
                "true" => json!(true),
                "false" => json!(false),
                _ => return false,
            },
            _ => json!(raw),
        };
        self.admits(s, &v)
    }

    /// The (method, path) pairs documented.
    fn routes(&self) -> BTreeSet<(String, String)> {
        self.0["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.clone(), path.clone()))
            })
            .collect()
    }
}

/// Percent-encodes what a path or query value cannot carry raw.
fn enc(s: &str) -> String {
    s.replace('%', "%25")
        .replace(' ', "%20")
        .replace('&', "%26")
        .replace('/', "%2F")
}

/// Candidate public keys: well-formed, and every way to get one wrong.
fn key_candidates() -> Vec<String> {
    let secp = SigningKey::generate_secp256k1().public_key().to_hex();
    let ed = SigningKey::generate_ed25519().public_key().to_hex();
    // An ed25519 value that is no point (the first of a few that fails to decode).
    let ed_off = (1u8..=255)
        .map(|b| hex::encode([b; 32]))
        .find(|k| PublicKey::parse_strict(k).is_err())
        .unwrap();
    vec![
        secp.clone(),
        secp.to_uppercase(),
        ed.clone(),
        ed_off,
        format!("02{}", "00".repeat(32)),
        format!("04{}", &secp[2..]),
        secp[..65].to_string(),
        format!("{secp}00"),
        format!("04{}{}", &secp[2..], &secp[2..]),
        format!(" {secp}"),
        "zz".repeat(33),
        String::new(),
    ]
}

/// A refusal of the request's shape: 400, or no route at all.
async fn refused(r: reqwest::Response) -> (bool, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("JSON answer");
    assert!(status < 400 || body.is_object(), "{status} {body}");
    (
        status == 400 || body["code"] == "no_route",
        format!("{status} {body}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_document_is_exactly_as_strict_as_the_gateway() {
    let doc = Doc::new(dmsg_plugin::gateway::OPENAPI);
    let net = Testnet::builder(1).build().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = dmsg_plugin::gateway::router(net.nodes[0].clone(), GatewayConfig::default());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let http = reqwest::Client::new();
    let pk = SigningKey::generate_secp256k1().public_key().to_hex();
    let valid = |name: &str| match name {
        "pk" | "subject" | "visor" => pk.clone(),
        "salt" => "tp".into(),
        "addr" => format!("{pk}:44"),
        "type" => "vpn".into(),
        "quorum" => "true".into(),
        other => panic!("no valid value for {other}"),
    };
    let mut checked = 0;
    for (method, path) in doc.routes() {
        if method != "get" {
            continue;
        }
        let op = &doc.0["paths"][&path][&method];
        let params: Vec<&Value> = op["parameters"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        for p in &params {
            let name = p["name"].as_str().unwrap();
            let candidates: Vec<String> = match name {
                "pk" | "subject" | "visor" => key_candidates(),
                "salt" => vec!["tp".into(), "s".repeat(64), "s".repeat(65), String::new()],
                "addr" => {
                    let mut c: Vec<String> = ["44", "0", "65535", "65536", "044", "", "x"]
                        .iter()
                        .map(|port| format!("{pk}:{port}"))
                        .collect();
                    c.push(pk.clone());
                    c.extend(key_candidates().iter().map(|k| format!("{k}:44")));
                    c
                }
                "quorum" => ["true", "false", "1", "yes", "null", "", "TRUE"]
                    .map(String::from)
                    .to_vec(),
                "type" => ["vpn", "proxy", "anything-else", ""]
                    .map(String::from)
                    .to_vec(),
                other => panic!("untested parameter {other} of {path}"),
            };
            for c in candidates {
                let mut concrete = path.clone();
                let mut query = Vec::new();
                for q in &params {
                    let n = q["name"].as_str().unwrap();
                    let v = if n == name { c.clone() } else { valid(n) };
                    if q["in"] == "path" {
                        concrete = concrete.replace(&format!("{{{n}}}"), &enc(&v));
                    } else if n == name || q["required"] == true {
                        query.push(format!("{n}={}", enc(&v)));
                    }
                }
                let full = if query.is_empty() {
                    format!("{url}{concrete}")
                } else {
                    format!("{url}{concrete}?{}", query.join("&"))
                };
                let admitted = doc.admits_raw(&p["schema"], &c);
                let (refused, answer) = refused(http.get(&full).send().await.unwrap()).await;
                assert_eq!(
                    admitted,
                    !refused,
                    "{path} {name}={c:?}: the document {} it, the server answered {answer}",
                    if admitted { "admits" } else { "forbids" }
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 80, "{checked}");

    // The item body of POST /v1/items.
    let schema = &doc.0["paths"]["/v1/items"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    let key = SigningKey::generate_secp256k1();
    let item = MutableItem::sign(&key, key.public_key(), "tp", 1, &b"[]"[..]);
    let good = serde_json::to_value(ItemJson::from(&item)).unwrap();
    let tombstone = serde_json::to_value(ItemJson::from(&MutableItem::tombstone(
        &key,
        key.public_key(),
        "tp",
        2,
    )))
    .unwrap();
    let with = |field: &str, v: Value| {
        let mut x = good.clone();
        x[field] = v;
        x
    };
    let without = |field: &str| {
        let mut x = good.clone();
        x.as_object_mut().unwrap().remove(field);
        x
    };
    let mut bodies = vec![good.clone(), tombstone.clone(), with("extra", json!(1))];
    for k in key_candidates() {
        bodies.push(with("subject", json!(k)));
        bodies.push(with("signer", json!(k)));
    }
    bodies.extend([
        with("seq", json!(-1)),
        with("seq", json!("1")),
        with("expires_at_ms", json!(0)),
        with("kind", json!("other")),
        with("kind", json!("tombstone")),
        with("signature", json!("zz")),
        with("signature", json!("ab".repeat(64))),
        with("salt", json!("s".repeat(65))),
        with("salt_hex", json!("7470")),
        with("value", json!("not base64!")),
        with("target", json!("zz")),
        without("signature"),
        without("value"),
        without("expires_at_ms"),
        without("salt"),
        {
            let mut t = tombstone.clone();
            t["value"] = json!("W10=");
            t
        },
        {
            let mut t = without("salt");
            t["salt_hex"] = json!("7470");
            t
        },
    ]);
    for body in bodies {
        let admitted = doc.admits(schema, &body);
        let r = http
            .post(format!("{url}/v1/items"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (refused, answer) = refused(r).await;
        assert_eq!(
            admitted,
            !refused,
            "POST /v1/items {body}: the document {} it, the server answered {answer}",
            if admitted { "admits" } else { "forbids" }
        );
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_api_document_is_exactly_as_strict_as_the_push_api() {
    let doc = Doc::new(dmsg_plugin::mirror_api::OPENAPI);
    let routes: Vec<(String, String)> = doc.routes().into_iter().collect();
    assert_eq!(
        routes,
        [
            (
                "delete".to_string(),
                "/v1/mirror/{salt}/{subject}".to_string()
            ),
            ("put".to_string(), "/v1/mirror/{salt}/{subject}".to_string()),
        ]
    );
    let mirror_key = SigningKey::generate_secp256k1();
    let mut node = NodeConfig::local();
    node.policy = Policy::default().authorize("tp", mirror_key.public_key());
    let mut config = PluginConfig {
        node,
        ..PluginConfig::default()
    };
    config.mirror_keys.insert("tp".into(), mirror_key);
    let token = "0123456789abcdef-token";
    config.push = Some(PushConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: token.into(),
        allow_non_loopback: false,
    });
    let plugin = DhtPlugin::start(None, config).await.unwrap();
    let push = format!("http://{}", plugin.push_addr().unwrap());
    let http = reqwest::Client::new();
    let auth = format!("Bearer {token}");
    let op = &doc.0["paths"]["/v1/mirror/{salt}/{subject}"]["put"];
    let subject_schema = &op["parameters"][1]["schema"];
    let salt_schema = &op["parameters"][0]["schema"];
    let body_schema = &op["requestBody"]["content"]["application/json"]["schema"];
    let valid = SigningKey::generate_secp256k1().public_key().to_hex();

    for method in ["put", "delete"] {
        for k in key_candidates() {
            let url = format!("{push}/v1/mirror/tp/{}", enc(&k));
            let req = match method {
                "put" => http.put(&url).body("[\"x\"]"),
                _ => http.delete(&url),
            };
            let (refused, answer) =
                refused(req.header("authorization", &auth).send().await.unwrap()).await;
            let admitted = doc.admits_raw(subject_schema, &k);
            assert_eq!(admitted, !refused, "{method} subject {k:?}: {answer}");
        }
        for salt in ["tp", "svc", ""] {
            let url = format!("{push}/v1/mirror/{salt}/{valid}");
            let req = match method {
                "put" => http.put(&url).body("[\"x\"]"),
                _ => http.delete(&url),
            };
            let (refused, answer) =
                refused(req.header("authorization", &auth).send().await.unwrap()).await;
            let admitted = doc.admits_raw(salt_schema, salt);
            assert_eq!(admitted, !refused, "{method} salt {salt:?}: {answer}");
        }
    }
    for body in ["[]", "[\"x\"]", "{\"a\":1}", "\"text\"", "not json", ""] {
        let admitted =
            serde_json::from_str::<Value>(body).is_ok_and(|v| doc.admits(body_schema, &v));
        let r = http
            .put(format!("{push}/v1/mirror/tp/{valid}"))
            .header("authorization", &auth)
            .body(body)
            .send()
            .await
            .unwrap();
        let (refused, answer) = refused(r).await;
        assert_eq!(admitted, !refused, "body {body:?}: {answer}");
    }
    // Every error is JSON: no token, another method, no route.
    for (req, status, code) in [
        (
            http.put(format!("{push}/v1/mirror/tp/{valid}")).body("[]"),
            401,
            "unauthorized",
        ),
        (
            http.get(format!("{push}/v1/mirror/tp/{valid}"))
                .header("authorization", &auth),
            405,
            "method_not_allowed",
        ),
        (http.get(format!("{push}/nothing")), 404, "no_route"),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
        assert!(
            doc.0["paths"]["/v1/mirror/{salt}/{subject}"]["put"]["responses"][status.to_string()]
                .is_object()
                || status == 404
        );
    }
    plugin.shutdown().await;
}
