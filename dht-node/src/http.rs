//! The operator's HTTP endpoint of a node: `GET /metrics` (Prometheus text) and
//! `GET /health` (JSON: status, peer id, routing table size, whether catch-up finished).
//! Opt-in: `dht-node run --metrics-listen 127.0.0.1:9482`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::node::Node;

/// The routes, for a host to mount or serve.
pub fn router(node: Node) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(node)
}

/// Serves [`router`] on `listener` until the future is dropped.
pub async fn serve(node: Node, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(node)).await
}

async fn metrics(State(node): State<Node>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics().encode(),
    )
        .into_response()
}

async fn health(State(node): State<Node>) -> Response {
    let peers = node.routing_table().len();
    let body = serde_json::json!({
        "status": "ok",
        "peer_id": node.peer_id().to_string(),
        "mode": node.config().mode,
        "routing_table_peers": peers,
        "peers_down": node.peers_down().len(),
        "caught_up": node.caught_up(),
        "membership_known": node.membership_known(),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}
