//! Rules against the real binary (SPEC §5): conditions, signatures, dead letters and their
//! replay, the SSRF guard of the production profile, and no loss of acknowledged
//! publishes across a kill -9.

use iotcore_e2e::mqtt::{connect_v311, WAIT};
use iotcore_e2e::webhook::Webhook;
use iotcore_e2e::{binary, free_port, TestApp};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long a test waits for something that should happen; it ends as soon as it does.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn condition_filters_messages_and_the_receiver_verifies_the_signature() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "thermo").await;
    let device = app.create_device(&app.token, &registry, "t-1").await;
    let secret = "a-shared-signing-secret";
    app.ok(
        "POST",
        "/v1/rules",
        json!({
            "name": "hot", "topic_filter": "$devices/+/events/#",
            "condition": "payload.celsius > 30 and startswith(topic, \"$devices/\")",
            "webhook": { "url": webhook.url, "secret": secret },
        }),
    )
    .await;

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    let topic = format!("$devices/{}/events/temperature", device.id);
    for celsius in [20, 35, 25, 31] {
        let payload = json!({ "celsius": celsius }).to_string();
        mqtt.client
            .publish(
                &topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.into_bytes(),
            )
            .await
            .expect("publish");
        mqtt.puback().await;
    }

    let mut seen = Vec::new();
    for _ in 0..2 {
        let received = webhook.next(WAIT).await.expect("a hot reading");
        assert!(received.signature_is_valid(secret), "{received:?}");
        assert!(!received.signature_is_valid("another-secret"));
        seen.push(received.json()["payload"]["celsius"].as_i64().unwrap_or(0));
    }
    seen.sort();
    assert_eq!(seen, [31, 35]);
    assert!(
        webhook.nothing_within(Duration::from_millis(1500)).await,
        "cool readings do not match the condition"
    );
    app.stop().await;
}

#[tokio::test]
async fn rejected_message_is_dead_lettered_then_replayed_and_delivered() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    webhook.answer_with(&[404]);
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    let rule_id = app
        .create_rule(&app.token, "readings", "$devices/+/events/#", &webhook.url)
        .await;

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    let topic = format!("$devices/{}/events/readings", device.id);
    mqtt.client
        .publish(
            &topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            b"{\"kwh\":1}".to_vec(),
        )
        .await
        .expect("publish");
    mqtt.puback().await;

    let refused = webhook.next(WAIT).await.expect("the first attempt");
    assert_eq!(refused.status, 404);
    let id = refused
        .header("x-iotcore-message-id")
        .unwrap_or_default()
        .to_owned();
    let stats = app
        .wait_for_rule_stats(&rule_id, |s| s["dead_letters"] == 1)
        .await;
    assert_eq!(stats["dead_lettered"], 1);
    assert_eq!(stats["last_error"], "HTTP 404 Not Found");
    assert!(
        webhook.nothing_within(Duration::from_millis(1000)).await,
        "a 4xx is not retried"
    );

    let letters = app
        .ok(
            "GET",
            &format!("/v1/rules/{rule_id}/dead-letters"),
            Value::Null,
        )
        .await;
    assert_eq!(letters["items"][0]["id"], id.as_str());
    let replayed = app
        .ok(
            "POST",
            &format!("/v1/rules/{rule_id}/dead-letters/replay"),
            json!({ "ids": [id] }),
        )
        .await;
    assert_eq!(replayed["replayed"], 1);

    let delivered = webhook.next(WAIT).await.expect("the replayed message");
    assert_eq!(delivered.status, 200);
    assert_eq!(delivered.header("x-iotcore-message-id"), Some(id.as_str()));
    let stats = app
        .wait_for_rule_stats(&rule_id, |s| s["delivered"] == 1)
        .await;
    assert_eq!(stats["dead_letters"], 0);
    assert_eq!(stats["queue_depth"], 0);
    app.stop().await;
}

#[tokio::test]
async fn private_destination_is_refused_in_the_production_profile() {
    let app = TestApp::spawn_with(&[
        ("IOTCORE_PROFILE", "production"),
        (
            "IOTCORE_API_AUTH_HS256_SECRET",
            "a-production-secret-of-at-least-32-bytes",
        ),
    ])
    .await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;

    // Refused at creation: the webhook listens on 127.0.0.1.
    let body = json!({ "name": "local", "topic_filter": "#", "webhook": { "url": webhook.url } });
    let (status, problem) = app.call("POST", "/v1/rules", &app.token, Some(body)).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "webhook.url");

    // Refused at delivery too, for a rule whose destination turned private afterwards
    // (as DNS rebinding would make it).
    let rule_id = app
        .create_rule(
            &app.token,
            "public",
            "$devices/+/events/#",
            "https://8.8.8.8/hook",
        )
        .await;
    let db = sqlx::PgPool::connect(&app.database_url)
        .await
        .expect("database");
    sqlx::query("UPDATE rules SET webhook_url = $1 WHERE id = $2")
        .bind(&webhook.url)
        .bind(&rule_id)
        .execute(&db)
        .await
        .expect("rule changed behind the API's back");
    db.close().await;

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    let topic = format!("$devices/{}/events/readings", device.id);
    mqtt.client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, b"{}".to_vec())
        .await
        .expect("publish");
    mqtt.puback().await;

    let stats = app
        .wait_for_rule_stats(&rule_id, |s| s["dead_letters"] == 1)
        .await;
    let error = stats["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("not a public address"), "{error}");
    assert!(webhook.nothing_within(Duration::from_millis(500)).await);
    app.stop().await;
}

/// Starts `iotcore serve` (every service, dev profile) on an existing database.
async fn serve_on(database_url: &str) -> (Child, String, std::net::SocketAddr) {
    let api_port = free_port();
    let mqtt_port = free_port();
    let log = std::env::temp_dir().join(format!("iotcore-e2e-restart-{api_port}.log"));
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(binary())
        .arg("serve")
        .env("IOTCORE_PROFILE", "dev")
        .env("IOTCORE_DATABASE_URL", database_url)
        .env("IOTCORE_API_LISTEN", format!("127.0.0.1:{api_port}"))
        .env("IOTCORE_MQTT_TCP_LISTEN", format!("127.0.0.1:{mqtt_port}"))
        .env("IOTCORE_MQTT_WS_LISTEN", "")
        .env("IOTCORE_RULES_RETRY_INITIAL_MS", "100")
        .env("IOTCORE_RULES_RETRY_MAX_MS", "1000")
        // Leases of the killed process must expire before its messages are sent again.
        .env("IOTCORE_RULES_LEASE_SECS", "2")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("iotcore starts");
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if matches!(http.get(format!("{api}/readyz")).send().await, Ok(r) if r.status().is_success())
        {
            return (
                child,
                api,
                format!("127.0.0.1:{mqtt_port}").parse().expect("addr"),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("iotcore did not restart; log in {}", log.display());
}

#[tokio::test]
async fn every_acknowledged_publish_survives_a_kill_9() {
    let app = TestApp::spawn_with(&[("IOTCORE_RULES_LEASE_SECS", "2")]).await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    app.create_rule(&app.token, "all", "$devices/+/events/#", &webhook.url)
        .await;

    // One device publishes QoS 1 at a steady rate and remembers what was acknowledged.
    let acked = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (addr, device, acked) = (app.mqtt, device.clone(), acked.clone());
        tokio::spawn(async move {
            let mut mqtt = connect_v311(addr, &device.id, &device.id, &device.password)
                .await
                .expect("device connects");
            let topic = format!("$devices/{}/events/readings", device.id);
            let mut acknowledged = BTreeSet::new();
            for seq in 0u64.. {
                let payload = json!({ "seq": seq }).to_string().into_bytes();
                if mqtt
                    .client
                    .publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                match mqtt.next(WAIT).await {
                    Some(Ok(rumqttc::Packet::PubAck(_))) => {
                        acknowledged.insert(seq);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acknowledged
        })
    };

    let database_url = app.database_url.clone();
    while acked.load(Ordering::SeqCst) < 60 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.kill().await; // SIGKILL, while the device is publishing.
    let acknowledged = publisher.await.expect("publisher");
    assert!(acknowledged.len() >= 60);

    let (restarted, _api, _mqtt) = serve_on(&database_url).await;
    let mut received: BTreeMap<u64, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !acknowledged.iter().all(|seq| received.contains_key(seq)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(delivery) = webhook.next(left).await else {
            let missing: Vec<_> = acknowledged
                .iter()
                .filter(|s| !received.contains_key(s))
                .collect();
            panic!("acknowledged publishes never delivered: {missing:?}");
        };
        if let Some(seq) = delivery.json()["payload"]["seq"].as_u64() {
            *received.entry(seq).or_default() += 1;
        }
    }
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    println!(
        "acknowledged {}, delivered {} distinct, {duplicates} duplicates",
        acknowledged.len(),
        received.len()
    );
    drop(restarted);
}
