//! Tokens of an identity provider (SPEC §6.1): RS256, ES256 and EdDSA signatures checked
//! against PEM public keys or a JWKS file, with `iss`, `aud` and `exp` enforced.

use crate::helpers::{Caller, TestApp};
use axum::http::StatusCode;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use iotcore_api::auth::{Claims, Role};
use iotcore_api::keys::{KeyAlgorithm, PublicKeyFile};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn private_key(algorithm: Algorithm) -> EncodingKey {
    let read = |name: &str| std::fs::read(key_file(name)).unwrap();
    match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_der(&read("rsa_private.der")),
        Algorithm::ES256 => EncodingKey::from_ec_der(&read("ec_private.der")),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&read("ed_private.der")),
        other => panic!("no test key for {other:?}"),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Claims {
    Claims {
        sub: "idp-user".into(),
        exp: now() + 600,
        iat: now(),
        iss: "iotcore".into(),
        aud: "iotcore".into(),
        role: Role::Operator,
        tenant_id: None,
    }
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Claims) -> Caller {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    Caller {
        token: Some(encode(&header, claims, &private_key(algorithm)).unwrap()),
        tenant_header: None,
    }
}

/// The DER inside the PEM file `name`.
fn pem_der(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(key_file(name)).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn tokens_signed_with_configured_pem_keys_are_accepted(pool: sqlx::PgPool) {
    let app = TestApp::with_config(pool, |config| {
        config.auth.hs256_secret = None;
        config.auth.public_keys = vec![
            PublicKeyFile {
                algorithm: KeyAlgorithm::RS256,
                pem_file: key_file("rsa_public.pem"),
                kid: None,
            },
            PublicKeyFile {
                algorithm: KeyAlgorithm::ES256,
                pem_file: key_file("ec_public.pem"),
                kid: None,
            },
            PublicKeyFile {
                algorithm: KeyAlgorithm::EdDSA,
                pem_file: key_file("ed_public.pem"),
                kid: None,
            },
        ];
    });
    for algorithm in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let response = app
            .get(&sign(algorithm, None, &claims()), "/v1/tenants")
            .await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{algorithm:?}: {:#?}",
            response.body
        );

        let refused = [
            Claims {
                iss: "someone-else".into(),
                ..claims()
            },
            Claims {
                aud: "another-service".into(),
                ..claims()
            },
            Claims {
                exp: now() - 3600,
                iat: now() - 7200,
                ..claims()
            },
        ];
        for claims in &refused {
            app.get(&sign(algorithm, None, claims), "/v1/tenants")
                .await
                .assert_problem(StatusCode::UNAUTHORIZED);
        }
    }
    // Without a secret configured, an HS256 token proves nothing.
    let hs256 = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"test-secret-for-the-api"),
    )
    .unwrap();
    let caller = Caller {
        token: Some(hs256),
        tenant_header: None,
    };
    app.get(&caller, "/v1/tenants")
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn a_key_verifies_only_its_own_algorithm(pool: sqlx::PgPool) {
    let app = TestApp::with_config(pool, |config| {
        config.auth.public_keys = vec![PublicKeyFile {
            algorithm: KeyAlgorithm::RS256,
            pem_file: key_file("rsa_public.pem"),
            kid: Some("rsa-1".into()),
        }];
    });
    app.get(&sign(Algorithm::ES256, None, &claims()), "/v1/tenants")
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    app.get(
        &sign(Algorithm::RS256, Some("rsa-2"), &claims()),
        "/v1/tenants",
    )
    .await
    .assert_problem(StatusCode::UNAUTHORIZED);
    let response = app
        .get(
            &sign(Algorithm::RS256, Some("rsa-1"), &claims()),
            "/v1/tenants",
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    // The HS256 secret keeps working beside the public keys.
    assert_eq!(
        app.get(&app.operator(), "/v1/tenants").await.status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn tokens_are_checked_against_a_jwks_file_by_kid(pool: sqlx::PgPool) {
    // The raw keys sit at the end of their SubjectPublicKeyInfo.
    let ed = pem_der("ed_public.pem");
    let ec = pem_der("ec_public.pem");
    let point = &ec[ec.len() - 65..];
    assert_eq!(point[0], 0x04, "an uncompressed P-256 point");
    let jwks = serde_json::json!({ "keys": [
        { "kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": URL_SAFE_NO_PAD.encode(&ed[ed.len() - 32..]) },
        { "kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256",
          "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]) },
        { "kty": "oct", "kid": "symmetric", "k": "c2VjcmV0" },
    ]});
    let path = std::env::temp_dir().join(format!(
        "iotcore-jwks-{}-{}.json",
        std::process::id(),
        now()
    ));
    std::fs::write(&path, jwks.to_string()).unwrap();
    let app = TestApp::with_config(pool, |config| {
        config.auth.hs256_secret = None;
        config.auth.jwks_file = Some(path.clone());
    });
    std::fs::remove_file(&path).unwrap();

    let tenant = app
        .create_tenant_with(&sign(Algorithm::EdDSA, Some("ed-1"), &claims()))
        .await;
    let viewer = Claims {
        role: Role::Viewer,
        tenant_id: Some(tenant.clone()),
        ..claims()
    };
    let response = app
        .get(
            &sign(Algorithm::ES256, Some("ec-1"), &viewer),
            "/v1/registries",
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:#?}", response.body);
    app.get(
        &sign(Algorithm::ES256, Some("ed-1"), &viewer),
        "/v1/registries",
    )
    .await
    .assert_problem(StatusCode::UNAUTHORIZED);
    app.get(
        &sign(Algorithm::EdDSA, Some("unknown"), &viewer),
        "/v1/registries",
    )
    .await
    .assert_problem(StatusCode::UNAUTHORIZED);
}

#[test]
fn unreadable_or_malformed_key_files_stop_the_service() {
    let store_less = |change: &dyn Fn(&mut iotcore_api::AuthConfig)| {
        let mut auth = iotcore_api::AuthConfig::default();
        change(&mut auth);
        iotcore_api::auth::check_keys(&auth)
    };
    assert!(store_less(&|auth| auth.public_keys = vec![PublicKeyFile {
        algorithm: KeyAlgorithm::RS256,
        pem_file: key_file("missing.pem"),
        kid: None,
    }])
    .is_err());
    // An EC key is not an RSA key.
    assert!(store_less(&|auth| auth.public_keys = vec![PublicKeyFile {
        algorithm: KeyAlgorithm::RS256,
        pem_file: key_file("ec_public.pem"),
        kid: None,
    }])
    .is_err());
    assert!(store_less(&|auth| auth.jwks_file = Some(key_file("ed_public.pem"))).is_err());
    assert!(store_less(&|auth| auth.public_keys = vec![PublicKeyFile {
        algorithm: KeyAlgorithm::EdDSA,
        pem_file: key_file("ed_public.pem"),
        kid: None,
    }])
    .is_ok());
}
