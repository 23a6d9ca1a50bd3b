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
use axum::http::Request;
use axum::Router;
use iotcore_store::Store;
use std::sync::Arc;
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
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// One span per request, named by the matched route rather than the raw path so that ids
/// do not explode the cardinality of whatever aggregates the logs; `tenant_id` is filled
/// once the tenant scope is resolved.
fn request_span(request: &Request<Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    tracing::info_span!("http", method = %request.method(), route, tenant_id = tracing::field::Empty)
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
