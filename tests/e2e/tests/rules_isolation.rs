//! Rules delivery under trouble, against the real binary (SPEC §5): an endpoint that is down
//! for a while, an endpoint that hangs next to a healthy one, and two rules processes
//! sharing one queue.

use axum::routing::post;
use axum::Router;
use iotcore_e2e::mqtt::V311;
use iotcore_e2e::webhook::Webhook;
use iotcore_e2e::{binary, free_port, Device, TestApp};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(60);

async fn publish_readings(mqtt: &mut V311, device: &Device, count: u64) {
    let topic = format!("$devices/{}/events/readings", device.id);
    for seq in 0..count {
        let payload = json!({ "seq": seq }).to_string().into_bytes();
        mqtt.client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
        mqtt.puback().await;
    }
}

/// Reads deliveries until every seq below `count` arrived; returns how often each did.
async fn collect(webhook: &mut Webhook, count: u64) -> BTreeMap<u64, usize> {
    let mut received: BTreeMap<u64, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while (received.len() as u64) < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(delivery) = webhook.next(left).await else {
            panic!("only {} of {count} delivered: {received:?}", received.len());
        };
        if delivery.status == 200 {
            if let Some(seq) = delivery.json()["payload"]["seq"].as_u64() {
                *received.entry(seq).or_default() += 1;
            }
        }
    }
    received
}

#[tokio::test]
async fn everything_is_delivered_once_a_down_webhook_comes_back() {
    // The circuit breaker opens during the outage; a short open period keeps the test quick.
    let app = TestApp::spawn_with(&[("IOTCORE_RULES_BREAKER_OPEN_MS", "500")]).await;
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    // Nothing listens on this port yet: connections are refused.
    let port = free_port();
    app.create_rule(
        &app.token,
        "later",
        "$devices/+/events/#",
        &format!("http://127.0.0.1:{port}/hook"),
    )
    .await;
    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    publish_readings(&mut mqtt, &device, 20).await;

    // Wait until delivery has failed at least once, then bring the endpoint up.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, rules) = app.call("GET", "/v1/rules", &app.token, None).await;
        let id = rules["items"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (_, stats) = app
            .call("GET", &format!("/v1/rules/{id}/stats"), &app.token, None)
            .await;
        if stats["retried"].as_i64().unwrap_or(0) > 0 {
            assert!(stats["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("connection failed"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never retried: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let app_router = Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if let Some(seq) = envelope["payload"]["seq"].as_u64() {
                    let _ = tx.send(seq);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the endpoint comes up on its port");
    tokio::spawn(async move { axum::serve(listener, app_router).await });

    let mut received: BTreeMap<u64, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while received.len() < 20 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(seq)) => *received.entry(seq).or_default() += 1,
            _ => panic!("only {} of 20 delivered after the outage", received.len()),
        }
    }
    assert_eq!(
        received.keys().copied().collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_hold_up_another_rule() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    // Accepts connections and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hanging_addr = hanging.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    app.ok(
        "POST",
        "/v1/rules",
        json!({ "name": "hangs", "topic_filter": "$devices/+/events/#",
                "webhook": { "url": format!("http://{hanging_addr}/hook"),
                             "timeout_ms": 60000, "max_in_flight": 2 } }),
    )
    .await;
    let mut healthy = Webhook::start().await;
    app.create_rule(&app.token, "healthy", "$devices/+/events/#", &healthy.url)
        .await;

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    publish_readings(&mut mqtt, &device, 50).await;
    // Every message reaches the healthy endpoint while the other one holds its requests
    // for a minute: that rule's backlog waits in the queue, not in front of this rule.
    let received = collect(&mut healthy, 50).await;
    assert_eq!(received.len(), 50);
    app.stop().await;
}

#[tokio::test]
async fn two_rules_processes_share_one_queue_and_deliver_each_message_once() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    let mut webhook = Webhook::start().await;
    app.create_rule(&app.token, "all", "$devices/+/events/#", &webhook.url)
        .await;

    let log = std::env::temp_dir().join(format!("iotcore-e2e-rules-{}.log", free_port()));
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut second = Command::new(binary())
        .args(["serve", "--only", "rules"])
        .env("IOTCORE_PROFILE", "dev")
        .env("IOTCORE_DATABASE_URL", &app.database_url)
        .env("IOTCORE_MQTT_TCP_LISTEN", "")
        .env("IOTCORE_TELEMETRY_LISTEN", "")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("a second rules process starts");

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    publish_readings(&mut mqtt, &device, 200).await;
    let received = collect(&mut webhook, 200).await;
    let duplicates: Vec<_> = received.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "delivered more than once: {duplicates:?}"
    );
    assert!(
        webhook.nothing_within(Duration::from_millis(1000)).await,
        "nothing more arrives"
    );
    assert!(
        second.try_wait().ok().flatten().is_none(),
        "the second rules process kept running; log in {}",
        log.display()
    );
    let _ = second.kill().await;
    app.stop().await;
}

#[tokio::test]
async fn a_failing_endpoint_trips_its_circuit_breaker() {
    let app = TestApp::spawn_with(&[
        ("IOTCORE_RULES_BREAKER_FAILURES", "3"),
        ("IOTCORE_RULES_BREAKER_OPEN_MS", "600000"),
    ])
    .await;
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    let mut failing = Webhook::start().await;
    failing.answer_with(&[503; 100]);
    app.ok(
        "POST",
        "/v1/rules",
        json!({ "name": "failing", "topic_filter": "$devices/+/events/#",
                "webhook": { "url": failing.url, "max_in_flight": 1 } }),
    )
    .await;
    let mut healthy = Webhook::start().await;
    app.create_rule(&app.token, "healthy", "$devices/+/events/#", &healthy.url)
        .await;

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    publish_readings(&mut mqtt, &device, 10).await;
    assert_eq!(collect(&mut healthy, 10).await.len(), 10);

    // One at a time (max_in_flight 1): three failures open the breaker, and then the
    // endpoint is left alone although retries come due every second at most.
    for _ in 0..3 {
        let attempt = failing.next(PATIENCE).await.expect("an attempt");
        assert_eq!(attempt.status, 503);
    }
    assert!(
        failing.nothing_within(Duration::from_millis(3000)).await,
        "no attempts while the breaker is open"
    );
    app.stop().await;
}
