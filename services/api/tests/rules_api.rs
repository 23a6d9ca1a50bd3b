//! `/v1/rules`: conditions, the SSRF guard at creation, statistics and dead letters,
//! through the router against a fresh database of its own.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use axum::http::StatusCode;
use helpers::TestApp;
use iotcore_api::auth::Role;
use iotcore_store::deliveries::NewDelivery;
use iotcore_store::{MessageId, RuleId, TenantId};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn rule_body(name: &str, url: &str, condition: Value) -> Value {
    json!({
        "name": name,
        "topic_filter": "$devices/+/events/#",
        "condition": condition,
        "webhook": { "url": url },
    })
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn invalid_condition_is_refused_with_its_position(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let url = "http://127.0.0.1:9/hook";

    let response = app
        .post(
            &editor,
            "/v1/rules",
            rule_body("bad", url, json!("payload.celsius >")),
        )
        .await;
    let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "condition");
    let message = problem["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("position 17"), "{message}");

    let created = app
        .post(
            &editor,
            "/v1/rules",
            rule_body("hot", url, json!("payload.celsius > 30")),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:#?}", created.body);
    assert_eq!(created.body["condition"], "payload.celsius > 30");
    let uri = format!("/v1/rules/{}", created.body["id"].as_str().unwrap());

    let bad_change = app
        .patch(&editor, &uri, json!({ "condition": "qos in [1," }))
        .await;
    let problem = bad_change.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "condition");

    let changed = app
        .patch(&editor, &uri, json!({ "condition": "qos == 1" }))
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{:#?}", changed.body);
    assert_eq!(changed.body["condition"], "qos == 1");
    let kept = app.patch(&editor, &uri, json!({ "enabled": false })).await;
    assert_eq!(kept.body["condition"], "qos == 1");
    assert_eq!(kept.body["enabled"], false);
    let cleared = app.patch(&editor, &uri, json!({ "condition": null })).await;
    assert_eq!(cleared.status, StatusCode::OK, "{:#?}", cleared.body);
    assert_eq!(cleared.body["condition"], Value::Null);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn private_destinations_are_refused_unless_allowed(pool: sqlx::PgPool) {
    let guarded = TestApp::with_config(pool.clone(), |c| c.allow_private_destinations = false);
    let tenant = guarded.create_tenant("acme").await;
    let editor = guarded.member(Role::Editor, &tenant);
    for (i, url) in [
        "http://127.0.0.1:9/hook",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "https://[::ffff:192.168.0.1]/hook",
        "http://[fd00:ec2::254]/",
    ]
    .into_iter()
    .enumerate()
    {
        let response = guarded
            .post(
                &editor,
                "/v1/rules",
                rule_body(&format!("r{i}"), url, Value::Null),
            )
            .await;
        let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["errors"][0]["field"], "webhook.url", "{url}");
    }
    // A public address is accepted.
    let public = guarded
        .post(
            &editor,
            "/v1/rules",
            rule_body("public", "https://8.8.8.8/hook", Value::Null),
        )
        .await;
    assert_eq!(public.status, StatusCode::CREATED, "{:#?}", public.body);

    let open = TestApp::with_config(pool, |c| c.allow_private_destinations = true);
    let response = open
        .post(
            &editor,
            "/v1/rules",
            rule_body("local", "http://127.0.0.1:9/hook", Value::Null),
        )
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{:#?}", response.body);
}

/// Puts `n` messages of `rule` into its dead letters, as a rules worker would.
async fn dead_letters(app: &TestApp, tenant: &str, rule: &str, n: usize) -> Vec<String> {
    let tenant = TenantId::parse(tenant).unwrap();
    let rule = RuleId::parse(rule).unwrap();
    let batch: Vec<NewDelivery> = (0..n)
        .map(|i| NewDelivery {
            id: MessageId::generate(),
            tenant_id: tenant.clone(),
            rule_id: rule.clone(),
            registry_id: None,
            device_id: None,
            topic: format!("t/{i}"),
            qos: 1,
            retain: false,
            payload: b"\x00\x01".to_vec(),
            content_type: None,
            user_properties: Vec::new(),
            received_at: chrono::Utc::now(),
        })
        .collect();
    app.store.enqueue_deliveries(&batch).await.unwrap();
    let claimed = app
        .store
        .claim_deliveries("w", 100, Duration::from_secs(60), &HashMap::new())
        .await
        .unwrap();
    for d in claimed {
        app.store
            .dead_letter_delivery(&tenant, &d.id, "w", "HTTP 410 Gone")
            .await
            .unwrap();
    }
    batch.into_iter().map(|d| d.id.to_string()).collect()
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn dead_letters_are_listed_and_replayed_with_stats(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let other = app.create_tenant("other").await;
    let editor = app.member(Role::Editor, &tenant);
    let viewer = app.member(Role::Viewer, &tenant);
    let stranger = app.member(Role::Admin, &other);
    let rule = app.create_rule(&editor, "r").await;
    let rule_id = rule["id"].as_str().unwrap();
    let ids = dead_letters(&app, &tenant, rule_id, 3).await;

    let stats = app
        .get(&viewer, &format!("/v1/rules/{rule_id}/stats"))
        .await;
    assert_eq!(stats.status, StatusCode::OK, "{:#?}", stats.body);
    assert_eq!(stats.body["dead_lettered"], 3);
    assert_eq!(stats.body["dead_letters"], 3);
    assert_eq!(stats.body["delivered"], 0);
    assert_eq!(stats.body["queue_depth"], 0);
    assert_eq!(stats.body["last_error"], "HTTP 410 Gone");

    let page = app
        .get(
            &viewer,
            &format!("/v1/rules/{rule_id}/dead-letters?page_size=2"),
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{:#?}", page.body);
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page.body["items"][0]["payload_base64"], "AAE=");
    assert_eq!(page.body["items"][0]["last_error"], "HTTP 410 Gone");
    let token = page.body["next_page_token"].as_str().unwrap();
    let rest = app
        .get(
            &viewer,
            &format!("/v1/rules/{rule_id}/dead-letters?page_size=2&page_token={token}"),
        )
        .await;
    assert_eq!(rest.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest.body["next_page_token"], Value::Null);

    let replay = format!("/v1/rules/{rule_id}/dead-letters/replay");
    let forbidden = app.post(&viewer, &replay, json!({})).await;
    forbidden.assert_problem(StatusCode::FORBIDDEN);
    let bad = app.post(&editor, &replay, json!({ "ids": ["nope"] })).await;
    let problem = bad.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "ids[0]");

    let one = app.post(&editor, &replay, json!({ "ids": [ids[0]] })).await;
    assert_eq!(one.status, StatusCode::OK, "{:#?}", one.body);
    assert_eq!(one.body["replayed"], 1);
    let all = app.post(&editor, &replay, json!({})).await;
    assert_eq!(all.body["replayed"], 2);
    let stats = app
        .get(&viewer, &format!("/v1/rules/{rule_id}/stats"))
        .await;
    assert_eq!(stats.body["queue_depth"], 3);
    assert_eq!(stats.body["dead_letters"], 0);

    // Another tenant's rule is a missing one.
    for uri in [
        format!("/v1/rules/{rule_id}/stats"),
        format!("/v1/rules/{rule_id}/dead-letters"),
    ] {
        app.get(&stranger, &uri)
            .await
            .assert_problem(StatusCode::NOT_FOUND);
    }
    app.post(&stranger, &replay, json!({}))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
}
