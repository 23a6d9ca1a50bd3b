//! Changing, filtering and deleting resources: tenants, registries, devices and virtual
//! brokers (SPEC §6.2), and lists that page stably under filters (SPEC §6.1).

use crate::helpers::TestApp;
use axum::http::StatusCode;
use iotcore_api::auth::Role;
use serde_json::{json, Value};

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn operators_suspend_rename_filter_and_delete_tenants(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let ops = app.operator();
    let acme = app.create_tenant("acme").await;
    let beta = app.create_tenant("beta").await;
    let uri = format!("/v1/tenants/{acme}");

    let response = app
        .patch(&ops, &uri, json!({ "status": "suspended" }))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:#?}", response.body);
    assert_eq!(response.body["status"], "suspended");
    assert_eq!(response.body["name"], "acme");

    let suspended = app.get(&ops, "/v1/tenants?status=suspended").await;
    assert_eq!(ids(&suspended.body), vec![acme.clone()]);
    let by_name = app.get(&ops, "/v1/tenants?name_prefix=be").await;
    assert_eq!(ids(&by_name.body), vec![beta.clone()]);
    app.get(&ops, "/v1/tenants?status=sleeping")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    // Tenants have no labels: a label filter is an invalid filter, a 422 as documented.
    let by_label = app.get(&ops, "/v1/tenants?label=site:north").await;
    by_label.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(by_label.error_fields(), vec!["label"]);

    // A tenant's admin renames it but cannot reactivate it.
    let admin = app.member(Role::Admin, &acme);
    let renamed = app
        .patch(&admin, &uri, json!({ "name": "acme corp" }))
        .await;
    assert_eq!(renamed.body["name"], "acme corp");
    app.patch(&admin, &uri, json!({ "status": "active" }))
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    let invalid = app.patch(&ops, &uri, json!({ "name": "" })).await;
    invalid.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(invalid.error_fields(), vec!["name"]);

    app.create_registry(&app.operator_in(&acme), "r").await;
    assert_eq!(app.delete(&ops, &uri).await.status, StatusCode::NO_CONTENT);
    app.get(&ops, &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    app.delete(&ops, &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    // Its tokens now lead nowhere.
    app.get(&admin, "/v1/registries")
        .await
        .assert_problem(StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn registries_are_patched_and_filtered(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let north = app.create_registry(&editor, "north").await;
    let south = app.create_registry(&editor, "south").await;
    let north_uri = format!("/v1/registries/{}", north["id"].as_str().unwrap());

    let patched = app
        .patch(
            &editor,
            &north_uri,
            json!({ "labels": { "site": "n1" }, "default_policy": false }),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:#?}", patched.body);
    assert_eq!(patched.body["labels"], json!({ "site": "n1" }));
    assert_eq!(patched.body["default_policy"], false);
    assert_eq!(patched.body["name"], "north");
    assert_eq!(app.get(&editor, &north_uri).await.body, patched.body);

    let taken = app
        .patch(&editor, &north_uri, json!({ "name": "south" }))
        .await;
    taken.assert_problem(StatusCode::CONFLICT);
    let bad = app
        .patch(
            &editor,
            &north_uri,
            json!({ "name": " x", "labels": { "bad key": "v" } }),
        )
        .await;
    bad.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.error_fields(), vec!["name", "labels.bad key"]);

    let by_label = app.get(&editor, "/v1/registries?label=site:n1").await;
    assert_eq!(ids(&by_label.body), vec![north["id"].as_str().unwrap()]);
    let by_prefix = app.get(&editor, "/v1/registries?name_prefix=sou").await;
    assert_eq!(ids(&by_prefix.body), vec![south["id"].as_str().unwrap()]);
    let bad_label = app.get(&editor, "/v1/registries?label=nocolon").await;
    bad_label.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_label.error_fields(), vec!["label"]);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn devices_are_disabled_relabelled_and_listed_page_by_page(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let registry = app.create_registry(&editor, "r").await;
    let mut devices = Vec::new();
    for i in 0..5 {
        let device = app
            .create_device(&editor, &registry, &format!("d{i}"))
            .await;
        devices.push(device["id"].as_str().unwrap().to_owned());
    }
    devices.sort();
    let device_uri = format!("/v1/devices/{}", devices[1]);
    let fresh = app.get(&editor, &device_uri).await;
    assert_eq!(fresh.body["connection"]["online"], false);
    assert_eq!(fresh.body["connection"]["connected_at"], Value::Null);

    let patched = app
        .patch(
            &editor,
            &device_uri,
            json!({ "status": "disabled", "labels": { "floor": "2" }, "description": "lobby" }),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:#?}", patched.body);
    assert_eq!(patched.body["status"], "disabled");
    assert_eq!(patched.body["description"], "lobby");
    app.patch(&editor, &device_uri, json!({ "status": "asleep" }))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);

    let list = format!(
        "/v1/registries/{}/devices",
        registry["id"].as_str().unwrap()
    );
    let disabled = app.get(&editor, &format!("{list}?status=disabled")).await;
    assert_eq!(ids(&disabled.body), vec![devices[1].clone()]);
    let labelled = app
        .get(&editor, &format!("{list}?label=floor:2&name_prefix=d"))
        .await;
    assert_eq!(ids(&labelled.body), vec![devices[1].clone()]);

    // Pages of two, filtered to the enabled devices, cover them in id order exactly once.
    let mut seen = Vec::new();
    let mut uri = format!("{list}?status=enabled&page_size=2");
    loop {
        let page = app.get(&editor, &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{:#?}", page.body);
        seen.extend(ids(&page.body));
        match page.body["next_page_token"].as_str() {
            Some(token) => uri = format!("{list}?status=enabled&page_size=2&page_token={token}"),
            None => break,
        }
    }
    let enabled: Vec<String> = devices
        .iter()
        .filter(|d| **d != devices[1])
        .cloned()
        .collect();
    assert_eq!(seen, enabled);

    // The broker records connections; the API shows them.
    sqlx::query(
        "INSERT INTO device_connections (device_id, tenant_id, online, connected_at, last_activity_at, protocol_version, client_address)
         VALUES ($1, $2, true, now(), now(), '3.1.1', '192.0.2.1:1883')",
    )
    .bind(&devices[0])
    .bind(&tenant)
    .execute(app.store.pool())
    .await
    .unwrap();
    let online = app
        .get(&editor, &format!("/v1/devices/{}", devices[0]))
        .await;
    assert_eq!(online.body["connection"]["online"], true);
    assert_eq!(online.body["connection"]["protocol_version"], "3.1.1");
    assert_eq!(
        online.body["connection"]["client_address"],
        "192.0.2.1:1883"
    );
    assert!(online.body["connection"]["connected_at"].is_string());
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn virtual_brokers_have_a_lifecycle_and_passwords(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let viewer = app.member(Role::Viewer, &tenant);
    let outsider = app.member(Role::Admin, &app.create_tenant("other").await);

    let created = app
        .post(
            &editor,
            "/v1/brokers",
            json!({ "name": "lab", "labels": { "env": "dev" } }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:#?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("brk_"));
    let uri = format!("/v1/brokers/{id}");
    assert_eq!(created.headers["location"], uri.as_str());
    app.post(&editor, "/v1/brokers", json!({ "name": "lab" }))
        .await
        .assert_problem(StatusCode::CONFLICT);
    app.post(&viewer, "/v1/brokers", json!({ "name": "x" }))
        .await
        .assert_problem(StatusCode::FORBIDDEN);

    assert_eq!(app.get(&viewer, &uri).await.body, created.body);
    app.get(&outsider, &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let listed = app.get(&viewer, "/v1/brokers?label=env:dev").await;
    assert_eq!(ids(&listed.body), vec![id.clone()]);
    assert!(ids(&app.get(&outsider, "/v1/brokers").await.body).is_empty());

    let patched = app
        .patch(&editor, &uri, json!({ "description": "bench" }))
        .await;
    assert_eq!(patched.body["description"], "bench");
    assert_eq!(patched.body["labels"], json!({ "env": "dev" }));
    app.patch(&outsider, &uri, json!({ "description": "x" }))
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    let password = app
        .post(&editor, &format!("{uri}/passwords"), json!({}))
        .await;
    assert_eq!(password.status, StatusCode::CREATED, "{:#?}", password.body);
    assert!(password.body["password"].as_str().unwrap().len() >= 32);
    let passwords = app.get(&viewer, &format!("{uri}/passwords")).await;
    assert_eq!(passwords.body["items"].as_array().unwrap().len(), 1);
    assert!(passwords.body["items"][0].get("password").is_none());
    app.get(&outsider, &format!("{uri}/passwords"))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let password_uri = format!("{uri}/passwords/{}", password.body["id"].as_str().unwrap());
    assert_eq!(
        app.delete(&editor, &password_uri).await.status,
        StatusCode::NO_CONTENT
    );

    app.delete(&outsider, &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&editor, &uri).await.status,
        StatusCode::NO_CONTENT
    );
    app.get(&editor, &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn quotas_default_from_configuration_and_are_enforced_per_tenant(pool: sqlx::PgPool) {
    let app = TestApp::with_config(pool, |config| config.quotas.max_devices = 5);
    let ops = app.operator();
    let tenant = app.create_tenant("acme").await;
    let other = app.create_tenant("other").await;
    let admin = app.member(Role::Admin, &tenant);
    let uri = format!("/v1/tenants/{tenant}/quotas");

    let defaults = app.get(&admin, &uri).await;
    assert_eq!(defaults.status, StatusCode::OK, "{:#?}", defaults.body);
    assert_eq!(defaults.body["max_devices"], 5);
    assert_eq!(defaults.body["overridden"], json!([]));
    app.patch(&admin, &uri, json!({ "max_devices": 100 }))
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    app.get(&app.member(Role::Viewer, &other), &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    let lowered = app.patch(&ops, &uri, json!({ "max_devices": 1 })).await;
    assert_eq!(lowered.body["max_devices"], 1);
    assert_eq!(lowered.body["overridden"], json!(["max_devices"]));
    let registry = app.create_registry(&admin, "r").await;
    app.create_device(&admin, &registry, "one").await;
    let refused = app
        .post(
            &admin,
            &format!(
                "/v1/registries/{}/devices",
                registry["id"].as_str().unwrap()
            ),
            json!({ "name": "two" }),
        )
        .await;
    refused.assert_problem(StatusCode::CONFLICT);
    assert_eq!(refused.body["type"], "urn:iotcore:problem:quota-exceeded");
    // Another tenant is not held back by this one's limit.
    let theirs = app.member(Role::Admin, &other);
    let their_registry = app.create_registry(&theirs, "r").await;
    app.create_device(&theirs, &their_registry, "one").await;
    app.create_device(&theirs, &their_registry, "two").await;

    let reset = app.patch(&ops, &uri, json!({ "max_devices": null })).await;
    assert_eq!(reset.body["max_devices"], 5);
    assert_eq!(reset.body["overridden"], json!([]));
    app.create_device(&admin, &registry, "two").await;
    app.patch(&ops, &uri, json!({ "max_devices": -1 }))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn the_rules_quota_is_enforced_per_tenant(pool: sqlx::PgPool) {
    let app = TestApp::with_config(pool, |config| config.quotas.max_rules = 1);
    let tenant = app.create_tenant("acme").await;
    let other = app.create_tenant("other").await;
    let rule = |name: &str| {
        json!({ "name": name, "topic_filter": "$devices/+/events/#",
                "webhook": { "url": "http://127.0.0.1:9/hook" } })
    };
    let admin = app.member(Role::Admin, &tenant);
    let first = app.post(&admin, "/v1/rules", rule("first")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:#?}", first.body);
    let refused = app.post(&admin, "/v1/rules", rule("second")).await;
    refused.assert_problem(StatusCode::CONFLICT);
    assert_eq!(refused.body["type"], "urn:iotcore:problem:quota-exceeded");
    let theirs = app.member(Role::Admin, &other);
    let created = app.post(&theirs, "/v1/rules", rule("first")).await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "another tenant is not held back"
    );
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn policies_filter_by_name_prefix_and_refuse_a_label_filter(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let mut fleet = Vec::new();
    for name in ["fleet-a", "lab", "fleet-b"] {
        let statements = json!([{ "effect": "allow", "actions": ["publish"], "topics": ["a/#"] }]);
        let created = app
            .post(
                &editor,
                "/v1/policies",
                json!({ "name": name, "statements": statements }),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{:#?}", created.body);
        if name.starts_with("fleet-") {
            fleet.push(created.body["id"].as_str().unwrap().to_owned());
        }
    }
    fleet.sort();
    let listed = app.get(&editor, "/v1/policies?name_prefix=fleet-").await;
    assert_eq!(ids(&listed.body), fleet);
    // Policies have no labels: a label filter is an invalid filter, not one that is ignored.
    let by_label = app.get(&editor, "/v1/policies?label=site:north").await;
    by_label.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(by_label.error_fields(), vec!["label"]);
}
