//! Publishing from the API (SPEC §6.2): messages are queued in PostgreSQL for the brokers,
//! which claim them whether or not they run in the api's process.

use crate::helpers::TestApp;
use axum::http::StatusCode;
use iotcore_api::auth::Role;
use serde_json::json;

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn commands_and_messages_are_queued_for_the_brokers(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let registry = app.create_registry(&editor, "r").await;
    let device = app.create_device(&editor, &registry, "d").await;
    let (registry_id, device_id) = (
        registry["id"].as_str().unwrap(),
        device["id"].as_str().unwrap(),
    );

    let to_device = app
        .post(
            &editor,
            &format!("/v1/devices/{device_id}/commands"),
            json!({ "subtopic": "reboot", "payload": "now", "qos": 1 }),
        )
        .await;
    assert_eq!(
        to_device.status,
        StatusCode::ACCEPTED,
        "{:#?}",
        to_device.body
    );
    assert_eq!(
        to_device.body["topic"],
        format!("$devices/{device_id}/commands/reboot")
    );
    let to_registry = app
        .post(
            &editor,
            &format!("/v1/registries/{registry_id}/commands"),
            json!({ "payload_base64": "AAEC/w==", "qos": 0, "retain": true, "content_type": "application/octet-stream" }),
        )
        .await;
    assert_eq!(
        to_registry.status,
        StatusCode::ACCEPTED,
        "{:#?}",
        to_registry.body
    );
    let free_form = app
        .post(
            &editor,
            "/v1/publish",
            json!({ "topic": "plant/line-1", "payload": "hello", "qos": 2 }),
        )
        .await;
    assert_eq!(
        free_form.status,
        StatusCode::ACCEPTED,
        "{:#?}",
        free_form.body
    );

    let claimed = app.store.claim_api_publishes(10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert_eq!(claimed[0].id, to_device.body["id"].as_str().unwrap());
    assert_eq!(
        claimed[0].topic,
        format!("$devices/{device_id}/commands/reboot")
    );
    assert_eq!(claimed[0].payload, b"now");
    assert_eq!(claimed[0].qos, 1);
    assert!(!claimed[0].retain);
    assert_eq!(
        claimed[1].topic,
        format!("$registries/{registry_id}/commands")
    );
    assert_eq!(claimed[1].payload, vec![0, 1, 2, 255]);
    assert!(claimed[1].retain);
    assert_eq!(
        claimed[1].content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(claimed[2].topic, "plant/line-1");
    assert_eq!(claimed[2].qos, 2);
    assert!(claimed.iter().all(|m| m.tenant_id.as_str() == tenant));
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn publishing_is_checked_and_confined_to_the_tenant(pool: sqlx::PgPool) {
    let app = TestApp::with_config(pool, |config| config.max_publish_payload_bytes = 8);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let viewer = app.member(Role::Viewer, &tenant);
    let registry = app.create_registry(&editor, "r").await;
    let device = app.create_device(&editor, &registry, "d").await;
    let device_id = device["id"].as_str().unwrap();
    let outsider = app.member(Role::Admin, &app.create_tenant("other").await);
    let command = format!("/v1/devices/{device_id}/commands");

    app.post(&viewer, &command, json!({ "qos": 0 }))
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    app.post(&outsider, &command, json!({ "qos": 0 }))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let cases = [
        (json!({ "qos": 3 }), vec!["qos"]),
        (
            json!({ "qos": 0, "payload": "x", "payload_base64": "eA==" }),
            vec!["payload_base64"],
        ),
        (
            json!({ "qos": 0, "payload_base64": "not base64!" }),
            vec!["payload_base64"],
        ),
        (
            json!({ "qos": 0, "payload": "more than eight bytes" }),
            vec!["payload"],
        ),
        (json!({ "qos": 0, "subtopic": "a/#" }), vec!["subtopic"]),
    ];
    for (body, fields) in cases {
        let response = app.post(&editor, &command, body.clone()).await;
        response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.error_fields(), fields, "{body}");
    }

    // Among $-topics only the tenant's own commands topics are open to the API.
    for topic in [
        format!("$devices/{device_id}/events"),
        "$SYS/broker".to_owned(),
        "$devices/dev_00000000000000000000/commands".to_owned(),
        "a/+/c".to_owned(),
    ] {
        let response = app
            .post(&editor, "/v1/publish", json!({ "topic": topic, "qos": 0 }))
            .await;
        response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.error_fields(), vec!["topic"], "{topic}");
    }
    let foreign = app
        .post(
            &outsider,
            "/v1/publish",
            json!({ "topic": format!("$devices/{device_id}/commands"), "qos": 0 }),
        )
        .await;
    foreign.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let own = app
        .post(
            &editor,
            "/v1/publish",
            json!({ "topic": format!("$devices/{device_id}/commands/x"), "qos": 0 }),
        )
        .await;
    assert_eq!(own.status, StatusCode::ACCEPTED, "{:#?}", own.body);
    assert_eq!(app.store.claim_api_publishes(10).await.unwrap().len(), 1);
}
