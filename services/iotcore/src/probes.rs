//! `/healthz`, `/readyz` and `/metrics` for a process that runs without the API
//! (`serve --only broker`, `--only rules`), on `telemetry.listen`: orchestrators probe it
//! and Prometheus scrapes it like the API port. Liveness and metrics are the API's own
//! handlers, and readiness is the API's check; only its answer is written here, because
//! the API's handler needs the whole API state.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use iotcore_api::routes::health::{database_ready, healthz, metrics};
use iotcore_store::Store;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// Readiness: PostgreSQL answers, decided as the API's `/readyz` decides it.
async fn readyz(State(store): State<Store>) -> impl IntoResponse {
    if database_ready(&store).await {
        (StatusCode::OK, Json(json!({"status": "ok"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "detail": "the database does not answer"})),
        )
    }
}
