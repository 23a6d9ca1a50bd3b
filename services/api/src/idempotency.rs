//! `Idempotency-Key` on creations (SPEC §6.1): a POST retried with the same key and the
//! same body gets the first response again (marked `Idempotency-Replayed: true`) instead
//! of creating a second resource; the same key with a different request is a 422 problem,
//! and while the first request is still running a 409 one. Keys are kept per tenant (or
//! for operators' own creations) for [`KEY_TTL`].

use crate::error::Error;
use crate::extract::TENANT_HEADER;
use crate::ApiState;
use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use iotcore_store::idempotency::{IdempotencyClaim, StoredResponse};
use std::time::Duration;

/// The request header naming the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header marking a replayed response.
pub const IDEMPOTENCY_REPLAYED: &str = "idempotency-replayed";
/// How long a key and its response are kept.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest key accepted.
pub(crate) const MAX_KEY_LEN: usize = 255;
/// Largest response kept for replay; creations answer far less.
const MAX_STORED_RESPONSE: usize = 1024 * 1024;

/// The middleware; passes every request that is not a POST with the header untouched.
pub async fn layer(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            k.to_owned()
        }
        _ => {
            return Error::BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            )
            .into_response()
        }
    };
    // Without a valid principal the handler refuses the request anyway; it does so with
    // its usual problem, and nothing is kept.
    let Some(scope) = scope_of(&state, &request) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let body = match to_bytes(body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => return Error::PayloadTooLarge.into_response(),
    };
    let mut fingerprint = parts.uri.path().as_bytes().to_vec();
    fingerprint.push(b'\n');
    fingerprint.extend_from_slice(&body);
    let claim = state
        .store
        .claim_idempotency_key(&scope, &key, &fingerprint, KEY_TTL)
        .await;
    match claim {
        Err(err) => Error::Internal(Box::new(err)).into_response(),
        Ok(IdempotencyClaim::Mismatch) => Error::invalid([crate::error::FieldError::new(
            "Idempotency-Key",
            "was already used for a different request",
        )])
        .into_response(),
        Ok(IdempotencyClaim::InProgress) => Error::Conflict(
            "a request with this Idempotency-Key is still being processed; retry later".into(),
        )
        .into_response(),
        Ok(IdempotencyClaim::Replay(stored)) => replay(stored),
        Ok(IdempotencyClaim::Claimed) => {
            let response = next.run(Request::from_parts(parts, Body::from(body))).await;
            keep(&state, &scope, &key, response).await
        }
    }
}

/// Where a request's key lives: the tenant it acts in, or `operator` for operators acting
/// in no tenant (creating tenants).
fn scope_of(state: &ApiState, request: &Request) -> Option<String> {
    let header = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let principal = state.verifier.verify(token.trim())?;
    match principal.tenant_id {
        Some(tenant) => Some(tenant.to_string()),
        None => match request.headers().get(TENANT_HEADER) {
            Some(named) => named.to_str().ok().map(str::to_owned),
            None => Some("operator".to_owned()),
        },
    }
}

/// Stores the handler's response for replay, unless a retry could have another outcome
/// (a 5xx), in which case the key is released.
async fn keep(state: &ApiState, scope: &str, key: &str, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(body) = to_bytes(body, MAX_STORED_RESPONSE).await else {
        let _ = state.store.release_idempotency_key(scope, key).await;
        return Error::Internal("response too large to keep for Idempotency-Key".into())
            .into_response();
    };
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let outcome = if parts.status.is_server_error() {
        state.store.release_idempotency_key(scope, key).await
    } else {
        let stored = StoredResponse {
            status: parts.status.as_u16(),
            content_type: header(CONTENT_TYPE),
            location: header(LOCATION),
            body: body.to_vec(),
        };
        state
            .store
            .complete_idempotency_key(scope, key, &stored)
            .await
    };
    if let Err(err) = outcome {
        tracing::error!(error = %err, "cannot keep the response of an Idempotency-Key");
    }
    Response::from_parts(parts, Body::from(body))
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (CONTENT_TYPE, stored.content_type),
        (LOCATION, stored.location),
    ] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name, value);
        }
    }
    headers.insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
    response
}
