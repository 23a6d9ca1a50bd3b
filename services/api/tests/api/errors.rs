//! Every failure is an RFC 9457 problem, never a bare status or an internal message.

use crate::helpers::TestApp;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use iotcore_api::auth::Role;
use serde_json::json;

fn raw_post(
    caller: &crate::helpers::Caller,
    uri: &str,
    content_type: Option<&str>,
    body: &str,
) -> Request<Body> {
    let mut request = Request::post(uri).header(
        header::AUTHORIZATION,
        format!("Bearer {}", caller.token.as_deref().unwrap()),
    );
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn malformed_bodies_are_problems(pool: sqlx::PgPool) {
    let app = TestApp::with_config(pool, |config| config.max_body_bytes = 4096);
    let tenant = app.create_tenant("acme").await;
    let admin = app.member(Role::Admin, &tenant);

    let syntax = app
        .send(raw_post(
            &admin,
            "/v1/registries",
            Some("application/json"),
            "{\"name\": ",
        ))
        .await;
    syntax.assert_problem(StatusCode::BAD_REQUEST);

    let media = app
        .send(raw_post(
            &admin,
            "/v1/registries",
            Some("text/plain"),
            "{\"name\":\"x\"}",
        ))
        .await;
    media.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let media = app
        .send(raw_post(&admin, "/v1/registries", None, "{\"name\":\"x\"}"))
        .await;
    media.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let missing = app
        .post(
            &admin,
            "/v1/registries",
            json!({ "description": "no name" }),
        )
        .await;
    missing.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing.error_fields(), ["name"]);

    let wrong_type = app
        .post(&admin, "/v1/registries", json!({ "name": 7 }))
        .await;
    wrong_type.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_type.error_fields(), ["name"]);

    let nested = app
        .post(
            &admin,
            "/v1/rules",
            json!({ "name": "r", "topic_filter": "#", "webhook": {} }),
        )
        .await;
    nested.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(nested.error_fields(), ["webhook.url"]);

    let big = json!({ "name": "x", "description": "y".repeat(8192) }).to_string();
    let too_large = app
        .send(raw_post(
            &admin,
            "/v1/registries",
            Some("application/json"),
            &big,
        ))
        .await;
    too_large.assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn routing_failures_are_problems(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let admin = app.member(Role::Admin, &tenant);
    app.get(&admin, "/v1/nothing-here")
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    app.call(&admin, Method::PUT, "/v1/registries", Some(json!({})))
        .await
        .assert_problem(StatusCode::METHOD_NOT_ALLOWED);
    app.call(&admin, Method::POST, "/healthz", Some(json!({})))
        .await
        .assert_problem(StatusCode::METHOD_NOT_ALLOWED);
    // An id of the wrong kind or shape is a bad request, not a lookup.
    for uri in [
        "/v1/registries/dev_00000000000000000000",
        "/v1/devices/not-an-id",
        "/v1/rules/rul_short",
    ] {
        app.get(&admin, uri)
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
    app.delete(
        &admin,
        "/v1/devices/dev_00000000000000000000/passwords/nope",
    )
    .await
    .assert_problem(StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn invalid_fields_are_all_named(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let admin = app.member(Role::Admin, &tenant);

    let registry = app
        .post(
            &admin,
            "/v1/registries",
            json!({ "name": "", "labels": { "bad key": "v" }, "description": "ok" }),
        )
        .await;
    registry.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(registry.error_fields(), ["name", "labels.bad key"]);

    let rule = app
        .post(
            &admin,
            "/v1/rules",
            json!({
                "name": "r",
                "topic_filter": "a/#/b",
                "condition": "payload.celsius >",
                "webhook": { "url": "ftp://example.com/", "headers": { "Content-Type": "text/plain" },
                             "timeout_ms": 0, "max_in_flight": 100000 },
            }),
        )
        .await;
    rule.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let mut fields = rule.error_fields();
    fields.sort();
    assert_eq!(
        fields,
        [
            "condition",
            "topic_filter",
            "webhook.headers.Content-Type",
            "webhook.max_in_flight",
            "webhook.timeout_ms",
            "webhook.url",
        ]
    );
    let condition = rule.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["field"] == "condition")
        .unwrap();
    assert_eq!(
        condition["message"],
        "invalid at position 17: expected a value"
    );

    let unknown_registry = app
        .post(
            &admin,
            "/v1/rules",
            json!({ "name": "r", "topic_filter": "#", "registry_id": "reg_00000000000000000000",
                    "webhook": { "url": "http://h/" } }),
        )
        .await;
    unknown_registry.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown_registry.error_fields(), ["registry_id"]);

    let registry = app.create_registry(&admin, "r").await;
    let device = app.create_device(&admin, &registry, "d").await;
    let uri = format!("/v1/devices/{}/passwords", device["id"].as_str().unwrap());
    let short = app
        .post(&admin, &uri, json!({ "password": "too-short" }))
        .await;
    short.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(short.error_fields(), ["password"]);
    let past = app
        .post(
            &admin,
            &uri,
            json!({ "expires_at": "2001-01-01T00:00:00Z" }),
        )
        .await;
    past.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(past.error_fields(), ["expires_at"]);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn duplicate_names_conflict(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let admin = app.member(Role::Admin, &tenant);
    let registry = app.create_registry(&admin, "r").await;
    app.post(&admin, "/v1/registries", json!({ "name": "r" }))
        .await
        .assert_problem(StatusCode::CONFLICT);
    app.create_device(&admin, &registry, "d").await;
    let uri = format!(
        "/v1/registries/{}/devices",
        registry["id"].as_str().unwrap()
    );
    app.post(&admin, &uri, json!({ "name": "d" }))
        .await
        .assert_problem(StatusCode::CONFLICT);
    app.create_rule(&admin, "rule").await;
    let duplicate =
        json!({ "name": "rule", "topic_filter": "#", "webhook": { "url": "http://h/" } });
    app.post(&admin, "/v1/rules", duplicate)
        .await
        .assert_problem(StatusCode::CONFLICT);
}
