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

/// Where a property's description can be: on it, or for an optional reference on the
/// reference inside its `oneOf`.
fn has_description(property: &serde_json::Value) -> bool {
    let described =
        |v: &serde_json::Value| v["description"].as_str().is_some_and(|d| !d.is_empty());
    described(property)
        || ["oneOf", "anyOf", "allOf"].iter().any(|key| {
            property[*key]
                .as_array()
                .is_some_and(|branches| branches.iter().any(described))
        })
}

#[test]
fn every_operation_schema_and_field_is_described() {
    let doc = serde_json::to_value(iotcore_api::openapi::openapi()).unwrap();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation["summary"].as_str().is_none_or(str::is_empty) {
                missing.push(format!("{method} {path}: summary"));
            }
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if !has_description(parameter) {
                    missing.push(format!("{method} {path}: parameter {}", parameter["name"]));
                }
            }
            for (status, response) in operation["responses"].as_object().unwrap() {
                if !has_description(response) {
                    missing.push(format!("{method} {path}: response {status}"));
                }
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.len() > 10, "the document has its schemas");
    for (name, schema) in schemas {
        if !has_description(schema) {
            missing.push(format!("schema {name}: description"));
        }
        if schema.get("example").is_none() && schema.get("examples").is_none() {
            missing.push(format!("schema {name}: example"));
        }
        for (field, property) in schema["properties"].as_object().into_iter().flatten() {
            if !has_description(property) {
                missing.push(format!("schema {name}: field {field}"));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
}
