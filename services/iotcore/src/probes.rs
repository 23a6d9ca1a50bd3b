//! `/healthz`, `/readyz` and `/metrics` for a process that runs without the API
//! (`serve --only broker`, `--only rules`), on `telemetry.listen`: orchestrators probe it
//! and Prometheus scrapes it like the API port. Liveness and metrics are the API's own
//! handlers; readiness is answered here because the API's needs the whole API state.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use iotcore_api::routes::health::{healthz, metrics};
use iotcore_store::Store;
use serde_json::json;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long readiness waits for the database, as the API's `/readyz` does.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Binds `listen`, so that a taken port fails `serve` at start like any other listener.
pub async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {listen} (telemetry.listen): {err}"))
}

/// Serves the probes on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "probes and metrics listening");
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(store);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Readiness: PostgreSQL answers.
async fn readyz(State(store): State<Store>) -> impl IntoResponse {
    match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness check failed");
            unavailable()
        }
        Err(_) => {
            tracing::warn!("readiness check timed out");
            unavailable()
        }
    }
}

fn unavailable() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable", "detail": "the database does not answer"})),
    )
}
