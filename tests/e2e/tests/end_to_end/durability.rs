//! What survives a restart of the broker.

use iotcore_codec::{Packet, Properties, ProtocolVersion, QoS, Will};
use iotcore_e2e::mqtt::{connect_v311, WAIT};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::TestApp;
use std::time::Duration;

/// Retained messages are kept in PostgreSQL: after a restart, a new subscriber receives
/// them (and not the ones deleted with an empty payload).
#[tokio::test]
async fn retained_messages_survive_a_restart() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;

    let mut publisher = app.mqtt_v311(&device).await.expect("device");
    let firmware = format!("$devices/{}/state/firmware", device.id);
    let scratch = format!("$devices/{}/state/scratch", device.id);
    for (topic, payload) in [
        (&firmware, "1.0"),
        (&scratch, "temporary"),
        (&firmware, "1.2.3"),
        (&scratch, ""),
    ] {
        publisher
            .client
            .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
        publisher.puback().await;
    }
    drop(publisher);

    let app = app.restart_gracefully().await;
    let mut subscriber = connect_v311(app.mqtt, &format!("{user}:after"), &user, &pass)
        .await
        .expect("subscriber");
    subscriber
        .subscribe("$devices/+/state/#", rumqttc::QoS::AtLeastOnce)
        .await;
    let retained = subscriber
        .next_publish(WAIT)
        .await
        .expect("the retained message after the restart");
    assert!(retained.retain);
    assert_eq!(retained.topic, firmware);
    assert_eq!(retained.payload.as_ref(), b"1.2.3", "the last value");
    assert!(
        subscriber
            .next_publish(Duration::from_millis(500))
            .await
            .is_none(),
        "the deleted one stays deleted"
    );
    app.stop().await;
}

/// MQTT-3.1.2-8 and MQTT-3.1.2-17 at a graceful stop: the wills of the clients connected
/// then are published as their connections close (a delayed MQTT 5 will at once, the
/// server being the one that goes, MQTT-3.1.3-9), and retained ones are stored before the
/// process ends, so a subscriber after the restart receives them.
#[tokio::test]
async fn retained_wills_published_at_a_graceful_stop_survive_it() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let mut expected = Vec::new();
    let mut connections = Vec::new();
    for (name, version, delay) in [
        ("v311", ProtocolVersion::V3_1_1, None),
        ("v5", ProtocolVersion::V5, Some(300)),
    ] {
        let device = app.create_device(&app.token, &registry, name).await;
        let topic = format!("$devices/{}/state/online", device.id);
        let mut connect = Raw::connect_packet(version, &device.id, &device, 60);
        // The will delay is bounded by the session's expiry (MQTT-3.1.3-9).
        connect.properties.session_expiry_interval = delay;
        let properties = Properties {
            will_delay_interval: delay,
            ..Properties::default()
        };
        connect.will = Some(Will {
            topic: topic.clone(),
            payload: "offline".into(),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties,
        });
        let (raw, connack) = Raw::handshake(app.mqtt, connect).await;
        assert!(
            matches!(connack, Some(Packet::ConnAck(ref c)) if c.code == 0),
            "{connack:?}"
        );
        connections.push(raw);
        expected.push(topic);
    }

    let app = app.restart_gracefully().await;
    drop(connections);
    let mut subscriber = connect_v311(app.mqtt, &format!("{user}:after"), &user, &pass)
        .await
        .expect("subscriber");
    subscriber
        .subscribe("$devices/+/state/#", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let will = subscriber
            .next_publish(WAIT)
            .await
            .expect("a retained will after the restart");
        assert!(will.retain);
        assert_eq!(will.payload.as_ref(), b"offline");
        got.push(will.topic);
    }
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    app.stop().await;
}
