//! The committed `openapi/openapi.json` is what the code generates.

use std::path::PathBuf;
use tower::ServiceExt;

#[test]
fn committed_openapi_document_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/openapi.json");
    let generated = format!(
        "{}\n",
        iotcore_api::openapi::openapi().to_pretty_json().unwrap()
    );
    if std::env::var_os("UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale; regenerate it with `UPDATE_OPENAPI=1 cargo test -p iotcore-api --test api openapi`",
        path.display()
    );
}

#[test]
fn every_v1_operation_requires_the_bearer_scheme() {
    let doc = serde_json::to_value(iotcore_api::openapi::openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/tenants",
        "/v1/registries/{id}/devices",
        "/v1/devices/{id}/passwords/{password_id}",
        "/v1/rules/{id}",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    // Every creation documents the Idempotency-Key header.
    let params = doc["paths"]["/v1/registries"]["post"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params
        .iter()
        .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
    // Health endpoints opt out of authentication.
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([{}])
    );
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn docs_page_and_its_assets_are_served_by_iotcore(pool: sqlx::PgPool) {
    use axum::http::StatusCode;
    let app = crate::helpers::TestApp::new(pool);
    let raw = |uri: &str| {
        axum::http::Request::get(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let response = app.router.clone().oneshot(raw("/docs")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let html = String::from_utf8(html.to_vec()).unwrap();
    // Every asset the page loads is local: nothing from a CDN.
    assert!(!html.contains("http://") && !html.contains("https://"));
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/init.js",
    ] {
        assert!(html.contains(asset), "{asset}");
        let response = app.router.clone().oneshot(raw(asset)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(!body.is_empty(), "{asset}");
    }
    let init = app
        .router
        .clone()
        .oneshot(raw("/docs/init.js"))
        .await
        .unwrap();
    let init = axum::body::to_bytes(init.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&init).contains("/openapi.json"));
}
