//! `/v1/{devices|registries|brokers}/{id}/certificates` and
//! `/v1/registries/{id}/ca-certificates` (SPEC §6.2): uploads with errors that say what is
//! wrong, generated certificates, revocation, roles and tenancy.

use crate::helpers::TestApp;
use axum::http::StatusCode;
use chrono::{Duration, Utc};
use iotcore_api::auth::Role;
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::json;

fn self_signed(cn: &str, years: (i32, i32)) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn message(response: &crate::helpers::TestResponse) -> String {
    response.body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn device_certificates_are_uploaded_listed_and_revoked(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let viewer = app.member(Role::Viewer, &tenant);
    let outsider = app.member(Role::Admin, &app.create_tenant("other").await);
    let registry = app.create_registry(&editor, "r").await;
    let device = app.create_device(&editor, &registry, "d").await;
    let uri = format!(
        "/v1/devices/{}/certificates",
        device["id"].as_str().unwrap()
    );

    let (pem, key) = self_signed("sensor-1", (2020, 2090));
    let body = json!({ "certificate_pem": pem });
    app.post(&viewer, &uri, body.clone())
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    app.post(&outsider, &uri, body.clone())
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let created = app.post(&editor, &uri, body.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:#?}", created.body);
    let fingerprint = created.body["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 64);
    assert_eq!(created.body["subject"], "CN=sensor-1");
    assert_eq!(created.body["status"], "active");
    assert!(created.body.get("private_key_pem").is_none());
    assert_eq!(
        created.headers["location"],
        format!("{uri}/{fingerprint}").as_str()
    );
    // The same certificate again, anywhere: 409.
    let again = app.post(&editor, &uri, body.clone()).await;
    again.assert_problem(StatusCode::CONFLICT);
    assert!(again.body["detail"]
        .as_str()
        .unwrap()
        .contains("already registered"));
    let registry_uri = format!(
        "/v1/registries/{}/certificates",
        registry["id"].as_str().unwrap()
    );
    app.post(&editor, &registry_uri, body)
        .await
        .assert_problem(StatusCode::CONFLICT);

    let listed = app.get(&viewer, &uri).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["items"][0]["fingerprint"], fingerprint.as_str());
    app.get(&outsider, &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    // Errors that say what is wrong.
    for (bad, says) in [
        (json!({ "certificate_pem": "hello" }), "is not PEM"),
        (json!({ "certificate_pem": key }), "private key"),
        (
            json!({ "certificate_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" }),
            "is not an X.509 certificate",
        ),
        (
            json!({ "certificate_pem": self_signed("old", (2010, 2015)).0 }),
            "has expired",
        ),
        (json!({}), "either certificate_pem or"),
        (
            json!({ "certificate_pem": pem, "generate": true }),
            "either certificate_pem or",
        ),
    ] {
        let response = app.post(&editor, &uri, bad).await;
        response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.error_fields(), ["certificate_pem"]);
        assert!(message(&response).contains(says), "{:#?}", response.body);
    }
    // Generating needs a CA of the service on the registry.
    let response = app.post(&editor, &uri, json!({ "generate": true })).await;
    response.assert_problem(StatusCode::CONFLICT);
    assert!(response.body["detail"]
        .as_str()
        .unwrap()
        .contains("ca-certificates"));

    // Revocation: by fingerprint (any case, colons allowed), other tenants 404.
    let revoke_uri = format!("{uri}/{fingerprint}");
    app.delete(&outsider, &revoke_uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    app.delete(&viewer, &revoke_uri)
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    app.delete(&editor, &format!("{uri}/not-hex"))
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    app.delete(&editor, &format!("{uri}/{}", "0".repeat(64)))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let with_colons: Vec<String> = fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8(pair.to_vec()).unwrap())
        .collect();
    let revoked = app
        .delete(&editor, &format!("{uri}/{}", with_colons.join(":")))
        .await;
    assert_eq!(
        revoked.status,
        StatusCode::NO_CONTENT,
        "{:#?}",
        revoked.body
    );
    let listed = app.get(&viewer, &uri).await;
    assert_eq!(listed.body["items"][0]["status"], "revoked");
    assert!(listed.body["items"][0]["revoked_at"].is_string());
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn registry_cas_are_uploaded_or_generated_and_issue_certificates(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let viewer = app.member(Role::Viewer, &tenant);
    let outsider = app.member(Role::Admin, &app.create_tenant("other").await);
    let registry = app.create_registry(&editor, "r").await;
    let registry_id = registry["id"].as_str().unwrap();
    let device = app.create_device(&editor, &registry, "d").await;
    let device_id = device["id"].as_str().unwrap();
    let uri = format!("/v1/registries/{registry_id}/ca-certificates");

    let until = Utc::now() + Duration::days(30);
    let uploaded = iotcore_pki::new_ca("factory", until).unwrap();
    let body = json!({ "certificate_pem": uploaded.certificate_pem, "auto_register": true });
    app.post(&viewer, &uri, body.clone())
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    app.post(&outsider, &uri, body.clone())
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let created = app.post(&editor, &uri, body.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:#?}", created.body);
    assert_eq!(created.body["auto_register"], true);
    assert_eq!(created.body["service_managed"], false);
    assert_eq!(created.body["subject"], "CN=factory");
    app.post(&editor, &uri, body)
        .await
        .assert_problem(StatusCode::CONFLICT);
    // A leaf is not a CA.
    let (leaf, _) = self_signed("leaf", (2020, 2090));
    let response = app
        .post(&editor, &uri, json!({ "certificate_pem": leaf }))
        .await;
    response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message(&response).contains("not a CA certificate"));
    // And a CA is not a device certificate.
    let response = app
        .post(
            &editor,
            &format!("/v1/devices/{device_id}/certificates"),
            json!({ "certificate_pem": uploaded.certificate_pem }),
        )
        .await;
    response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message(&response).contains("is a CA certificate"));
    let response = app
        .post(
            &editor,
            &uri,
            json!({ "generate": true, "validity_days": 0, "common_name": "" }),
        )
        .await;
    response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(response.error_fields(), ["validity_days", "common_name"]);

    let generated = app
        .post(
            &editor,
            &uri,
            json!({ "generate": true, "common_name": "acme registry CA" }),
        )
        .await;
    assert_eq!(
        generated.status,
        StatusCode::CREATED,
        "{:#?}",
        generated.body
    );
    assert_eq!(generated.body["service_managed"], true);
    assert!(generated.body.get("private_key_pem").is_none());
    let listed = app.get(&viewer, &uri).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 2);
    assert!(!listed.body.to_string().contains("PRIVATE KEY"));
    app.get(&outsider, &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    // The generated CA issues device and registry certificates; the key is shown once.
    let issued = app
        .post(
            &editor,
            &format!("/v1/devices/{device_id}/certificates"),
            json!({ "generate": true, "validity_days": 30 }),
        )
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{:#?}", issued.body);
    assert_eq!(issued.body["subject"], format!("CN={device_id}").as_str());
    assert_eq!(issued.body["issuer"], "CN=acme registry CA");
    assert_eq!(issued.body["ca_certificate_id"], generated.body["id"]);
    let key = issued.body["private_key_pem"].as_str().unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let ca_pem = generated.body["certificate_pem"].as_str().unwrap();
    let ca = &iotcore_pki::parse_pem(ca_pem).unwrap()[0];
    let leaf =
        &iotcore_pki::parse_pem(issued.body["certificate_pem"].as_str().unwrap()).unwrap()[0];
    assert_eq!(
        iotcore_pki::verify_chain(&leaf.der, &[], &ca.der, Utc::now()),
        Ok(())
    );
    let registry_cert = app
        .post(
            &editor,
            &format!("/v1/registries/{registry_id}/certificates"),
            json!({ "generate": true }),
        )
        .await;
    assert_eq!(registry_cert.status, StatusCode::CREATED);
    assert_eq!(
        registry_cert.body["subject"],
        format!("CN={registry_id}").as_str()
    );

    // Deleting the CA deletes what it issued.
    let ca_uri = format!("{uri}/{}", generated.body["id"].as_str().unwrap());
    app.delete(&outsider, &ca_uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    app.delete(&viewer, &ca_uri)
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    app.delete(&editor, &format!("{uri}/nope"))
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    assert_eq!(
        app.delete(&editor, &ca_uri).await.status,
        StatusCode::NO_CONTENT
    );
    app.delete(&editor, &ca_uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let left = app
        .get(&viewer, &format!("/v1/devices/{device_id}/certificates"))
        .await;
    assert_eq!(left.body["items"].as_array().unwrap().len(), 0);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn virtual_brokers_get_self_signed_certificates(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let tenant = app.create_tenant("acme").await;
    let editor = app.member(Role::Editor, &tenant);
    let outsider = app.member(Role::Admin, &app.create_tenant("other").await);
    let broker = app
        .post(&editor, "/v1/brokers", json!({ "name": "lab" }))
        .await;
    let id = broker.body["id"].as_str().unwrap();
    let uri = format!("/v1/brokers/{id}/certificates");
    let issued = app.post(&editor, &uri, json!({ "generate": true })).await;
    assert_eq!(issued.status, StatusCode::CREATED, "{:#?}", issued.body);
    assert_eq!(issued.body["subject"], issued.body["issuer"]);
    assert!(issued.body["private_key_pem"].is_string());
    let fingerprint = issued.body["fingerprint"].as_str().unwrap();
    app.get(&outsider, &uri)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    // Another tenant's virtual broker is a 404 whatever the body holds, as a device's is.
    for body in [
        json!({ "generate": true }),
        json!({ "generate": true, "validity_days": 9000 }),
    ] {
        app.post(&outsider, &uri, body)
            .await
            .assert_problem(StatusCode::NOT_FOUND);
    }
    app.delete(&outsider, &format!("{uri}/{fingerprint}"))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&editor, &format!("{uri}/{fingerprint}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    app.post(
        &editor,
        &uri,
        json!({ "generate": true, "validity_days": 9000 }),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
}
