//! Who may do what: 401 without a valid token, 403 for a role that may not, 404 for
//! another tenant's resources exactly as for missing ones (SPEC §2, §6.1).

use crate::helpers::{Caller, TestApp};
use axum::http::{Method, StatusCode};
use iotcore_api::auth::{mint_token, Role};
use iotcore_api::AuthConfig;
use serde_json::json;
use std::time::Duration;

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn requests_without_a_valid_token_are_unauthorized(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let foreign_key = AuthConfig {
        hs256_secret: Some("another-secret".into()),
        ..app.config.auth.clone()
    };
    let forged = mint_token(
        &foreign_key,
        Role::Admin,
        Some(&tenant),
        "mallory",
        Duration::from_secs(60),
    )
    .unwrap();
    let callers = [
        Caller {
            token: None,
            tenant_header: None,
        },
        Caller {
            token: Some("not-a-jwt".into()),
            tenant_header: None,
        },
        Caller {
            token: Some(forged),
            tenant_header: None,
        },
    ];
    for caller in &callers {
        for uri in ["/v1/registries", "/v1/tenants", "/v1/rules"] {
            let response = app.get(caller, uri).await;
            response.assert_problem(StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers["www-authenticate"], "Bearer");
        }
    }
    // A scheme other than Bearer is no token at all.
    let basic = axum::http::Request::get("/v1/registries")
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .body(axum::body::Body::empty())
        .unwrap();
    app.send(basic)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn viewers_read_but_do_not_write(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let viewer = app.member(Role::Viewer, &tenant);
    let registry = app.create_registry(&editor, "r").await;
    let device = app.create_device(&editor, &registry, "d").await;
    let rule = app.create_rule(&editor, "r").await;
    let (registry_id, device_id, rule_id) = (
        registry["id"].as_str().unwrap(),
        device["id"].as_str().unwrap(),
        rule["id"].as_str().unwrap(),
    );

    assert_eq!(
        app.get(&viewer, &format!("/v1/registries/{registry_id}"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get(&viewer, &format!("/v1/devices/{device_id}"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get(&viewer, &format!("/v1/rules/{rule_id}"))
            .await
            .status,
        StatusCode::OK
    );

    let writes = [
        (
            Method::POST,
            "/v1/registries".to_owned(),
            Some(json!({ "name": "x" })),
        ),
        (
            Method::DELETE,
            format!("/v1/registries/{registry_id}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/registries/{registry_id}/devices"),
            Some(json!({ "name": "x" })),
        ),
        (Method::DELETE, format!("/v1/devices/{device_id}"), None),
        (
            Method::POST,
            format!("/v1/devices/{device_id}/passwords"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/rules".to_owned(),
            Some(json!({ "name": "x" })),
        ),
        (
            Method::PATCH,
            format!("/v1/rules/{rule_id}"),
            Some(json!({ "enabled": false })),
        ),
        (Method::DELETE, format!("/v1/rules/{rule_id}"), None),
    ];
    for (method, uri, body) in writes {
        app.call(&viewer, method.clone(), &uri, body)
            .await
            .assert_problem(StatusCode::FORBIDDEN);
    }
    // Nothing changed.
    assert_eq!(
        app.get(&viewer, &format!("/v1/devices/{device_id}"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get(&viewer, &format!("/v1/rules/{rule_id}")).await.body["enabled"],
        true
    );
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn only_operators_manage_tenants(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let other = app.create_tenant("other").await;
    for role in [Role::Admin, Role::Editor, Role::Viewer] {
        let member = app.member(role, &tenant);
        app.get(&member, "/v1/tenants")
            .await
            .assert_problem(StatusCode::FORBIDDEN);
        // Members read their own tenant, and another one is as missing as a missing one.
        assert_eq!(
            app.get(&member, &format!("/v1/tenants/{tenant}"))
                .await
                .body["id"],
            tenant.as_str()
        );
        app.get(&member, &format!("/v1/tenants/{other}"))
            .await
            .assert_problem(StatusCode::NOT_FOUND);
        app.post(&member, "/v1/tenants", json!({ "name": "x" }))
            .await
            .assert_problem(StatusCode::FORBIDDEN);
        app.delete(&member, &format!("/v1/tenants/{tenant}"))
            .await
            .assert_problem(StatusCode::FORBIDDEN);
        app.call(
            &member,
            Method::PATCH,
            &format!("/v1/tenants/{tenant}"),
            Some(json!({ "status": "suspended" })),
        )
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    }
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn another_tenants_resources_answer_exactly_like_missing_ones(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let owner = app.member(Role::Admin, &app.create_tenant("owner").await);
    let other_tenant = app.create_tenant("other").await;
    let other = app.member(Role::Admin, &other_tenant);
    let registry = app.create_registry(&owner, "r").await;
    let device = app.create_device(&owner, &registry, "d").await;
    let rule = app.create_rule(&owner, "r").await;
    let password = app
        .post(
            &owner,
            &format!("/v1/devices/{}/passwords", device["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    let (registry_id, device_id, rule_id, password_id) = (
        registry["id"].as_str().unwrap(),
        device["id"].as_str().unwrap(),
        rule["id"].as_str().unwrap(),
        password.body["id"].as_str().unwrap(),
    );
    let missing = |prefix: &str| format!("{prefix}_00000000000000000000");

    let pairs = [
        (
            Method::GET,
            format!("/v1/registries/{registry_id}"),
            format!("/v1/registries/{}", missing("reg")),
        ),
        (
            Method::DELETE,
            format!("/v1/registries/{registry_id}?force=true"),
            format!("/v1/registries/{}", missing("reg")),
        ),
        (
            Method::GET,
            format!("/v1/registries/{registry_id}/devices"),
            format!("/v1/registries/{}/devices", missing("reg")),
        ),
        (
            Method::GET,
            format!("/v1/devices/{device_id}"),
            format!("/v1/devices/{}", missing("dev")),
        ),
        (
            Method::DELETE,
            format!("/v1/devices/{device_id}"),
            format!("/v1/devices/{}", missing("dev")),
        ),
        (
            Method::GET,
            format!("/v1/devices/{device_id}/passwords"),
            format!("/v1/devices/{}/passwords", missing("dev")),
        ),
        (
            Method::DELETE,
            format!("/v1/devices/{device_id}/passwords/{password_id}"),
            format!("/v1/devices/{device_id}/passwords/{}", missing("pwd")),
        ),
        (
            Method::GET,
            format!("/v1/rules/{rule_id}"),
            format!("/v1/rules/{}", missing("rul")),
        ),
        (
            Method::DELETE,
            format!("/v1/rules/{rule_id}"),
            format!("/v1/rules/{}", missing("rul")),
        ),
    ];
    for (method, theirs, absent) in pairs {
        let foreign = app.call(&other, method.clone(), &theirs, None).await;
        let nothing = app.call(&other, method.clone(), &absent, None).await;
        foreign.assert_problem(StatusCode::NOT_FOUND);
        assert_eq!(foreign.body, nothing.body, "{method} {theirs}");
    }
    // Creating under another tenant's registry or device is a 404 too.
    app.post(
        &other,
        &format!("/v1/registries/{registry_id}/devices"),
        json!({ "name": "x" }),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND);
    app.post(
        &other,
        &format!("/v1/devices/{device_id}/passwords"),
        json!({}),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND);
    // A rule cannot be scoped to another tenant's registry.
    let scoped = app
        .post(
            &other,
            "/v1/rules",
            json!({ "name": "x", "topic_filter": "#", "registry_id": registry_id, "webhook": { "url": "http://h/" } }),
        )
        .await;
    scoped.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(scoped.error_fields(), ["registry_id"]);
    // A tenant token cannot borrow the operator's header to reach elsewhere.
    let sneaky = Caller {
        tenant_header: Some(other_tenant.clone()),
        ..owner.clone()
    };
    app.get(&sneaky, "/v1/registries")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    // And everything is still there for its owner.
    assert_eq!(
        app.get(&owner, &format!("/v1/devices/{device_id}"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get(&owner, &format!("/v1/rules/{rule_id}"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get(&owner, &format!("/v1/devices/{device_id}/passwords"))
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
