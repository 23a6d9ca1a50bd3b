//! Publishing from the API (SPEC §6.2): the api hands the message to the broker through
//! PostgreSQL, so this works whether they share a process or not.

use iotcore_e2e::mqtt::WAIT;
use iotcore_e2e::TestApp;
use serde_json::json;

#[tokio::test]
async fn a_command_from_the_api_reaches_the_device() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let other = app.create_device(&app.token, &registry, "other").await;
    let mut target = app.mqtt_v311(&device).await.expect("device");
    let filter = format!("$devices/{}/commands/#", device.id);
    target.subscribe(&filter, rumqttc::QoS::AtLeastOnce).await;
    let mut bystander = app.mqtt_v5(&other).await.expect("other device");
    let filter = format!("$devices/{}/commands/#", other.id);
    bystander
        .subscribe(&filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;

    let body = json!({ "subtopic": "reboot", "payload": "{\"delay_s\": 5}", "qos": 1 });
    let (status, answer) = app
        .call(
            "POST",
            &format!("/v1/devices/{}/commands", device.id),
            &app.token,
            Some(body),
        )
        .await;
    assert_eq!(status, 202, "{answer}");

    let command = target
        .next_publish(WAIT)
        .await
        .expect("the device receives the command");
    assert_eq!(
        command.topic,
        format!("$devices/{}/commands/reboot", device.id)
    );
    assert_eq!(command.payload.as_ref(), br#"{"delay_s": 5}"#);
    assert_eq!(command.qos, rumqttc::QoS::AtLeastOnce);
    assert!(bystander
        .next_publish(std::time::Duration::from_millis(500))
        .await
        .is_none());

    // Another tenant cannot address this device: 404, and nothing is published.
    let (_, other_token) = app.other_tenant("globex").await;
    let body = json!({ "payload": "forged", "qos": 0 });
    let (status, _) = app
        .call(
            "POST",
            &format!("/v1/devices/{}/commands", device.id),
            &other_token,
            Some(body),
        )
        .await;
    assert_eq!(status, 404);
    assert!(target
        .next_publish(std::time::Duration::from_millis(500))
        .await
        .is_none());
    app.stop().await;
}
