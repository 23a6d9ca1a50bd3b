//! At-least-once delivery: a failing webhook is retried with the same message id.

use iotcore_e2e::mqtt::WAIT;
use iotcore_e2e::webhook::Webhook;
use iotcore_e2e::TestApp;

#[tokio::test]
async fn webhook_failing_twice_then_succeeding_gets_one_message_id_three_times() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    webhook.answer_with(&[500, 503]);
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "meter-7").await;
    app.create_rule(&app.token, "readings", "$devices/+/events/#", &webhook.url)
        .await;

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    let payload = br#"{"kwh": 12.25, "note": "exactly as published"}"#;
    let topic = format!("$devices/{}/events/readings", device.id);
    mqtt.client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .expect("publish");
    mqtt.puback().await;

    let mut tries = Vec::new();
    for _ in 0..3 {
        tries.push(webhook.next(WAIT).await.expect("a delivery attempt"));
    }
    assert_eq!(
        tries.iter().map(|t| t.status).collect::<Vec<_>>(),
        vec![500, 503, 200]
    );
    let id = tries[0]
        .header("x-iotcore-message-id")
        .expect("message id")
        .to_owned();
    for attempt in &tries {
        assert_eq!(attempt.header("x-iotcore-message-id"), Some(id.as_str()));
        assert_eq!(attempt.header("idempotency-key"), Some(id.as_str()));
        assert_eq!(attempt.json()["id"].as_str(), Some(id.as_str()));
        assert_eq!(
            attempt.body, tries[0].body,
            "every attempt carries the same envelope"
        );
    }
    let envelope = tries[2].json();
    let expected: serde_json::Value = serde_json::from_slice(payload).expect("json");
    assert_eq!(envelope["payload"], expected);
    // Delivered: no fourth attempt.
    assert!(
        webhook
            .nothing_within(std::time::Duration::from_millis(1500))
            .await
    );
    app.stop().await;
}
