//! The HTTP gateway: DHT reads in exactly the shapes the HTTP discoveries serve, the raw
//! signed items, submission of pre-signed items (answered with the put report), health,
//! Prometheus metrics, and the OpenAPI document of all of it.
//!
//! Every 4xx and 5xx answer is a JSON object `{"error": "...", "code": "..."}`.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dht_core::json::ItemJson;
use dht_core::{MutableItem, PublicKey, SALT_DMSG, SALT_SERVICES, SALT_TRANSPORTS};
use dht_node::{GetMode, GetOutcome, GetReport, Node, NodeError};
use serde::Deserialize;

use crate::formats::ServiceEntry;

/// The OpenAPI document the gateway serves at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route of the gateway (method, OpenAPI path), as documented in [`OPENAPI`].
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v3/transports/edge:{pk}"),
    ("get", "/transports/edge:{pk}"),
    ("get", "/api/services"),
    ("get", "/api/services/{addr}"),
    ("get", "/dmsg-discovery/entry/{pk}"),
    ("get", "/v1/items/{salt}/{subject}"),
    ("post", "/v1/items"),
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Time allowed for one DHT read.
    pub read_timeout: Duration,
    /// Largest request body.
    pub max_body: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            read_timeout: Duration::from_secs(5),
            // A 1 MiB value in base64 inside JSON.
            max_body: 2 * 1024 * 1024,
        }
    }
}

#[derive(Clone)]
struct Gateway {
    node: Node,
    config: GatewayConfig,
}

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Rejected(r) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                r.code().as_str(),
                r.to_string(),
            ),
            NodeError::Timeout => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the DHT did not answer in time",
            ),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                other.to_string(),
            ),
        }
    }
}

/// Query parameters; a malformed query string (`?quorum=null`) is a JSON 400 on every
/// route, never axum's plain-text rejection.
struct Params<T>(T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Params(t))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// Path parameters, with a JSON error when they do not decode.
struct Path<T>(T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(t)| Path(t))
            .map_err(|e| ApiError::new(e.status(), "bad_path", e.body_text()))
    }
}

/// The gateway's routes over `node`.
pub fn router(node: Node, config: GatewayConfig) -> Router {
    let max_body = config.max_body;
    Router::new()
        .route("/v3/transports/{edge}", get(transports_v3))
        .route("/transports/{edge}", get(transports_v2))
        .route("/api/services", get(services_of_visor))
        .route("/api/services/{addr}", get(service_by_addr))
        .route("/dmsg-discovery/entry/{pk}", get(dmsg_entry))
        .route("/v1/items/{salt}/{subject}", get(raw_item))
        .route("/v1/items", post(submit_item))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Gateway { node, config })
}

/// A public key from a path or query: hex of a compressed secp256k1 point or an ed25519
/// point (off-curve keys refused), as the `PublicKey` schema of [`OPENAPI`] says.
pub(crate) fn parse_pk(s: &str) -> Result<PublicKey, ApiError> {
    PublicKey::parse_strict(s)
        .map_err(|e| ApiError::bad_request("bad_key", format!("invalid public key {s:?}: {e}")))
}

/// A service address `<public key>:<port>` (port 0 to 65535, no leading zeros).
fn parse_service_addr(addr: &str) -> Result<PublicKey, ApiError> {
    let (pk, port) = addr.split_once(':').ok_or_else(|| {
        ApiError::bad_request(
            "bad_addr",
            format!("{addr:?}: expected <public key>:<port>"),
        )
    })?;
    let pk = parse_pk(pk)?;
    match port.parse::<u16>() {
        Ok(n) if n.to_string() == port => Ok(pk),
        _ => Err(ApiError::bad_request(
            "bad_addr",
            format!("{addr:?}: the port must be 0 to 65535"),
        )),
    }
}

fn edge_of(segment: &str) -> Result<PublicKey, ApiError> {
    let pk = segment.strip_prefix("edge:").ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            "expected edge:<public key>",
        )
    })?;
    parse_pk(pk)
}

impl Gateway {
    async fn read(
        &self,
        subject: PublicKey,
        salt: &[u8],
        quorum: bool,
    ) -> Result<GetReport, ApiError> {
        let mode = if quorum {
            GetMode::Quorum(0)
        } else {
            GetMode::First
        };
        let report =
            tokio::time::timeout(self.config.read_timeout, self.node.get(subject, salt, mode))
                .await
                .map_err(|_| ApiError::from(NodeError::Timeout))??;
        if report.lookup == GetOutcome::Unreachable {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unreachable",
                "no DHT node answered",
            ));
        }
        Ok(report)
    }
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

#[derive(Deserialize, Default)]
struct ReadParams {
    #[serde(default)]
    quorum: bool,
}

/// `GET /v3/transports/edge:{pk}`: the edge's full list, `[]` when none.
async fn transports_v3(
    State(g): State<Gateway>,
    Path(edge): Path<String>,
    Params(p): Params<ReadParams>,
) -> Result<Response, ApiError> {
    let edge = edge_of(&edge)?;
    let report = g.read(edge, SALT_TRANSPORTS, p.quorum).await?;
    Ok(json_bytes(
        report
            .value()
            .map_or_else(|| b"[]".to_vec(), <[u8]>::to_vec),
    ))
}

/// `GET /transports/edge:{pk}` (v2 shape): the list, 404 with an error when none.
async fn transports_v2(
    State(g): State<Gateway>,
    Path(edge): Path<String>,
    Params(p): Params<ReadParams>,
) -> Result<Response, ApiError> {
    let edge = edge_of(&edge)?;
    let report = g.read(edge, SALT_TRANSPORTS, p.quorum).await?;
    match report.value() {
        Some(v) if v != b"[]" => Ok(json_bytes(v.to_vec())),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "transports not found",
        )),
    }
}

#[derive(Deserialize)]
struct ServiceQuery {
    visor: Option<String>,
    #[serde(rename = "type")]
    service_type: Option<String>,
    #[serde(default)]
    quorum: bool,
}

async fn service_list(
    g: &Gateway,
    visor: PublicKey,
    quorum: bool,
) -> Result<Vec<ServiceEntry>, ApiError> {
    let report = g.read(visor, SALT_SERVICES, quorum).await?;
    match report.value() {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_slice(v).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_value",
                format!("stored service list: {e}"),
            )
        }),
    }
}

/// `GET /api/services?visor={pk}[&type=vpn]`: a visor's services, in the service
/// discovery's list shape.
async fn services_of_visor(
    State(g): State<Gateway>,
    Params(q): Params<ServiceQuery>,
) -> Result<Response, ApiError> {
    let visor = q.visor.as_deref().ok_or_else(|| {
        ApiError::bad_request(
            "bad_query",
            "the DHT serves services per visor: give ?visor=<public key>",
        )
    })?;
    let visor = parse_pk(visor)?;
    let mut list = service_list(&g, visor, q.quorum).await?;
    if let Some(t) = &q.service_type {
        let t = if t == "proxy" { "skysocks" } else { t.as_str() };
        list.retain(|s| s.service_type == t);
    }
    Ok(Json(list).into_response())
}

/// `GET /api/services/{pk}:{port}`: one service entry.
async fn service_by_addr(
    State(g): State<Gateway>,
    Path(addr): Path<String>,
    Params(p): Params<ReadParams>,
) -> Result<Response, ApiError> {
    let visor = parse_service_addr(&addr)?;
    let list = service_list(&g, visor, p.quorum).await?;
    list.into_iter()
        .find(|s| s.address == addr)
        .map(|s| Json(s).into_response())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "service not found"))
}

/// `GET /dmsg-discovery/entry/{pk}`: the DMSG entry, byte for byte.
async fn dmsg_entry(
    State(g): State<Gateway>,
    Path(pk): Path<String>,
    Params(p): Params<ReadParams>,
) -> Result<Response, ApiError> {
    let pk = parse_pk(&pk)?;
    let report = g.read(pk, SALT_DMSG, p.quorum).await?;
    match report.value() {
        Some(v) => Ok(json_bytes(v.to_vec())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "entry of public key is not found",
        )),
    }
}

/// `GET /v1/items/{salt}/{subject}`: the raw signed item, for clients that verify it
/// themselves. 404 (with the status) when nothing is stored; tombstones are returned.
async fn raw_item(
    State(g): State<Gateway>,
    Path((salt, subject)): Path<(String, String)>,
    Params(p): Params<ReadParams>,
) -> Result<Response, ApiError> {
    let subject = parse_pk(&subject)?;
    if salt.len() > dht_core::MAX_SALT_LEN {
        return Err(ApiError::bad_request(
            "too_large",
            "salt longer than 64 bytes",
        ));
    }
    let report = g.read(subject, salt.as_bytes(), p.quorum).await?;
    let status = match report.lookup {
        GetOutcome::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    };
    Ok((status, Json(report.to_json())).into_response())
}

/// `POST /v1/items`: a pre-signed item in the JSON form of dht-core; answered with the
/// put report (stored on / rejected by whom, and why).
async fn submit_item(
    State(g): State<Gateway>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "expected Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())
        }
        other => ApiError::bad_request("malformed", other.body_text()),
    })?;
    // Keys as strictly as on every other route (on the curve, no surrounding spaces).
    for field in ["subject", "signer"] {
        if let Some(serde_json::Value::String(k)) = body.get(field) {
            PublicKey::parse_strict(k).map_err(|e| {
                ApiError::bad_request("bad_key", format!("{field}: invalid public key {k:?}: {e}"))
            })?;
        }
    }
    let mut item: ItemJson = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request("malformed", e.to_string()))?;
    // A well-formed target that names another item is a rule refusal (422), as the node
    // would answer it, not a malformed request.
    let target = item
        .target
        .take()
        .map(|t| {
            t.parse::<dht_core::Target>()
                .map_err(|e| ApiError::bad_request("malformed", format!("target: {e}")))
        })
        .transpose()?;
    let item = MutableItem::try_from(item)
        .map_err(|e| ApiError::bad_request("malformed", e.to_string()))?;
    if target.is_some_and(|t| t != item.target()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "target_mismatch",
            "target does not match subject and salt",
        ));
    }
    let report = g.node.put(item).await?;
    let stored = !report.stored_on().is_empty()
        || matches!(report.local, Some(dht_node::ReplicaResult::Stored(_)));
    let status = if stored {
        StatusCode::OK
    } else if report.rejected_by().is_empty() {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::CONFLICT
    };
    Ok((status, Json(report.to_json())).into_response())
}

async fn health(State(g): State<Gateway>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "peer_id": g.node.peer_id().to_string(),
        "routing_table_peers": g.node.routing_table().len(),
    }))
    .into_response()
}

async fn metrics(State(g): State<Gateway>) -> Response {
    if let Ok(Some(Ok(stats))) = g.node.with_store(|s| s.stats()).await {
        g.node.metrics().items_stored.set(stats.items as i64);
        g.node.metrics().store_bytes.set(stats.bytes);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        g.node.metrics().encode(),
    )
        .into_response()
}

async fn openapi() -> Response {
    json_bytes(OPENAPI.as_bytes().to_vec())
}
