//! MQTT 5 wills beyond the basics (those are in mqtt_features.rs): the Will Delay
//! Interval, a return within it, the end of the session before it, the will's properties,
//! and DISCONNECT 0x04 (Disconnect with Will Message). Inside a virtual broker, where
//! client ids and topics are free.

use crate::sessions::next_publish;
use crate::virtual_brokers::create_broker;
use iotcore_codec::{
    Connect, Disconnect, Packet, Properties, ProtocolVersion, QoS, ReasonCode, Will,
};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};
use std::time::Duration;

async fn broker_credential(app: &TestApp) -> Device {
    let (id, password) = create_broker(app, "wills").await;
    Device {
        id,
        registry_id: String::new(),
        password,
    }
}

/// A watcher subscribed to `status/#` at QoS 1.
async fn watcher(app: &TestApp, vb: &Device) -> Raw {
    let mut raw = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "watcher", vb, 60).await;
    assert_eq!(
        raw.subscribe_qos1("status/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    raw
}

/// A CONNECT for `client_id` with a persistent session of `expiry` seconds and, when
/// `will_delay` is given, a will on `status/{client_id}` with that delay.
fn connect_packet(
    vb: &Device,
    client_id: &str,
    clean_start: bool,
    expiry: u32,
    will_delay: Option<u32>,
) -> Connect {
    let mut connect = Raw::connect_packet(ProtocolVersion::V5, client_id, vb, 60);
    connect.clean_start = clean_start;
    connect.properties.session_expiry_interval = Some(expiry);
    connect.will = will_delay.map(|delay| Will {
        topic: format!("status/{client_id}"),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(delay),
            content_type: Some("text/plain".into()),
            user_properties: vec![
                ("k".into(), "1".into()),
                ("j".into(), "2".into()),
                ("k".into(), "3".into()),
            ],
            ..Properties::default()
        },
    });
    connect
}

async fn connected(app: &TestApp, connect: Connect) -> (Raw, bool) {
    match Raw::handshake(app.mqtt, connect).await {
        (raw, Some(Packet::ConnAck(ack))) if ack.code == 0 => (raw, ack.session_present),
        (_, other) => panic!("CONNECT refused: {other:?}"),
    }
}

/// MQTT-3.1.3-9: a client that comes back before its Will Delay Interval has passed
/// cancels the will. The marker, published once the delay is over, arriving first shows
/// that the will never went out.
#[tokio::test]
async fn a_client_back_within_the_will_delay_cancels_its_will() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut watcher = watcher(&app, &vb).await;

    // Five seconds leave the reconnection (a password check) ample time on a busy machine.
    let (lost, _) = connected(&app, connect_packet(&vb, "sensor", true, 300, Some(5))).await;
    drop(lost);
    let (mut back, present) =
        connected(&app, connect_packet(&vb, "sensor", false, 300, None)).await;
    assert!(present, "the session outlived the connection");
    // This waits for the will delay to pass, not for the broker.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(
        back.publish_qos1("status/marker", b"after the delay").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut watcher).await;
    assert_eq!(got.topic, "status/marker", "the cancelled will was sent");
    app.stop().await;
}

/// MQTT-3.1.3-9 with a takeover: the first connection is still open when the client
/// connects again with Clean Start 0, so the first ends (DISCONNECT 0x8E) after the new one
/// has resumed the session; its delayed will is never sent. The marker, published once the
/// delay is over, arriving first shows it.
#[tokio::test]
async fn a_takeover_that_resumes_the_session_cancels_the_delayed_will() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut watcher = watcher(&app, &vb).await;
    let (mut first, _) = connected(&app, connect_packet(&vb, "sensor", true, 300, Some(2))).await;
    let (mut second, present) =
        connected(&app, connect_packet(&vb, "sensor", false, 300, None)).await;
    assert!(present, "the session moved to the new connection");
    match first.packet().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    // This waits for the will delay to pass, not for the broker.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        second
            .publish_qos1("status/marker", b"after the delay")
            .await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut watcher).await;
    assert_eq!(
        got.topic, "status/marker",
        "the will of the taken-over connection was sent"
    );
    app.stop().await;
}

/// MQTT-3.1.2-8: a takeover with Clean Start 1 ends the session, so the first connection's
/// will goes out at once, although its delay (300 s) is far from over.
#[tokio::test]
async fn a_takeover_with_clean_start_publishes_the_delayed_will_at_once() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut watcher = watcher(&app, &vb).await;
    let (_first, _) = connected(&app, connect_packet(&vb, "sensor", true, 300, Some(300))).await;
    let (_second, present) = connected(&app, connect_packet(&vb, "sensor", true, 300, None)).await;
    assert!(!present);
    let will = next_publish(&mut watcher).await;
    assert_eq!(will.topic, "status/sensor");
    app.stop().await;
}

/// MQTT-3.1.2-8: a delayed will goes out when its delay has passed, or when the session
/// ends first (here the session expires after 1 s while the will delay is 300 s);
/// MQTT-3.3.2-17/18 and MQTT-3.1.3-10: with its user properties, in order, and its
/// content type.
#[tokio::test]
async fn a_delayed_will_goes_out_after_the_delay_or_at_the_end_of_the_session() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut watcher = watcher(&app, &vb).await;
    for (client_id, expiry, delay) in [("delay-ends", 300, 1), ("session-ends", 1, 300)] {
        let (lost, _) = connected(
            &app,
            connect_packet(&vb, client_id, true, expiry, Some(delay)),
        )
        .await;
        drop(lost);
        let will = next_publish(&mut watcher).await;
        assert_eq!(will.topic, format!("status/{client_id}"));
        assert_eq!(will.payload.as_ref(), b"gone");
        assert_eq!(will.properties.content_type.as_deref(), Some("text/plain"));
        let properties: Vec<(&str, &str)> = will
            .properties
            .user_properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            properties,
            vec![("k", "1"), ("j", "2"), ("k", "3")],
            "{client_id}"
        );
    }
    app.stop().await;
}

/// MQTT 5 §3.14.2.1: DISCONNECT with reason 0x04 (Disconnect with Will Message) asks for
/// the will to be published, where 0x00 discards it (MQTT-3.14.4-3); a will without Will
/// Retain is not retained (MQTT-3.1.2-14).
#[tokio::test]
async fn disconnect_with_will_message_publishes_the_will() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut watcher = watcher(&app, &vb).await;
    for (client_id, reason) in [
        ("polite", ReasonCode::SUCCESS),
        ("asks", ReasonCode::DISCONNECT_WITH_WILL),
    ] {
        let (mut raw, _) = connected(&app, connect_packet(&vb, client_id, true, 0, Some(0))).await;
        raw.send(&Packet::Disconnect(Disconnect {
            reason,
            properties: Properties::default(),
        }))
        .await;
        assert!(raw.packet().await.is_none(), "closed after DISCONNECT");
    }
    let will = next_publish(&mut watcher).await;
    assert_eq!(will.topic, "status/asks", "only the will asked for");
    // MQTT-3.1.2-14: a will with Will Retain 0 is not retained; a new subscriber's first
    // message is the marker published after it.
    let mut late = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "late", &vb, 60).await;
    assert_eq!(
        late.subscribe_qos1("status/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    assert_eq!(
        late.publish_qos1("status/marker", b"m").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(next_publish(&mut late).await.topic, "status/marker");
    app.stop().await;
}
