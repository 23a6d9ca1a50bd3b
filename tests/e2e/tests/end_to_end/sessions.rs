//! Persistent sessions: subscriptions and queued messages kept while the client is away,
//! redelivery with DUP, Clean Start, session expiry and takeover (MQTT 4.1, 4.4).

use bytes::Bytes;
use iotcore_codec::{Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};

/// A registry client credential as a `Device` (id = registry id), for the raw client.
pub(crate) async fn registry_client(app: &TestApp) -> (Device, Device) {
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, password) = app.create_registry_password(&app.token, &registry).await;
    (
        device,
        Device {
            id: user,
            registry_id: registry,
            password,
        },
    )
}

pub(crate) async fn connect(
    app: &TestApp,
    version: ProtocolVersion,
    who: &Device,
    clean: bool,
    expiry: Option<u32>,
) -> (Raw, bool) {
    let mut connect = Raw::connect_packet(version, &who.id, who, 60);
    connect.clean_start = clean;
    connect.properties.session_expiry_interval = expiry;
    match Raw::handshake(app.mqtt, connect).await {
        (raw, Some(Packet::ConnAck(ack))) if ack.code == 0 => (raw, ack.session_present),
        (_, other) => panic!("CONNECT refused: {other:?}"),
    }
}

pub(crate) async fn disconnect(mut raw: Raw) {
    let disconnect = iotcore_codec::Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    raw.send(&Packet::Disconnect(disconnect)).await;
    assert!(raw.packet().await.is_none());
}

pub(crate) async fn next_publish(raw: &mut Raw) -> Publish {
    loop {
        match raw.packet().await {
            Some(Packet::Publish(publish)) => return publish,
            Some(_) => continue,
            None => panic!("connection closed while waiting for a PUBLISH"),
        }
    }
}

pub(crate) async fn publish_events(app: &TestApp, device: &Device, payloads: &[&str]) {
    let mut publisher = app.mqtt_v311(device).await.expect("device");
    let topic = format!("$devices/{}/events", device.id);
    for payload in payloads {
        publisher
            .client
            .publish(
                &topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
            .expect("publish");
        publisher.puback().await;
    }
}

/// MQTT-3.1.2-4/5 and MQTT-4.1.0-1: with Clean Session 0, subscriptions and QoS 1 messages
/// published while the client was away are kept, and CONNACK says the session is present.
#[tokio::test]
async fn a_persistent_session_keeps_subscriptions_and_queued_messages() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let (mut raw, present) = connect(&app, ProtocolVersion::V3_1_1, &backend, false, None).await;
    assert!(!present, "a new session");
    assert_eq!(
        raw.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    disconnect(raw).await;

    publish_events(&app, &device, &["one", "two", "three"]).await;

    let (mut raw, present) = connect(&app, ProtocolVersion::V3_1_1, &backend, false, None).await;
    assert!(present, "MQTT-3.2.2-2: session present");
    for expected in ["one", "two", "three"] {
        let publish = next_publish(&mut raw).await;
        assert_eq!(
            publish.payload.as_ref(),
            expected.as_bytes(),
            "in order (MQTT-4.6.0)"
        );
        assert_eq!(publish.qos, QoS::AtLeastOnce);
    }

    // MQTT-3.1.2-4: Clean Session 1 discards the session and its subscriptions.
    disconnect(raw).await;
    let (mut raw, present) = connect(&app, ProtocolVersion::V3_1_1, &backend, true, None).await;
    assert!(!present);
    publish_events(&app, &device, &["after clean start"]).await;
    raw.send(&Packet::PingReq).await;
    assert!(
        matches!(raw.packet().await, Some(Packet::PingResp)),
        "no message for a discarded subscription"
    );
    app.stop().await;
}

/// MQTT-4.4.0-1: a QoS 1 message not acknowledged before the connection was lost is sent
/// again when the session resumes, with the same packet id and DUP set.
#[tokio::test]
async fn unacknowledged_messages_are_redelivered_with_dup() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let (mut raw, _) = connect(&app, ProtocolVersion::V5, &backend, false, Some(300)).await;
    assert_eq!(
        raw.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    publish_events(&app, &device, &["unacked"]).await;
    let first = next_publish(&mut raw).await;
    assert!(!first.dup);
    drop(raw); // lost without a PUBACK

    let (mut raw, present) = connect(&app, ProtocolVersion::V5, &backend, false, Some(300)).await;
    assert!(present);
    let again = next_publish(&mut raw).await;
    assert!(again.dup, "DUP set on redelivery");
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(again.payload, first.payload);
    app.stop().await;
}

/// MQTT 5: Session Expiry Interval 0 (the default) ends the session with the connection,
/// whatever Clean Start says.
#[tokio::test]
async fn an_mqtt5_session_without_expiry_ends_with_its_connection() {
    let app = TestApp::spawn().await;
    let (_, backend) = registry_client(&app).await;
    let (mut raw, _) = connect(&app, ProtocolVersion::V5, &backend, false, None).await;
    assert_eq!(
        raw.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    disconnect(raw).await;
    let (_, present) = connect(&app, ProtocolVersion::V5, &backend, false, None).await;
    assert!(!present);
    app.stop().await;
}

/// MQTT-3.1.4-3 with Clean Start 0: the new connection takes the old one's session over,
/// subscriptions included.
#[tokio::test]
async fn takeover_with_clean_start_0_resumes_the_session() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let (mut old, _) = connect(&app, ProtocolVersion::V5, &backend, false, Some(300)).await;
    assert_eq!(
        old.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    let (mut new, present) = connect(&app, ProtocolVersion::V5, &backend, false, Some(300)).await;
    assert!(present, "the session moved to the new connection");
    match old.packet().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    publish_events(&app, &device, &["to the new connection"]).await;
    let publish = next_publish(&mut new).await;
    assert_eq!(
        publish.payload,
        Bytes::from_static(b"to the new connection")
    );
    app.stop().await;
}

/// Parked sessions are bounded per namespace (`mqtt.max_parked_sessions_per_namespace`):
/// beyond it, the session that would expire first ends early and the newer one stays.
#[tokio::test]
async fn parked_sessions_beyond_the_namespace_limit_end_oldest_first() {
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_MAX_PARKED_SESSIONS_PER_NAMESPACE", "1")]).await;
    let (_, backend) = registry_client(&app).await;
    let as_client = |suffix: &str| Device {
        id: format!("{}:{suffix}", backend.id),
        ..backend.clone()
    };
    let connect_as = |suffix: &str, clean: bool| {
        let mut connect =
            Raw::connect_packet(ProtocolVersion::V3_1_1, &as_client(suffix).id, &backend, 60);
        connect.clean_start = clean;
        Raw::handshake(app.mqtt, connect)
    };
    for suffix in ["first", "second"] {
        let (mut raw, _) = connect_as(suffix, false).await;
        assert_eq!(
            raw.subscribe_qos1("$devices/+/events/#").await,
            ReasonCode::GRANTED_QOS_1
        );
        disconnect(raw).await;
    }
    for (suffix, kept) in [("second", true), ("first", false)] {
        match connect_as(suffix, false).await {
            (_, Some(Packet::ConnAck(ack))) => assert_eq!(ack.session_present, kept, "{suffix}"),
            (_, other) => panic!("expected CONNACK, got {other:?}"),
        }
    }
    app.stop().await;
}
