//! Liveness, readiness, metrics and the OpenAPI document: unauthenticated, for
//! orchestrators, Prometheus and tooling.

use crate::error::{Error, Problem};
use crate::ApiState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use iotcore_store::Store;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// How long readiness waits for the database before calling it unavailable.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
}

/// The body of a healthy answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the database answers.
#[utoipa::path(
    get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "The database does not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<ApiState>) -> Result<Json<Health>, Error> {
    if database_ready(&state.store).await {
        Ok(Json(Health {
            status: "ok".into(),
        }))
    } else {
        Err(Error::Unavailable("the database does not answer"))
    }
}

/// Readiness of this process, with or without the API: whether PostgreSQL answers within
/// [`READY_TIMEOUT`]. Logs why not.
pub async fn database_ready(store: &Store) -> bool {
    match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness check failed");
            false
        }
        Err(_) => {
            tracing::warn!("readiness check timed out");
            false
        }
    }
}

/// The process's metrics in the Prometheus text format. They hold no secrets and no
/// payloads; label values are tenant ids, route templates and fixed reasons.
#[utoipa::path(
    get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"))
)]
pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, iotcore_telemetry::TEXT_CONTENT_TYPE)],
        iotcore_telemetry::render(),
    )
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::openapi())
}
