//! Device connection status and lifecycle events (SPEC §6.3).

use iotcore_e2e::mqtt::{connect_v311, WAIT};
use iotcore_e2e::TestApp;
use serde_json::Value;
use std::time::Duration;

/// Polls `GET /v1/devices/{id}` until its connection's `online` is `online` (the broker
/// writes status in batches), bounded in count.
async fn connection_when(app: &TestApp, device_id: &str, online: bool) -> Value {
    for _ in 0..100 {
        let (status, device) = app
            .call("GET", &format!("/v1/devices/{device_id}"), &app.token, None)
            .await;
        assert_eq!(status, 200, "{device}");
        if device["connection"]["online"] == Value::Bool(online) {
            return device["connection"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the device's connection never showed online = {online}");
}

#[tokio::test]
async fn connection_status_and_lifecycle_events_follow_the_device() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let mut watcher = connect_v311(app.mqtt, &user, &user, &pass)
        .await
        .expect("registry client");
    watcher
        .subscribe(
            format!("$registries/{registry}/lifecycle/+"),
            rumqttc::QoS::AtLeastOnce,
        )
        .await;

    let client = app.mqtt_v5(&device).await.expect("device");
    let event = watcher.next_publish(WAIT).await.expect("connected event");
    assert_eq!(
        event.topic,
        format!("$registries/{registry}/lifecycle/{}", device.id)
    );
    let body: Value = serde_json::from_slice(&event.payload).expect("JSON event");
    assert_eq!(body["event"], "connected");
    assert_eq!(body["device_id"], device.id.as_str());
    assert_eq!(body["protocol_version"], "5.0");
    let connection = connection_when(&app, &device.id, true).await;
    assert_eq!(connection["protocol_version"], "5.0");
    assert!(
        connection["client_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{connection}"
    );
    assert!(connection["connected_at"].is_string(), "{connection}");

    client.client.disconnect().await.expect("disconnect");
    let event = watcher
        .next_publish(WAIT)
        .await
        .expect("disconnected event");
    let body: Value = serde_json::from_slice(&event.payload).expect("JSON event");
    assert_eq!(body["event"], "disconnected");
    let connection = connection_when(&app, &device.id, false).await;
    assert!(connection["disconnected_at"].is_string(), "{connection}");
    assert!(connection["disconnect_reason"].is_string(), "{connection}");

    // A device may not forge lifecycle events: the topic is the broker's alone.
    let client = app.mqtt_v311(&device).await.expect("device");
    watcher.next_publish(WAIT).await.expect("connected again");
    let forged = format!("$registries/{registry}/lifecycle/{}", device.id);
    client
        .client
        .publish(&forged, rumqttc::QoS::AtMostOnce, false, "{}")
        .await
        .expect("publish");
    assert!(
        watcher
            .next_publish(Duration::from_millis(500))
            .await
            .is_none(),
        "a forged lifecycle event"
    );
    app.stop().await;
}

/// A session taken over does not mark its device offline: the new connection is up, and
/// stays up once the end of the old one has been written.
#[tokio::test]
async fn takeover_leaves_the_device_online() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let marker = app.create_device(&app.token, &registry, "marker").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let mut watcher = connect_v311(app.mqtt, &user, &user, &pass)
        .await
        .expect("registry client");
    watcher
        .subscribe(
            format!("$registries/{registry}/lifecycle/{}", device.id),
            rumqttc::QoS::AtLeastOnce,
        )
        .await;

    let _first = app.mqtt_v311(&device).await.expect("first");
    connection_when(&app, &device.id, true).await;
    let _second = app.mqtt_v311(&device).await.expect("second");
    // The old connection's end is recorded before its `disconnected` event is published.
    loop {
        let event = watcher.next_publish(WAIT).await.expect("lifecycle events");
        let body: Value = serde_json::from_slice(&event.payload).expect("JSON event");
        if body["event"] == "disconnected" {
            assert_eq!(body["reason"], "session taken over", "{body}");
            break;
        }
    }
    // Status changes are written in order: once a later one is visible, so is that end.
    let later = app.mqtt_v311(&marker).await.expect("marker");
    connection_when(&app, &marker.id, true).await;
    later.client.disconnect().await.expect("disconnect");
    connection_when(&app, &marker.id, false).await;

    let (_, got) = app
        .call(
            "GET",
            &format!("/v1/devices/{}", device.id),
            &app.token,
            None,
        )
        .await;
    assert_eq!(got["connection"]["online"], Value::Bool(true), "{got}");
    app.stop().await;
}
