//! Persistent sessions survive a restart of the broker process (stopped with SIGTERM, or
//! killed): subscriptions, queued messages, in-flight state and the session expiry are
//! kept in PostgreSQL, as the README's "What a restart or a crash keeps" says.

use crate::sessions::{connect, disconnect, next_publish, publish_events, registry_client};
use iotcore_codec::{
    Packet, Properties, ProtocolVersion, PubRec, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use iotcore_e2e::mqtt::{
    connect_v311_with, connect_v5_with, options_v311, options_v5, v5packets, V311, WAIT,
};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};
use sqlx::{Connection, PgConnection};
use std::time::Duration;

const EVENTS: &str = "$devices/+/events/#";

/// A 3.1.1 client with Clean Session 0.
async fn persistent_v311(app: &TestApp, who: &Device, suffix: &str) -> V311 {
    let mut options = options_v311(
        app.mqtt,
        &format!("{}:{suffix}", who.id),
        &who.id,
        &who.password,
    );
    options.set_clean_session(false);
    connect_v311_with(options).await.expect("CONNECT")
}

/// Disconnects normally and waits until the broker has closed the connection (and so
/// parked the session).
async fn leave_v311(mut client: V311) {
    client.client.disconnect().await.expect("DISCONNECT");
    while let Some(Ok(_)) = client.next(WAIT).await {}
}

/// MQTT-3.1.2-4/5, MQTT-3.2.2-2: a Clean Session 0 subscription made before a restart
/// still delivers after it, without subscribing again (rumqttc 3.1.1).
#[tokio::test]
async fn a_persistent_subscription_survives_a_restart_mqtt311() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let mut subscriber = persistent_v311(&app, &backend, "s").await;
    assert!(!subscriber.session_present);
    subscriber
        .subscribe(EVENTS, rumqttc::QoS::AtLeastOnce)
        .await;
    leave_v311(subscriber).await;

    let app = app.restart_gracefully().await;
    let mut subscriber = persistent_v311(&app, &backend, "s").await;
    assert!(subscriber.session_present, "MQTT-3.2.2-2: session present");
    publish_events(&app, &device, &["after the restart"]).await;
    let publish = subscriber.next_publish(WAIT).await.expect("a message");
    assert_eq!(publish.payload.as_ref(), b"after the restart");
    assert_eq!(publish.qos, rumqttc::QoS::AtLeastOnce);
    app.stop().await;
}

/// MQTT-3.1.2-23, MQTT-4.1.0-1: an MQTT 5 session (Session Expiry Interval > 0) keeps its
/// subscription and the QoS 1 messages queued while its client was away across a restart,
/// delivered in order (MQTT-4.6.0-6) with their properties (MQTT-3.3.2-17, -18, -20).
#[tokio::test]
async fn queued_messages_are_delivered_after_a_restart_mqtt5() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let client_id = format!("{}:v5", backend.id);
    let options = |app: &TestApp| {
        let mut options = options_v5(app.mqtt, &client_id, &backend.id, &backend.password);
        options.set_clean_start(false);
        let mut properties = v5packets::ConnectProperties::new();
        properties.session_expiry_interval = Some(600);
        options.set_connect_properties(properties);
        options
    };
    let subscriber = connect_v5_with(options(&app)).await.expect("CONNECT");
    assert!(!subscriber.connack.session_present);
    subscriber
        .client
        .subscribe(EVENTS, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut subscriber = subscriber;
    subscriber.suback().await;
    subscriber.client.disconnect().await.expect("DISCONNECT");
    while let Some(Ok(_)) = subscriber.next(WAIT).await {}

    let publisher = app.mqtt_v5(&device).await.expect("device");
    let mut publisher = publisher;
    let topic = format!("$devices/{}/events", device.id);
    for payload in ["one", "two", "three"] {
        let properties = v5packets::PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("n".into(), payload.into())],
            ..Default::default()
        };
        publisher
            .client
            .publish_with_properties(
                topic.clone(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload,
                properties,
            )
            .await
            .expect("publish");
        publisher.puback().await;
    }

    let app = app.restart_gracefully().await;
    let mut subscriber = connect_v5_with(options(&app)).await.expect("CONNECT");
    assert!(subscriber.connack.session_present, "MQTT-3.2.2-2");
    for expected in ["one", "two", "three"] {
        let publish = subscriber
            .next_publish(WAIT)
            .await
            .expect("a queued message");
        assert_eq!(publish.payload.as_ref(), expected.as_bytes(), "in order");
        let properties = publish.properties.expect("properties");
        assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            properties.user_properties,
            vec![("n".to_owned(), expected.to_owned())]
        );
    }
    app.stop().await;
}

/// `mosquitto_sub -c -i`, an independent client: its persistent session is resumed after a
/// restart, with the message queued while it was away (MQTT-3.1.2-5, MQTT-4.1.0-1).
#[tokio::test]
async fn mosquitto_sub_resumes_its_session_after_a_restart() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let client_id = format!("{}:mosquitto", backend.id);
    let mosquitto_sub = |app: &TestApp, extra: &[&str]| {
        let mut command = tokio::process::Command::new("mosquitto_sub");
        command
            .args(["-h", "127.0.0.1", "-p", &app.mqtt.port().to_string()])
            .args(["-c", "-i", &client_id, "-q", "1"])
            .args(["-u", &backend.id, "-P", &backend.password])
            .args(["-t", EVENTS, "-v"])
            .args(extra);
        command
    };
    // -E: exit once subscribed; -c leaves the session behind.
    let output = mosquitto_sub(&app, &["-E"])
        .output()
        .await
        .expect("mosquitto_sub is installed (the test command installs mosquitto-clients)");
    assert!(
        output.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    publish_events(&app, &device, &["while away"]).await;

    let app = app.restart_gracefully().await;
    let output = mosquitto_sub(&app, &["-C", "1", "-W", "10"])
        .output()
        .await
        .expect("mosquitto_sub");
    assert!(
        output.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("$devices/{}/events while away", device.id)
    );
    app.stop().await;
}

/// MQTT-4.4.0-1 across a restart: a QoS 1 message sent but not acknowledged is sent again
/// with DUP set and the same packet id, and a QoS 2 message whose PUBREC arrived gets its
/// PUBREL again (MQTT-4.3.3-5: not the PUBLISH).
#[tokio::test]
async fn in_flight_messages_are_redelivered_after_a_restart() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let (mut raw, _) = connect(&app, ProtocolVersion::V5, &backend, false, Some(300)).await;
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    };
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(EVENTS.to_owned(), options)],
        properties: Properties::default(),
    }))
    .await;
    assert!(matches!(raw.packet().await, Some(Packet::SubAck(_))));

    let publisher = app.mqtt_v311(&device).await.expect("device");
    let topic = format!("$devices/{}/events", device.id);
    publisher
        .client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, "qos1")
        .await
        .expect("publish");
    publisher
        .client
        .publish(&topic, rumqttc::QoS::ExactlyOnce, false, "qos2")
        .await
        .expect("publish");
    let first = next_publish(&mut raw).await;
    assert_eq!(
        (first.payload.as_ref(), first.qos),
        (&b"qos1"[..], QoS::AtLeastOnce)
    );
    let second = next_publish(&mut raw).await;
    assert_eq!(
        (second.payload.as_ref(), second.qos),
        (&b"qos2"[..], QoS::ExactlyOnce)
    );
    let second_id = second.packet_id.expect("packet id");
    raw.send(&Packet::PubRec(PubRec {
        packet_id: second_id,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }))
    .await;
    match raw.packet().await {
        Some(Packet::PubRel(rel)) => assert_eq!(rel.packet_id, second_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop(raw); // lost without PUBACK or PUBCOMP

    let app = app.restart_gracefully().await;
    let (mut raw, present) = connect(&app, ProtocolVersion::V5, &backend, false, Some(300)).await;
    assert!(present, "MQTT-3.2.2-2");
    match raw.packet().await {
        Some(Packet::Publish(again)) => {
            assert!(again.dup, "MQTT-3.3.1-1: DUP set on redelivery");
            assert_eq!(again.packet_id, first.packet_id);
            assert_eq!(again.payload, first.payload);
        }
        other => panic!("expected the QoS 1 PUBLISH again, got {other:?}"),
    }
    match raw.packet().await {
        Some(Packet::PubRel(rel)) => assert_eq!(rel.packet_id, second_id),
        other => panic!("expected the PUBREL again, got {other:?}"),
    }
    app.stop().await;
}

/// MQTT-3.1.2-23 across a restart: the Session Expiry Interval runs from the
/// disconnection, and a session that expired meanwhile is gone after the restart, while
/// one that has not is still there.
#[tokio::test]
async fn session_expiry_still_applies_across_a_restart() {
    let app = TestApp::spawn().await;
    let (_, backend) = registry_client(&app).await;
    let mut short_connect = Raw::connect_packet(
        ProtocolVersion::V5,
        &format!("{}:short", backend.id),
        &backend,
        60,
    );
    short_connect.clean_start = false;
    short_connect.properties.session_expiry_interval = Some(2);
    let (mut raw, _) = Raw::handshake(app.mqtt, short_connect.clone()).await;
    assert_eq!(raw.subscribe_qos1(EVENTS).await, ReasonCode::GRANTED_QOS_1);
    disconnect(raw).await;
    let (mut raw, _) = connect(&app, ProtocolVersion::V5, &backend, false, Some(600)).await;
    assert_eq!(raw.subscribe_qos1(EVENTS).await, ReasonCode::GRANTED_QOS_1);
    disconnect(raw).await;

    let app = app.restart_gracefully().await;
    // Well past the 2 s the short session had.
    tokio::time::sleep(Duration::from_secs(4)).await;
    match Raw::handshake(app.mqtt, short_connect).await {
        (_, Some(Packet::ConnAck(ack))) => {
            assert_eq!(ack.code, 0);
            assert!(!ack.session_present, "the expired session is gone");
        }
        (_, other) => panic!("expected CONNACK, got {other:?}"),
    }
    let (_, present) = connect(&app, ProtocolVersion::V5, &backend, false, Some(600)).await;
    assert!(present, "the unexpired session is kept");
    app.stop().await;
}

/// MQTT-3.1.2-4 after a restart: Clean Start 1 discards the stored session, in memory and
/// in the database (so a second restart does not bring it back).
#[tokio::test]
async fn clean_start_after_a_restart_discards_the_stored_session() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let (mut raw, _) = connect(&app, ProtocolVersion::V3_1_1, &backend, false, None).await;
    assert_eq!(raw.subscribe_qos1(EVENTS).await, ReasonCode::GRANTED_QOS_1);
    disconnect(raw).await;

    let app = app.restart_gracefully().await;
    let (mut raw, present) = connect(&app, ProtocolVersion::V3_1_1, &backend, true, None).await;
    assert!(!present, "MQTT-3.2.2-1: no session with Clean Session 1");
    publish_events(&app, &device, &["to nobody"]).await;
    raw.send(&Packet::PingReq).await;
    assert!(
        matches!(raw.packet().await, Some(Packet::PingResp)),
        "no message for the discarded subscription"
    );
    disconnect(raw).await;

    let app = app.restart_gracefully().await;
    let (_, present) = connect(&app, ProtocolVersion::V3_1_1, &backend, false, None).await;
    assert!(!present, "the discarded session did not come back");
    app.stop().await;
}

/// What the README says a crash (kill -9) keeps: session changes older than the writer's
/// batch window. Once the queued messages are in PostgreSQL, killing the broker loses
/// neither the subscription nor the messages (MQTT-4.1.0-1).
#[tokio::test]
async fn a_crash_keeps_the_session_changes_already_written() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let subscriber = persistent_v311(&app, &backend, "crash").await;
    subscriber
        .client
        .subscribe(EVENTS, rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut subscriber = subscriber;
    subscriber.suback().await;
    leave_v311(subscriber).await;
    publish_events(&app, &device, &["one", "two"]).await;

    // Wait for the writer (the batch window is 50 ms), reading the database itself.
    let mut db = PgConnection::connect(&app.database_url)
        .await
        .expect("database");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (queued,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM broker_session_messages WHERE client_id = $1 AND packet_id IS NULL",
        )
        .bind(format!("{}:crash", backend.id))
        .fetch_one(&mut db)
        .await
        .expect("count");
        if queued == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued messages were never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(db);

    let app = app.restart_with(&[]).await; // SIGKILL: nothing flushed on the way out
    let mut subscriber = persistent_v311(&app, &backend, "crash").await;
    assert!(subscriber.session_present);
    for expected in ["one", "two"] {
        let publish = subscriber
            .next_publish(WAIT)
            .await
            .expect("a queued message");
        assert_eq!(publish.payload.as_ref(), expected.as_bytes());
    }
    app.stop().await;
}

/// SPEC §3.1: beyond the per-session limit (`mqtt.outbound_queue`) the oldest queued QoS 1
/// messages are dropped, not the newest; the limit holds for what is read back after a
/// restart too.
#[tokio::test]
async fn an_absent_sessions_queue_keeps_the_newest_messages_across_a_restart() {
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_OUTBOUND_QUEUE", "2")]).await;
    let (device, backend) = registry_client(&app).await;
    let (mut raw, _) = connect(&app, ProtocolVersion::V3_1_1, &backend, false, None).await;
    assert_eq!(raw.subscribe_qos1(EVENTS).await, ReasonCode::GRANTED_QOS_1);
    disconnect(raw).await;
    publish_events(&app, &device, &["one", "two", "three"]).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.lines().any(|line| {
            line.starts_with("iotcore_mqtt_dropped_total{")
                && line.contains(&app.tenant_id)
                && line.contains("reason=\"queue_full\"")
                && line.ends_with(" 1")
        }),
        "the dropped message is counted:\n{metrics}"
    );

    let app = app.restart_gracefully().await;
    let (mut raw, present) = connect(&app, ProtocolVersion::V3_1_1, &backend, false, None).await;
    assert!(present);
    for expected in ["two", "three"] {
        let publish = next_publish(&mut raw).await;
        assert_eq!(publish.payload.as_ref(), expected.as_bytes());
    }
    raw.send(&Packet::PingReq).await;
    loop {
        match raw.packet().await {
            Some(Packet::PingResp) => break,
            Some(Packet::Publish(p)) => panic!("only the two newest are kept, got {p:?}"),
            Some(_) => continue,
            None => panic!("connection closed"),
        }
    }
    app.stop().await;
}

/// MQTT-4.3.3-10 across a restart: the packet id of an incoming QoS 2 message whose PUBREC
/// was sent is kept with the session, so the PUBREL after the restart completes it
/// (PUBCOMP 0x00, not 0x92 Packet Identifier not found) and a retransmitted PUBLISH is
/// not routed a second time.
#[tokio::test]
async fn incoming_qos2_state_survives_a_restart() {
    let app = TestApp::spawn().await;
    let (device, backend) = registry_client(&app).await;
    let (mut subscriber, _) = connect(&app, ProtocolVersion::V5, &backend, false, Some(300)).await;
    assert_eq!(
        subscriber.subscribe_qos1(EVENTS).await,
        ReasonCode::GRANTED_QOS_1
    );
    disconnect(subscriber).await;

    let publish = iotcore_codec::Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: format!("$devices/{}/events", device.id),
        packet_id: Some(7),
        payload: "once".into(),
        properties: Properties::default(),
    };
    let (mut publisher, _) = connect(&app, ProtocolVersion::V5, &device, false, Some(300)).await;
    publisher.send(&Packet::Publish(publish.clone())).await;
    match publisher.packet().await {
        Some(Packet::PubRec(rec)) => {
            assert_eq!((rec.packet_id, rec.reason), (7, ReasonCode::SUCCESS))
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    drop(publisher); // lost before its PUBREL

    let app = app.restart_gracefully().await;
    let (mut publisher, present) =
        connect(&app, ProtocolVersion::V5, &device, false, Some(300)).await;
    assert!(present);
    publisher
        .send(&Packet::Publish(iotcore_codec::Publish {
            dup: true,
            ..publish
        }))
        .await;
    assert!(matches!(publisher.packet().await, Some(Packet::PubRec(rec)) if rec.packet_id == 7));
    publisher
        .send(&Packet::PubRel(iotcore_codec::PubRel {
            packet_id: 7,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }))
        .await;
    match publisher.packet().await {
        Some(Packet::PubComp(comp)) => {
            assert_eq!((comp.packet_id, comp.reason), (7, ReasonCode::SUCCESS))
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }

    let (mut subscriber, present) =
        connect(&app, ProtocolVersion::V5, &backend, false, Some(300)).await;
    assert!(present);
    let once = next_publish(&mut subscriber).await;
    assert_eq!(once.payload.as_ref(), b"once");
    subscriber
        .send(&Packet::PubAck(iotcore_codec::PubAck {
            packet_id: once.packet_id.unwrap_or(0),
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }))
        .await;
    subscriber.send(&Packet::PingReq).await;
    loop {
        match subscriber.packet().await {
            Some(Packet::PingResp) => break,
            Some(Packet::Publish(p)) => panic!("MQTT-4.3.3-10: routed twice: {p:?}"),
            Some(_) => continue,
            None => panic!("connection closed"),
        }
    }
    app.stop().await;
}
