//! Counts every request by route template and status, and times it
//! (`iotcore_http_requests_total`, `iotcore_http_request_seconds`).

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::Request;
use axum::middleware::Next;
use axum::response::Response;
use iotcore_telemetry::metrics::http::{REQUESTS, REQUEST_SECONDS};
use std::time::Instant;

/// The route label of requests that matched no route: their raw paths are whatever a
/// client or a scanner sent, so they must not become label values.
const UNMATCHED: &str = "unmatched";

pub async fn record(request: Request<Body>, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    REQUESTS.with(&[&route, response.status().as_str()]).inc();
    REQUEST_SECONDS
        .with(&[&route])
        .observe_duration(started.elapsed());
    response
}
