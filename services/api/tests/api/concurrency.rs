//! Optimistic concurrency (SPEC §6.1): `ETag` on every single resource that can change,
//! `If-Match` on its changes and its deletion, 412 when the resource moved on.

use crate::helpers::{Caller, TestApp, TestResponse};
use axum::http::{Method, StatusCode};
use iotcore_api::auth::Role;
use serde_json::{json, Value};

fn etag(response: &TestResponse) -> String {
    let tag = response
        .headers
        .get("etag")
        .unwrap_or_else(|| panic!("no ETag in {:#?}", response.headers))
        .to_str()
        .unwrap()
        .to_owned();
    // Strong: If-Match compares strongly, so a weak tag could never be used with it.
    assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
    tag
}

async fn patch_if(
    app: &TestApp,
    caller: &Caller,
    uri: &str,
    body: &Value,
    if_match: &str,
) -> TestResponse {
    app.call_with(
        caller,
        Method::PATCH,
        uri,
        Some(body.clone()),
        &[("if-match", if_match)],
    )
    .await
}

async fn delete_if(app: &TestApp, caller: &Caller, uri: &str, if_match: &str) -> TestResponse {
    app.call_with(caller, Method::DELETE, uri, None, &[("if-match", if_match)])
        .await
}

/// Walks the ETag / If-Match contract on the resource at `uri`, created by `created`:
/// `first` and `second` are two different changes to it.
async fn check_versioning(
    app: &TestApp,
    caller: &Caller,
    created: &TestResponse,
    uri: &str,
    first: Value,
    second: Value,
) {
    let created_tag = etag(created);
    let read = app.get(caller, uri).await;
    assert_eq!(read.status, StatusCode::OK, "{:#?}", read.body);
    assert_eq!(
        etag(&read),
        created_tag,
        "{uri}: a fresh read has the tag of the creation"
    );

    // A change with nothing to change keeps the version, and still answers for If-Match.
    let unchanged = patch_if(app, caller, uri, &json!({}), &created_tag).await;
    assert_eq!(
        unchanged.status,
        StatusCode::OK,
        "{uri}: {:#?}",
        unchanged.body
    );
    assert_eq!(etag(&unchanged), created_tag, "{uri}: an empty change");
    patch_if(app, caller, uri, &json!({}), "\"1\"")
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);

    // A change based on the current version succeeds and moves the version on.
    let changed = patch_if(app, caller, uri, &first, &created_tag).await;
    assert_eq!(changed.status, StatusCode::OK, "{uri}: {:#?}", changed.body);
    let changed_tag = etag(&changed);
    assert_ne!(changed_tag, created_tag, "{uri}");
    assert_eq!(etag(&app.get(caller, uri).await), changed_tag, "{uri}");
    // Making the same change again changes nothing.
    let again = patch_if(app, caller, uri, &first, &changed_tag).await;
    assert_eq!(again.status, StatusCode::OK, "{uri}: {:#?}", again.body);
    assert_eq!(etag(&again), changed_tag, "{uri}: the same change again");

    // A change based on the old version is refused and changes nothing.
    let stale = patch_if(app, caller, uri, &second, &created_tag).await;
    stale.assert_problem(StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        stale.body["type"],
        "urn:iotcore:problem:precondition-failed"
    );
    let after = app.get(caller, uri).await;
    assert_eq!(
        etag(&after),
        changed_tag,
        "{uri}: a refused change changes nothing"
    );
    let mut expected = changed.body.clone();
    if let (Some(expected), Some(read)) = (expected.as_object_mut(), after.body.as_object()) {
        // A device's read carries its live connection status besides what was changed.
        if let Some(connection) = read.get("connection") {
            expected.insert("connection".into(), connection.clone());
        }
    }
    assert_eq!(after.body, expected, "{uri}");

    // Weak tags never match (strong comparison); a list matches if any tag does.
    patch_if(app, caller, uri, &second, &format!("W/{changed_tag}"))
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);
    patch_if(app, caller, uri, &second, "\"unknown\"")
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);
    patch_if(app, caller, uri, &second, "not-a-tag")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    let listed = patch_if(
        app,
        caller,
        uri,
        &second,
        &format!("{created_tag}, {changed_tag}"),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{uri}: {:#?}", listed.body);
    let listed_tag = etag(&listed);
    assert_ne!(listed_tag, changed_tag, "{uri}");

    // `*` and no If-Match at all: If-Match is optional.
    let any = patch_if(app, caller, uri, &first, "*").await;
    assert_eq!(any.status, StatusCode::OK, "{uri}: {:#?}", any.body);
    let plain = app.patch(caller, uri, second.clone()).await;
    assert_eq!(plain.status, StatusCode::OK, "{uri}: {:#?}", plain.body);
    let current = etag(&plain);

    // Deletion: refused for an old version, done for the current one.
    delete_if(app, caller, uri, &created_tag)
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);
    assert_eq!(app.get(caller, uri).await.status, StatusCode::OK, "{uri}");
    let deleted = delete_if(app, caller, uri, &current).await;
    assert_eq!(
        deleted.status,
        StatusCode::NO_CONTENT,
        "{uri}: {:#?}",
        deleted.body
    );
    // A precondition on a resource that is gone: it is missing, not changed.
    patch_if(app, caller, uri, &first, &current)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    delete_if(app, caller, uri, &current)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn tenants_carry_etags_and_honour_if_match(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let ops = app.operator();
    let created = app
        .post(&ops, "/v1/tenants", json!({ "name": "acme" }))
        .await;
    let uri = format!("/v1/tenants/{}", created.body["id"].as_str().unwrap());
    check_versioning(
        &app,
        &ops,
        &created,
        &uri,
        json!({ "name": "acme corp" }),
        json!({ "status": "suspended" }),
    )
    .await;
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn registries_carry_etags_and_honour_if_match(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let admin = app.member(Role::Admin, &tenant);
    let created = app
        .post(&admin, "/v1/registries", json!({ "name": "sensors" }))
        .await;
    let uri = format!("/v1/registries/{}", created.body["id"].as_str().unwrap());
    check_versioning(
        &app,
        &admin,
        &created,
        &uri,
        json!({ "description": "greenhouse 1" }),
        json!({ "labels": { "site": "north" } }),
    )
    .await;
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn devices_carry_etags_and_honour_if_match(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let registry = app.create_registry(&editor, "sensors").await;
    let created = app
        .post(
            &editor,
            &format!(
                "/v1/registries/{}/devices",
                registry["id"].as_str().unwrap()
            ),
            json!({ "name": "thermometer-1" }),
        )
        .await;
    let uri = format!("/v1/devices/{}", created.body["id"].as_str().unwrap());
    check_versioning(
        &app,
        &editor,
        &created,
        &uri,
        json!({ "status": "disabled" }),
        json!({ "name": "thermometer-2", "status": "enabled" }),
    )
    .await;
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn brokers_carry_etags_and_honour_if_match(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let admin = app.member(Role::Admin, &tenant);
    let created = app
        .post(&admin, "/v1/brokers", json!({ "name": "lobby" }))
        .await;
    let uri = format!("/v1/brokers/{}", created.body["id"].as_str().unwrap());
    check_versioning(
        &app,
        &admin,
        &created,
        &uri,
        json!({ "name": "hall" }),
        json!({ "description": "the front hall" }),
    )
    .await;
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn rules_carry_etags_and_honour_if_match(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let admin = app.member(Role::Admin, &tenant);
    let body = json!({
        "name": "forward",
        "topic_filter": "$devices/+/events/#",
        "webhook": { "url": "http://127.0.0.1:9/hook" },
    });
    let created = app.post(&admin, "/v1/rules", body).await;
    let uri = format!("/v1/rules/{}", created.body["id"].as_str().unwrap());
    check_versioning(
        &app,
        &admin,
        &created,
        &uri,
        json!({ "enabled": false }),
        json!({ "enabled": true }),
    )
    .await;
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn quotas_carry_the_tenants_etag_and_honour_if_match(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let ops = app.operator();
    let tenant = app.create_tenant("acme").await;
    let uri = format!("/v1/tenants/{tenant}/quotas");
    let read = app.get(&ops, &uri).await;
    assert_eq!(read.status, StatusCode::OK, "{:#?}", read.body);
    let first = etag(&read);
    // The quotas are part of the tenant: they share its version.
    assert_eq!(
        first,
        etag(&app.get(&ops, &format!("/v1/tenants/{tenant}")).await)
    );

    let unchanged = patch_if(&app, &ops, &uri, &json!({}), &first).await;
    assert_eq!(unchanged.status, StatusCode::OK, "{:#?}", unchanged.body);
    assert_eq!(etag(&unchanged), first, "an empty change keeps the version");

    let changed = patch_if(&app, &ops, &uri, &json!({ "max_devices": 5 }), &first).await;
    assert_eq!(changed.status, StatusCode::OK, "{:#?}", changed.body);
    assert_eq!(changed.body["max_devices"], 5);
    let second = etag(&changed);
    assert_ne!(second, first);
    assert_eq!(etag(&app.get(&ops, &uri).await), second);
    let again = patch_if(&app, &ops, &uri, &json!({ "max_devices": 5 }), &second).await;
    assert_eq!(etag(&again), second, "the same limit again changes nothing");

    // A change based on the old version is refused and changes nothing.
    patch_if(&app, &ops, &uri, &json!({ "max_rules": 3 }), &first)
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);
    let after = app.get(&ops, &uri).await;
    assert_eq!(etag(&after), second);
    assert_eq!(after.body["overridden"], json!(["max_devices"]));
    patch_if(&app, &ops, &uri, &json!({ "max_rules": 3 }), "not-a-tag")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    let listed = patch_if(
        &app,
        &ops,
        &uri,
        &json!({ "max_rules": 3 }),
        &format!("{first}, {second}"),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{:#?}", listed.body);
    assert_ne!(etag(&listed), second);

    // Members read their own tenant's quotas with the same tag.
    let viewer = app.member(Role::Viewer, &tenant);
    assert_eq!(etag(&app.get(&viewer, &uri).await), etag(&listed));
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn of_two_changes_based_on_one_version_exactly_one_wins(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let admin = app.member(Role::Admin, &tenant);
    let registry = app.create_registry(&admin, "sensors").await;
    let uri = format!("/v1/registries/{}", registry["id"].as_str().unwrap());
    for round in 0..5 {
        let tag = etag(&app.get(&admin, &uri).await);
        let first = json!({ "description": format!("a{round}") });
        let second = json!({ "description": format!("b{round}") });
        let (a, b) = tokio::join!(
            patch_if(&app, &admin, &uri, &first, &tag),
            patch_if(&app, &admin, &uri, &second, &tag),
        );
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
            "{:#?} {:#?}",
            a.body,
            b.body
        );
        let winner = if a.status == StatusCode::OK { &a } else { &b };
        let read = app.get(&admin, &uri).await;
        assert_eq!(read.body["description"], winner.body["description"]);
    }
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn another_tenants_resource_is_missing_whatever_its_etag(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let acme = app.create_tenant("acme").await;
    let beta = app.create_tenant("beta").await;
    let acme_admin = app.member(Role::Admin, &acme);
    let beta_admin = app.member(Role::Admin, &beta);
    let registry = app.create_registry(&acme_admin, "sensors").await;
    let uri = format!("/v1/registries/{}", registry["id"].as_str().unwrap());
    let tag = etag(&app.get(&acme_admin, &uri).await);
    patch_if(
        &app,
        &beta_admin,
        &uri,
        &json!({ "description": "x" }),
        &tag,
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND);
    delete_if(&app, &beta_admin, &uri, &tag)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(etag(&app.get(&acme_admin, &uri).await), tag);
}
