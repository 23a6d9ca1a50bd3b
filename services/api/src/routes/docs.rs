//! `/docs`: Swagger UI over `/openapi.json`, with every asset compiled into the binary so
//! the page works without internet access (SPEC §6.1).

use crate::ApiState;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const HTML: &[u8] = include_bytes!("../../assets/docs.html");
const INIT_JS: &[u8] = include_bytes!("../../assets/docs-init.js");
const BUNDLE_JS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/docs", get(|| asset("text/html; charset=utf-8", HTML)))
        .route(
            "/docs/init.js",
            get(|| asset("text/javascript; charset=utf-8", INIT_JS)),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| asset("text/javascript; charset=utf-8", BUNDLE_JS)),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| asset("text/css; charset=utf-8", CSS)),
        )
}

async fn asset(content_type: &'static str, body: &'static [u8]) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}
