//! The iotcore REST control plane (SPEC §6): tenants, registries, devices, passwords and
//! rules over JSON, with JWT bearer authentication, RFC 9457 problem details and an
//! OpenAPI 3.1 document generated from the code.
//!
//! Every tenant route takes a [`extract::TenantScope`] (or [`extract::TenantWriter`]) and
//! hands its tenant id to the store, which filters every query on it: another tenant's
//! resource answers 404 exactly like a missing one.

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod input;
pub mod keys;
mod metrics;
pub mod openapi;
pub mod routes;
pub mod versioning;

pub use config::{ApiConfig, AuthConfig, QuotaConfig};
pub use error::Error;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{Request, Response};
use axum::Router;
use iotcore_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

/// What every handler shares: the store and the token verifier.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) store: Store,
    pub(crate) verifier: Arc<auth::Verifier>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_publish_payload_bytes: usize,
    pub(crate) quotas: config::QuotaConfig,
    pub(crate) allow_private_destinations: bool,
}

impl ApiState {
    /// Fails when the configured token keys cannot be loaded.
    pub fn new(config: &ApiConfig, store: Store) -> Result<ApiState, keys::KeyError> {
        Ok(ApiState {
            store,
            verifier: Arc::new(auth::Verifier::new(&config.auth)?),
            max_body_bytes: config.max_body_bytes,
            max_publish_payload_bytes: config.max_publish_payload_bytes,
            quotas: config.quotas.clone(),
            allow_private_destinations: config.allow_private_destinations,
        })
    }
}

/// The whole API as a router, ready to serve (or to call with `Router::oneshot`).
pub fn router(state: ApiState) -> Router {
    let max_body_bytes = state.max_body_bytes;
    Router::new()
        .merge(routes::tenants::router())
        .merge(routes::registries::router())
        .merge(routes::devices::router())
        .merge(routes::brokers::router())
        .merge(routes::publish::router())
        .merge(routes::quotas::router())
        .merge(routes::passwords::router())
        .merge(routes::policies::router())
        .merge(routes::certificates::router())
        .merge(routes::rules::router())
        .merge(routes::health::router())
        .merge(routes::docs::router())
        .fallback(|| async { Error::NoRoute })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(metrics::record))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_response),
        )
        .with_state(state)
}

/// One span per request, named by the matched route rather than the raw path so that ids
/// do not explode the cardinality of whatever aggregates the logs; `tenant_id` is filled
/// once the tenant scope is resolved, the status once the response is ready. A caller's
/// W3C `traceparent` header makes the span part of the caller's trace (when spans are
/// exported over OTLP). The field names are OpenTelemetry's HTTP conventions; the
/// `otel.*` fields name the exported span ("GET /v1/devices/{id}") and its kind.
fn request_span(request: &Request<Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let method = request.method().as_str();
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
    );
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    iotcore_telemetry::trace_context::continue_trace(
        &span,
        header(iotcore_telemetry::trace_context::TRACEPARENT),
        header(iotcore_telemetry::trace_context::TRACESTATE),
    );
    span
}

/// Puts the status on the request's span (a 5xx marks it failed) and logs the end of the
/// request at debug level, as tower-http's default does.
fn record_response<B>(response: &Response<B>, latency: Duration, span: &tracing::Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    tracing::debug!(
        status = status.as_u16(),
        latency_ms = latency.as_millis(),
        "finished processing request"
    );
}

/// Serves the API on `config.listen` until `shutdown` is cancelled.
pub async fn run(
    config: ApiConfig,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ApiError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    serve(listener, &config, store, shutdown).await
}

/// Serves the API on an already bound `listener` (port 0 in tests) until `shutdown` is
/// cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    config: &ApiConfig,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let app = router(ApiState::new(config, store)?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot load the token keys: {0}")]
    Keys(#[from] keys::KeyError),
}
