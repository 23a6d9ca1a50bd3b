//! `Idempotency-Key` on creations (SPEC §6.1): same key and body, same result.

use crate::helpers::{Caller, TestApp};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use iotcore_api::auth::Role;
use serde_json::{json, Value};

fn keyed(caller: &Caller, uri: &str, key: &str, body: &Value) -> Request<Body> {
    let mut request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", key);
    if let Some(token) = &caller.token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(tenant) = &caller.tenant_header {
        request = request.header("X-Iotcore-Tenant", tenant);
    }
    request.body(Body::from(body.to_string())).unwrap()
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn a_retried_creation_returns_the_first_result(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let body = json!({ "name": "sensors" });

    let first = app
        .send(keyed(&editor, "/v1/registries", "retry-1", &body))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:#?}", first.body);
    assert!(first.headers.get("idempotency-replayed").is_none());
    let again = app
        .send(keyed(&editor, "/v1/registries", "retry-1", &body))
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["location"], first.headers["location"]);
    assert_eq!(again.headers["idempotency-replayed"], "true");
    let listed = app.get(&editor, "/v1/registries").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);

    // The same key for another request is refused; another key creates (or conflicts).
    let other = app
        .send(keyed(
            &editor,
            "/v1/registries",
            "retry-1",
            &json!({ "name": "x" }),
        ))
        .await;
    other.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.error_fields(), vec!["Idempotency-Key"]);
    app.send(keyed(&editor, "/v1/registries", "retry-2", &body))
        .await
        .assert_problem(StatusCode::CONFLICT);
    // A kept failure is replayed too, so the outcome never flips between retries.
    app.send(keyed(&editor, "/v1/registries", "retry-2", &body))
        .await
        .assert_problem(StatusCode::CONFLICT);

    // Keys belong to their tenant: another tenant's same key is a new request.
    let other_tenant = app.member(Role::Editor, &app.create_tenant("other").await);
    let theirs = app
        .send(keyed(&other_tenant, "/v1/registries", "retry-1", &body))
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    assert_ne!(theirs.body["id"], first.body["id"]);

    // Operators' own creations are idempotent too.
    let ops = app.operator();
    let tenant_body = json!({ "name": "new" });
    let a = app
        .send(keyed(&ops, "/v1/tenants", "t-1", &tenant_body))
        .await;
    let b = app
        .send(keyed(&ops, "/v1/tenants", "t-1", &tenant_body))
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.body["id"], b.body["id"]);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn malformed_keys_and_anonymous_requests_are_refused(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let body = json!({ "name": "x" });
    for key in ["", "has space", &"k".repeat(256)] {
        app.send(keyed(&editor, "/v1/registries", key, &body))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
    let anonymous = Caller {
        token: None,
        tenant_header: None,
    };
    app.send(keyed(&anonymous, "/v1/registries", "k", &body))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    // Nothing was kept for the refused request: the key is still free.
    let created = app.send(keyed(&editor, "/v1/registries", "k", &body)).await;
    assert_eq!(created.status, StatusCode::CREATED);
}
