//! HTTP to DHT: the mirror API for discovery services that cannot link Rust (the opposite
//! direction of [`crate::dht_to_http`]). They PUT a key's FULL
//! value (or DELETE it) and the plugin signs with the configured mirror key. Every request
//! carries `Authorization: Bearer <token>`; the listener is bound to loopback unless the
//! operator explicitly allows otherwise (see [`crate::plugin::PushConfig`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use dht_core::PublicKey;

use crate::mirror::{KeyOutcome, Mirror, MirrorAction};

/// The OpenAPI document of the push API (not served: the push API's listener takes only
/// authenticated mirror requests; it is published with the source).
pub const OPENAPI: &str = include_str!("push_openapi.json");

#[derive(Clone)]
struct PushState {
    mirrors: Arc<HashMap<String, Arc<Mirror>>>,
    token: Arc<str>,
}

fn error(status: StatusCode, code: &str, msg: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"error": msg.into(), "code": code})),
    )
        .into_response()
}

/// Constant-time comparison of the bearer token.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The push routes: `PUT /v1/mirror/{salt}/{subject}` (body: the key's full value) and
/// `DELETE /v1/mirror/{salt}/{subject}`; both answer with the per-key outcome: 200 when a
/// majority stored it, 502 when not; 413 (`too_large`) when this node refuses the value as
/// over its limit and 422 (`rejected`) for its other refusals, at once and never retried
/// (`{"error", "code", "outcome"}`). A body over `max_body` is a JSON 413 too.
pub fn router(mirrors: HashMap<String, Arc<Mirror>>, token: String, max_body: usize) -> Router {
    Router::new()
        .route("/v1/mirror/{salt}/{subject}", put(publish).delete(delete))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no_route", "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(PushState {
            mirrors: Arc::new(mirrors),
            token: token.into(),
        })
}

/// A refused push request.
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1, self.2)
    }
}

fn resolve(
    s: &PushState,
    headers: &HeaderMap,
    salt: &str,
    subject: &str,
) -> Result<(Arc<Mirror>, PublicKey), Refusal> {
    if !authorized(headers, &s.token) {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token".into(),
        ));
    }
    let mirror = s.mirrors.get(salt).cloned().ok_or_else(|| {
        Refusal(
            StatusCode::NOT_FOUND,
            "no_mirror",
            format!("no mirror key configured for salt {salt:?}"),
        )
    })?;
    let pk = PublicKey::parse_strict(subject).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            "bad_key",
            format!("invalid public key: {e}"),
        )
    })?;
    Ok((mirror, pk))
}

/// A body over the HTTP limit (or unreadable) as a JSON error.
fn body_refusal(e: BytesRejection) -> Response {
    let status = e.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "bad_body"
    };
    error(status, code, e.body_text())
}

/// The answer to a mirrored key: 200 when a majority stored it; 413 or 422 when this
/// node's own rules refused it (no replica would take it; never retried); 502 otherwise.
fn outcome_response(outcome: KeyOutcome) -> Response {
    let local = outcome
        .rejected
        .iter()
        .find_map(|r| r.strip_prefix("local: "))
        .map(str::to_owned);
    if outcome.ok {
        return (StatusCode::OK, Json(outcome)).into_response();
    }
    match local {
        Some(reason) => {
            let (status, code) = if reason.starts_with("too_large") {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            } else {
                (StatusCode::UNPROCESSABLE_ENTITY, "rejected")
            };
            (
                status,
                Json(serde_json::json!({
                    "error": format!("refused by this node: {reason}"),
                    "code": code,
                    "outcome": outcome,
                })),
            )
                .into_response()
        }
        None => (StatusCode::BAD_GATEWAY, Json(outcome)).into_response(),
    }
}

/// Path parameters, with a JSON error when they do not parse.
fn path_refusal(e: PathRejection) -> Response {
    error(e.status(), "bad_path", e.body_text())
}

async fn publish(
    State(s): State<PushState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Path((salt, subject)) = match path {
        Ok(p) => p,
        Err(e) => return path_refusal(e),
    };
    let (mirror, pk) = match resolve(&s, &headers, &salt, &subject) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_refusal(e),
    };
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed",
            "the value must be JSON (the key's full list or entry)",
        );
    }
    let action = if body.as_ref() == b"[]" {
        MirrorAction::Delete
    } else {
        MirrorAction::Publish(body.to_vec())
    };
    outcome_response(mirror.mirror(pk, action).await)
}

async fn delete(
    State(s): State<PushState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let Path((salt, subject)) = match path {
        Ok(p) => p,
        Err(e) => return path_refusal(e),
    };
    let (mirror, pk) = match resolve(&s, &headers, &salt, &subject) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    outcome_response(mirror.mirror(pk, MirrorAction::Delete).await)
}
