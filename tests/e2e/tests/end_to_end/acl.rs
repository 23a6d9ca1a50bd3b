//! The built-in device and registry-client rights of SPEC §4.2, and the registry scope of
//! SPEC §3.4.

use iotcore_codec::{ProtocolVersion, ReasonCode};
use iotcore_e2e::mqtt::{connect_v5, WAIT};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::v5::mqttbytes::QoS;
use std::time::Duration;

#[tokio::test]
async fn device_cannot_publish_or_subscribe_outside_its_defaults() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let other = app.create_device(&app.token, &registry, "other").await;
    let mut mqtt = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;

    let allowed = [
        format!("$devices/{}/events", device.id),
        format!("$devices/{}/events/a/b", device.id),
        format!("$devices/{}/state", device.id),
        format!("$registries/{registry}/events/x"),
    ];
    for topic in &allowed {
        assert_eq!(
            mqtt.publish_qos1(topic, b"x").await,
            ReasonCode::SUCCESS,
            "{topic}"
        );
    }
    let denied = [
        format!("$devices/{}/events", other.id),
        format!("$devices/{}/commands", device.id),
        format!("$registries/{registry}/commands"),
        "free/form/topic".to_owned(),
        "$SYS/broker".to_owned(),
    ];
    for topic in &denied {
        let reason = mqtt.publish_qos1(topic, b"x").await;
        assert_eq!(reason, ReasonCode::NOT_AUTHORIZED, "{topic}");
    }

    let granted = [
        format!("$devices/{}/commands/#", device.id),
        format!("$registries/{registry}/commands/+"),
    ];
    for filter in &granted {
        assert_eq!(
            mqtt.subscribe_qos1(filter).await,
            ReasonCode::GRANTED_QOS_1,
            "{filter}"
        );
    }
    let refused = [
        format!("$devices/{}/commands/#", other.id),
        format!("$devices/{}/events", device.id),
        "$devices/+/commands/#".to_owned(),
        "#".to_owned(),
    ];
    for filter in &refused {
        assert_eq!(
            mqtt.subscribe_qos1(filter).await,
            ReasonCode::NOT_AUTHORIZED,
            "{filter}"
        );
    }

    // 3.1.1 has no reason codes: a refused subscription is 0x80.
    let mut old = app.mqtt_v311(&other).await.expect("connects");
    old.client
        .subscribe("#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    assert_eq!(
        old.suback().await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    app.stop().await;
}

#[tokio::test]
async fn registry_client_commands_reach_devices_of_its_registry_only() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "mine").await;
    let foreign_registry = app.create_registry(&app.token, "not-mine").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let foreign = app.create_device(&app.token, &foreign_registry, "f").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;

    let mut target = app.mqtt_v311(&device).await.expect("device");
    target
        .subscribe(
            format!("$devices/{}/commands/#", device.id),
            rumqttc::QoS::AtLeastOnce,
        )
        .await;
    let mut backend = connect_v5(app.mqtt, &user, &user, &pass)
        .await
        .expect("registry client");

    let command = format!("$devices/{}/commands/reboot", device.id);
    backend
        .client
        .publish(&command, QoS::AtLeastOnce, false, "now")
        .await
        .expect("publish");
    assert_eq!(backend.puback().await.reason, PubAckReason::Success);
    let received = target
        .next_publish(WAIT)
        .await
        .expect("the device receives its command");
    assert_eq!(received.topic, command);
    assert_eq!(received.payload.as_ref(), b"now");
    assert_eq!(received.qos, rumqttc::QoS::AtLeastOnce);

    // A device of another registry is out of the registry client's scope.
    let registry_client = Device {
        id: user.clone(),
        registry_id: registry.clone(),
        password: pass.clone(),
    };
    let raw_id = format!("{user}:raw");
    let mut raw_backend =
        Raw::connect_as(app.mqtt, ProtocolVersion::V5, &raw_id, &registry_client, 60).await;
    let foreign_command = format!("$devices/{}/commands/reboot", foreign.id);
    let reason = raw_backend.publish_qos1(&foreign_command, b"now").await;
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    assert!(target
        .next_publish(Duration::from_millis(300))
        .await
        .is_none());

    // And it sees events of its own registry's devices, not of others.
    backend
        .subscribe("$devices/+/events/#", QoS::AtMostOnce)
        .await;
    let foreign_client = app.mqtt_v311(&foreign).await.expect("foreign");
    let foreign_events = format!("$devices/{}/events", foreign.id);
    foreign_client
        .client
        .publish(&foreign_events, rumqttc::QoS::AtMostOnce, false, "theirs")
        .await
        .expect("publish");
    let own_events = format!("$devices/{}/events", device.id);
    target
        .client
        .publish(&own_events, rumqttc::QoS::AtMostOnce, false, "ours")
        .await
        .expect("publish");
    let got = backend
        .next_publish(WAIT)
        .await
        .expect("own registry's event");
    assert_eq!(got.payload.as_ref(), b"ours");
    assert!(backend
        .next_publish(Duration::from_millis(500))
        .await
        .is_none());
    app.stop().await;
}
