//! The README's quickstart, step by step: tenant, registry, device, password, rule; the
//! device publishes; the webhook receives the envelope of SPEC §5.

use base64::Engine;
use iotcore_e2e::mqtt::WAIT;
use iotcore_e2e::webhook::Webhook;
use iotcore_e2e::TestApp;
use serde_json::json;

#[tokio::test]
async fn device_message_reaches_the_webhook_as_published() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "sensors").await;
    let device = app
        .create_device(&app.token, &registry, "thermometer-1")
        .await;
    let rule = app
        .create_rule(
            &app.token,
            "temperature",
            "$devices/+/events/#",
            &webhook.url,
        )
        .await;

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    let topic = format!("$devices/{}/events/temperature", device.id);
    let payload = br#"{"celsius":21.5}"#;
    mqtt.client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .expect("publish");
    mqtt.puback().await;

    let request = webhook
        .next(WAIT)
        .await
        .expect("the webhook receives the message");
    assert_eq!(request.header("content-type"), Some("application/json"));
    let envelope = request.json();
    let id = envelope["id"].as_str().expect("envelope id");
    assert!(id.starts_with("msg_"), "{envelope}");
    assert_eq!(request.header("idempotency-key"), Some(id));
    assert_eq!(request.header("x-iotcore-message-id"), Some(id));
    assert_eq!(request.header("x-iotcore-rule-id"), Some(rule.as_str()));
    assert_eq!(envelope["rule_id"], json!(rule));
    assert_eq!(envelope["tenant_id"], json!(app.tenant_id));
    assert_eq!(envelope["registry_id"], json!(registry));
    assert_eq!(envelope["device_id"], json!(device.id));
    assert_eq!(envelope["topic"], json!(topic));
    assert_eq!(envelope["qos"], json!(1));
    assert_eq!(envelope["retain"], json!(false));
    assert_eq!(envelope["payload"], json!({ "celsius": 21.5 }));
    assert!(envelope.get("payload_base64").is_none(), "{envelope}");
    assert!(
        envelope["received_at"]
            .as_str()
            .is_some_and(|t| t.contains('T')),
        "{envelope}"
    );
    app.stop().await;
}

#[tokio::test]
async fn binary_payload_arrives_base64_encoded_over_mqtt5() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "cameras").await;
    let device = app.create_device(&app.token, &registry, "camera-1").await;
    app.create_rule(
        &app.token,
        "frames",
        "$devices/+/events/frame",
        &webhook.url,
    )
    .await;

    let mqtt = app.mqtt_v5(&device).await.expect("device connects");
    let payload = vec![0xff, 0x00, 0x01, b'{'];
    let topic = format!("$devices/{}/events/frame", device.id);
    mqtt.client
        .publish(
            &topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            payload.clone(),
        )
        .await
        .expect("publish");

    let envelope = webhook
        .next(WAIT)
        .await
        .expect("the webhook receives the message")
        .json();
    let encoded = envelope["payload_base64"].as_str().expect("payload_base64");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64"),
        payload
    );
    assert!(envelope.get("payload").is_none(), "{envelope}");
    app.stop().await;
}

/// The quickstart publishes with `mosquitto_pub`, an independent MQTT client.
#[tokio::test]
async fn mosquitto_pub_as_the_device_reaches_the_webhook() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "boards").await;
    let device = app
        .create_device(&app.token, &registry, "raspberry-pi")
        .await;
    app.create_rule(
        &app.token,
        "all-events",
        "$devices/+/events/#",
        &webhook.url,
    )
    .await;

    let topic = format!("$devices/{}/events", device.id);
    let status = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &app.mqtt.port().to_string(),
            "-V",
            "mqttv311",
            "-q",
            "1",
        ])
        .args([
            "-i",
            &device.id,
            "-u",
            &device.id,
            "-P",
            &device.password,
            "-t",
            &topic,
            "-m",
            r#"{"hello":"world"}"#,
        ])
        .status()
        .await
        .expect("mosquitto_pub is installed (the test command installs mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub exited with {status}");

    let envelope = webhook
        .next(WAIT)
        .await
        .expect("the webhook receives the message")
        .json();
    assert_eq!(envelope["payload"], json!({ "hello": "world" }));
    assert_eq!(envelope["device_id"], json!(device.id));
    app.stop().await;
}
