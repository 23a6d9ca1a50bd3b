//! The quickstart path: tenant → registry → device → password → rule.

use crate::helpers::TestApp;
use axum::http::{Method, StatusCode};
use iotcore_api::auth::Role;
use iotcore_store::auth::{verify_password, PrincipalKind};
use serde_json::json;

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn tenant_registry_device_password_rule(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let operator = app.operator();

    let tenant = app
        .post(&operator, "/v1/tenants", json!({ "name": "acme" }))
        .await;
    assert_eq!(tenant.status, StatusCode::CREATED);
    assert_eq!(tenant.body["name"], "acme");
    assert_eq!(tenant.body["status"], "active");
    assert!(tenant.body["created_at"].is_string());
    let tenant_id = tenant.body["id"].as_str().unwrap().to_owned();
    assert!(tenant_id.starts_with("tnt_"));
    assert_eq!(
        tenant.headers["location"],
        format!("/v1/tenants/{tenant_id}").as_str()
    );
    assert_eq!(
        app.get(&operator, &format!("/v1/tenants/{tenant_id}"))
            .await
            .body,
        tenant.body
    );
    let tenants = app.get(&operator, "/v1/tenants").await;
    assert_eq!(tenants.body["items"], json!([tenant.body]));
    assert_eq!(tenants.body["next_page_token"], json!(null));

    let admin = app.member(Role::Admin, &tenant_id);
    let registry = app
        .post(
            &admin,
            "/v1/registries",
            json!({ "name": "greenhouse", "description": "north site", "labels": { "site": "north" } }),
        )
        .await;
    assert_eq!(registry.status, StatusCode::CREATED, "{:#?}", registry.body);
    assert_eq!(registry.body["description"], "north site");
    assert_eq!(registry.body["labels"], json!({ "site": "north" }));
    assert_eq!(registry.body["default_policy"], true);
    let registry_id = registry.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get(&admin, &format!("/v1/registries/{registry_id}"))
            .await
            .body,
        registry.body
    );

    let device = app
        .post(
            &admin,
            &format!("/v1/registries/{registry_id}/devices"),
            json!({ "name": "t1" }),
        )
        .await;
    assert_eq!(device.status, StatusCode::CREATED, "{:#?}", device.body);
    assert_eq!(device.body["registry_id"], registry_id.as_str());
    assert_eq!(device.body["status"], "enabled");
    assert_eq!(device.body["labels"], json!({}));
    assert_eq!(device.body["description"], "");
    let device_id = device.body["id"].as_str().unwrap().to_owned();
    let devices = app
        .get(&admin, &format!("/v1/registries/{registry_id}/devices"))
        .await;
    assert_eq!(devices.body["items"], json!([device.body]));

    // A generated password is shown once, and is what the broker will verify.
    let password = app
        .post(
            &admin,
            &format!("/v1/devices/{device_id}/passwords"),
            json!({}),
        )
        .await;
    assert_eq!(password.status, StatusCode::CREATED, "{:#?}", password.body);
    let secret = password.body["password"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 24);
    assert!(secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let principal = app
        .store
        .find_password_principal(&device_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(principal.tenant_id.as_str(), tenant_id);
    assert!(
        matches!(principal.kind, PrincipalKind::Device { registry_id: ref r, .. } if r.as_str() == registry_id)
    );
    assert!(principal
        .hashes
        .iter()
        .any(|h| verify_password(h, secret.as_bytes())));
    let listed = app
        .get(&admin, &format!("/v1/devices/{device_id}/passwords"))
        .await;
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], password.body["id"]);
    assert!(
        items[0].get("password").is_none(),
        "the secret is shown only once"
    );
    assert!(!listed.body.to_string().contains(&secret));

    // A chosen password is accepted and not echoed.
    let chosen = app
        .post(
            &admin,
            &format!("/v1/devices/{device_id}/passwords"),
            json!({ "password": "a chosen password" }),
        )
        .await;
    assert_eq!(chosen.status, StatusCode::CREATED);
    assert!(chosen.body.get("password").is_none());

    let rule = app
        .post(
            &admin,
            "/v1/rules",
            json!({
                "name": "to-backend",
                "topic_filter": "$devices/+/events/#",
                "registry_id": registry_id,
                "condition": null,
                "webhook": { "url": "https://backend.example.com/iot", "headers": { "Authorization": "Bearer x" },
                             "secret": "very-secret-value" },
            }),
        )
        .await;
    assert_eq!(rule.status, StatusCode::CREATED, "{:#?}", rule.body);
    assert_eq!(rule.body["enabled"], true);
    assert_eq!(rule.body["registry_id"], registry_id.as_str());
    assert_eq!(
        rule.body["webhook"],
        json!({ "url": "https://backend.example.com/iot", "headers": { "Authorization": "Bearer x" },
                "has_secret": true, "timeout_ms": 5000, "max_in_flight": 64,
                "batch": { "max_messages": 1, "max_wait_ms": 0 } })
    );
    assert!(!rule.body.to_string().contains("very-secret-value"));
    let rule_id = rule.body["id"].as_str().unwrap().to_owned();
    let tenant_key = iotcore_store::TenantId::parse(&tenant_id).unwrap();
    let (_, routes) = app.store.enabled_rule_routes(&tenant_key).await.unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].id.as_str(), rule_id);

    let disabled = app
        .call(
            &admin,
            Method::PATCH,
            &format!("/v1/rules/{rule_id}"),
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK);
    assert_eq!(disabled.body["enabled"], false);
    let (_, routes) = app.store.enabled_rule_routes(&tenant_key).await.unwrap();
    assert!(routes.is_empty());

    assert_eq!(
        app.get(&admin, "/v1/rules").await.body["items"],
        json!([disabled.body])
    );
    assert_eq!(
        app.delete(&admin, &format!("/v1/rules/{rule_id}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    app.get(&admin, &format!("/v1/rules/{rule_id}"))
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    let password_id = password.body["id"].as_str().unwrap();
    let deleted = app
        .delete(
            &admin,
            &format!("/v1/devices/{device_id}/passwords/{password_id}"),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let principal = app
        .store
        .find_password_principal(&device_id)
        .await
        .unwrap()
        .unwrap();
    assert!(!principal
        .hashes
        .iter()
        .any(|h| verify_password(h, secret.as_bytes())));

    // A registry with devices is kept unless forced.
    app.delete(&admin, &format!("/v1/registries/{registry_id}"))
        .await
        .assert_problem(StatusCode::CONFLICT);
    assert_eq!(
        app.delete(&admin, &format!("/v1/devices/{device_id}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    app.get(&admin, &format!("/v1/devices/{device_id}"))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&admin, &format!("/v1/registries/{registry_id}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn lists_are_paginated_in_id_order(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let mut ids = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        ids.push(
            app.create_registry(&editor, name).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut uri = "/v1/registries?page_size=2".to_owned();
    for _ in 0..3 {
        let page = app.get(&editor, &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{:#?}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page.body["next_page_token"].as_str() {
            Some(token) => uri = format!("/v1/registries?page_size=2&page_token={token}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    app.get(&editor, "/v1/registries?page_size=0")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    app.get(&editor, "/v1/registries?page_size=1001")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    app.get(&editor, "/v1/registries?page_token=%25%25")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn operator_acts_in_the_tenant_it_names(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let problem = app.get(&app.operator(), "/v1/registries").await;
    problem.assert_problem(StatusCode::BAD_REQUEST);
    let operator = app.operator_in(&tenant);
    let registry = app.create_registry(&operator, "ops-made").await;
    let seen = app
        .get(&app.member(Role::Viewer, &tenant), "/v1/registries")
        .await;
    assert_eq!(seen.body["items"], json!([registry]));
    // Naming a tenant that does not exist, or is not a tenant id at all.
    let missing = app.operator_in(iotcore_store::TenantId::generate().as_str());
    app.get(&missing, "/v1/registries")
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    app.get(&app.operator_in("acme"), "/v1/registries")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn health_and_readiness(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let none = crate::helpers::Caller {
        token: None,
        tenant_header: None,
    };
    let health = app.get(&none, "/healthz").await;
    assert_eq!(
        (health.status, health.body),
        (StatusCode::OK, json!({ "status": "ok" }))
    );
    assert_eq!(app.get(&none, "/readyz").await.status, StatusCode::OK);
    let doc = app.get(&none, "/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
}

/// Requests are counted by route template, so ids in paths never become label values.
#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn metrics_count_requests_by_route_template_not_raw_path(pool: sqlx::PgPool) {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let viewer = app.member(Role::Viewer, &tenant);
    let missing = app
        .get(&viewer, "/v1/devices/dev_metricsmissing000000")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let scrape = app
        .router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(scrape.status(), StatusCode::OK);
    assert_eq!(
        scrape.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = axum::body::to_bytes(scrape.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8(text.to_vec()).unwrap();
    let route = "route=\"/v1/devices/{id}\"";
    assert!(
        text.contains(&format!(
            "iotcore_http_requests_total{{{route},status=\"404\"}}"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("iotcore_http_request_seconds_count{{{route}}}")));
    assert!(!text.contains("dev_metricsmissing"), "{text}");
    assert!(text.contains("# TYPE iotcore_mqtt_connections gauge"));
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn readiness_fails_when_the_database_is_gone(pool: sqlx::PgPool) {
    let app = TestApp::new(pool.clone());
    pool.close().await;
    let none = crate::helpers::Caller {
        token: None,
        tenant_header: None,
    };
    app.get(&none, "/readyz")
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn registry_client_password_is_shown_once_and_verifies(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let registry = app.create_registry(&editor, "r").await;
    let registry_id = registry["id"].as_str().unwrap();
    let uri = format!("/v1/registries/{registry_id}/passwords");
    let created = app.post(&editor, &uri, json!({})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:#?}", created.body);
    let secret = created.body["password"].as_str().unwrap();
    let principal = app
        .store
        .find_password_principal(registry_id)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(principal.kind, PrincipalKind::Registry { .. }));
    assert!(principal
        .hashes
        .iter()
        .any(|h| verify_password(h, secret.as_bytes())));
    let listed = app.get(&editor, &uri).await;
    assert_eq!(listed.body["items"][0]["id"], created.body["id"]);
    assert!(listed.body["items"][0].get("password").is_none());
    // Another tenant sees no such registry.
    let other = app.member(Role::Admin, &app.create_tenant("other").await);
    app.post(&other, &uri, json!({}))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    app.get(&other, &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let password_id = created.body["id"].as_str().unwrap();
    app.delete(&other, &format!("{uri}/{password_id}"))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&editor, &format!("{uri}/{password_id}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let principal = app
        .store
        .find_password_principal(registry_id)
        .await
        .unwrap()
        .unwrap();
    assert!(principal.hashes.is_empty());
}
