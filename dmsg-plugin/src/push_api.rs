//! The HTTP push for discovery services that cannot link Rust: they PUT a key's FULL
//! value (or DELETE it) and the plugin signs with the configured mirror key. Every request
//! carries `Authorization: Bearer <token>`; the listener is bound to loopback unless the
//! operator explicitly allows otherwise (see [`crate::plugin::PushConfig`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use dht_core::PublicKey;

use crate::mirror::{Mirror, MirrorAction};

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
/// `DELETE /v1/mirror/{salt}/{subject}`; both answer with the per-key outcome.
pub fn router(mirrors: HashMap<String, Arc<Mirror>>, token: String, max_body: usize) -> Router {
    Router::new()
        .route("/v1/mirror/{salt}/{subject}", put(publish).delete(delete))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no_route", "no such route") })
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
    let pk = subject.parse().map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            "bad_key",
            format!("invalid public key: {e}"),
        )
    })?;
    Ok((mirror, pk))
}

async fn publish(
    State(s): State<PushState>,
    headers: HeaderMap,
    Path((salt, subject)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (mirror, pk) = match resolve(&s, &headers, &salt, &subject) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
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
    let outcome = mirror.mirror(pk, action).await;
    let status = if outcome.ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    (status, Json(outcome)).into_response()
}

async fn delete(
    State(s): State<PushState>,
    headers: HeaderMap,
    Path((salt, subject)): Path<(String, String)>,
) -> Response {
    let (mirror, pk) = match resolve(&s, &headers, &salt, &subject) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let outcome = mirror.mirror(pk, MirrorAction::Delete).await;
    let status = if outcome.ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    (status, Json(outcome)).into_response()
}
