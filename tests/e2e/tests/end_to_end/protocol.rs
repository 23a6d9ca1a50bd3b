//! MQTT behaviour over real sockets: retained messages, QoS, keep alive, and malformed
//! input that closes one connection and no other. Raw-socket tests speak bytes encoded by
//! the codec (or written by hand where the point is that they are malformed).

use iotcore_codec::{Packet, ProtocolVersion, ReasonCode};
use iotcore_e2e::mqtt::{connect_v311, WAIT};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::TestApp;
use std::time::Duration;

#[tokio::test]
async fn retained_message_is_sent_on_subscribe_and_an_empty_one_deletes_it() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;

    let mut publisher = app.mqtt_v311(&device).await.expect("device");
    let state = format!("$devices/{}/state/firmware", device.id);
    publisher
        .client
        .publish(&state, rumqttc::QoS::AtLeastOnce, true, "1.2.3")
        .await
        .expect("publish");
    publisher.puback().await;

    // MQTT-3.3.1-6: a new subscription receives the retained message, RETAIN set.
    let mut first = connect_v311(app.mqtt, &format!("{user}:first"), &user, &pass)
        .await
        .expect("registry client");
    first
        .subscribe("$devices/+/state/#", rumqttc::QoS::AtLeastOnce)
        .await;
    let retained = first
        .next_publish(WAIT)
        .await
        .expect("the retained message");
    assert!(retained.retain);
    assert_eq!(retained.topic, state);
    assert_eq!(retained.payload.as_ref(), b"1.2.3");

    // MQTT-3.3.1-10/11: an empty retained payload deletes it; live subscribers get it
    // delivered normally (RETAIN clear, MQTT-3.3.1-9).
    publisher
        .client
        .publish(&state, rumqttc::QoS::AtLeastOnce, true, "")
        .await
        .expect("publish");
    let live = first.next_publish(WAIT).await.expect("the empty message");
    assert!(!live.retain);
    let mut second = connect_v311(app.mqtt, &format!("{user}:second"), &user, &pass)
        .await
        .expect("registry client");
    second
        .subscribe("$devices/+/state/#", rumqttc::QoS::AtLeastOnce)
        .await;
    assert!(
        second.next_publish(Duration::from_secs(1)).await.is_none(),
        "the retained message was deleted"
    );
    app.stop().await;
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_publish_and_subscription() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let mut qos0 = connect_v311(app.mqtt, &format!("{user}:q0"), &user, &pass)
        .await
        .expect("q0");
    let mut qos1 = connect_v311(app.mqtt, &format!("{user}:q1"), &user, &pass)
        .await
        .expect("q1");
    qos0.subscribe("$devices/+/events/#", rumqttc::QoS::AtMostOnce)
        .await;
    qos1.subscribe("$devices/+/events/+", rumqttc::QoS::AtLeastOnce)
        .await;

    let publisher = app.mqtt_v311(&device).await.expect("device");
    let topic = format!("$devices/{}/events/t", device.id);
    publisher
        .client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, "one")
        .await
        .expect("publish");
    publisher
        .client
        .publish(&topic, rumqttc::QoS::AtMostOnce, false, "zero")
        .await
        .expect("publish");

    let a = qos0.next_publish(WAIT).await.expect("message");
    let b = qos0.next_publish(WAIT).await.expect("message");
    assert_eq!(
        (a.qos, b.qos),
        (rumqttc::QoS::AtMostOnce, rumqttc::QoS::AtMostOnce)
    );
    let c = qos1.next_publish(WAIT).await.expect("message");
    let d = qos1.next_publish(WAIT).await.expect("message");
    // Order per topic is kept (MQTT 4.6).
    assert_eq!(
        (c.payload.as_ref(), c.qos),
        (&b"one"[..], rumqttc::QoS::AtLeastOnce)
    );
    assert_eq!(
        (d.payload.as_ref(), d.qos),
        (&b"zero"[..], rumqttc::QoS::AtMostOnce)
    );
    app.stop().await;
}

/// MQTT-3.1.2-24: no packet within 1.5 × keep alive closes the connection; MQTT 5 clients
/// are told with DISCONNECT 0x8D.
#[tokio::test]
async fn keep_alive_timeout_closes_the_connection() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let mut silent = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 1).await;
    match silent.packet().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::KEEP_ALIVE_TIMEOUT),
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    assert!(
        silent.packet().await.is_none(),
        "closed after the DISCONNECT"
    );

    // A client that pings in time stays connected.
    let mut pinging = Raw::connect(app.mqtt, ProtocolVersion::V3_1_1, &device, 1).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        pinging.send(&Packet::PingReq).await;
        assert!(matches!(pinging.packet().await, Some(Packet::PingResp)));
    }
    app.stop().await;
}

/// MQTT-3.3.2-2: a topic name with wildcards is malformed. The offending connection is
/// closed with a reason code; other connections carry on.
#[tokio::test]
async fn malformed_packets_close_only_their_own_connection() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let other = app.create_device(&app.token, &registry, "other").await;
    let mut bystander = Raw::connect(app.mqtt, ProtocolVersion::V3_1_1, &other, 60).await;

    let topic = format!("$devices/{}/events/#", device.id);
    let mut packet = vec![0x30];
    let body_len = 2 + topic.len() + 1;
    packet.push(body_len as u8);
    packet.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    packet.extend_from_slice(topic.as_bytes());
    packet.extend_from_slice(&[0x00]); // empty MQTT 5 properties
    let mut offender = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    offender.write(&packet).await;
    match offender.packet().await {
        Some(Packet::Disconnect(d)) => {
            assert!(d.reason.0 >= 0x80, "error reason, got {:?}", d.reason)
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(offender.packet().await.is_none());

    // Reserved flag bits of PINGREQ set (MQTT-2.2.2-2), in 3.1.1: closed without a word.
    let mut offender = Raw::connect(app.mqtt, ProtocolVersion::V3_1_1, &device, 60).await;
    offender.write(&[0xC1, 0x00]).await;
    assert!(offender.packet().await.is_none());

    // A remaining length of five bytes (MQTT-2.2.3) before any CONNECT.
    let mut garbage = Raw::open(app.mqtt, ProtocolVersion::V3_1_1).await;
    garbage.write(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
    assert!(garbage.packet().await.is_none());

    bystander.send(&Packet::PingReq).await;
    assert!(
        matches!(bystander.packet().await, Some(Packet::PingResp)),
        "the bystander is unaffected"
    );
    app.stop().await;
}

/// A connection that sends no CONNECT in time is closed (SPEC §3.1).
#[tokio::test]
async fn a_connection_without_connect_is_closed() {
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_CONNECT_TIMEOUT_SECS", "1")]).await;
    let mut idle = Raw::open(app.mqtt, ProtocolVersion::V3_1_1).await;
    assert!(idle.packet().await.is_none());
    // MQTT-3.1.0-1: the first packet must be CONNECT.
    let mut early = Raw::open(app.mqtt, ProtocolVersion::V3_1_1).await;
    early.send(&Packet::PingReq).await;
    assert!(early.packet().await.is_none());
    app.stop().await;
}

/// MQTT-3.1.4-3: a second connection with the same client id takes the session over; the
/// first is closed, told with DISCONNECT 0x8E in MQTT 5.
#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let mut first = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let mut second = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    match first.packet().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    assert!(first.packet().await.is_none());
    second.send(&Packet::PingReq).await;
    assert!(matches!(second.packet().await, Some(Packet::PingResp)));
    app.stop().await;
}

/// SPEC §3.1 slow consumers: a subscriber that never reads costs a bounded amount of memory
/// (its queue of `mqtt.outbound_queue` messages and the socket's buffers), however much is
/// published, and other subscribers carry on.
#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_grow_memory() {
    let app = TestApp::spawn_with(&[
        ("IOTCORE_MQTT_OUTBOUND_QUEUE", "16"),
        // The publisher goes as fast as it can; rate limits are not what this tests.
        ("IOTCORE_MQTT_MAX_PUBLISHES_PER_SECOND_PER_CLIENT", "0"),
    ])
    .await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, password) = app.create_registry_password(&app.token, &registry).await;
    let backend = iotcore_e2e::Device {
        id: user.clone(),
        registry_id: registry.clone(),
        password,
    };
    // Subscribes, then never reads its socket again.
    let mut stalled = Raw::connect_as(
        app.mqtt,
        ProtocolVersion::V3_1_1,
        &format!("{user}:stalled"),
        &backend,
        0,
    )
    .await;
    assert_eq!(
        stalled.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    let mut healthy = connect_v311(
        app.mqtt,
        &format!("{user}:healthy"),
        &backend.id,
        &backend.password,
    )
    .await
    .expect("healthy");
    healthy
        .subscribe("$devices/+/events/#", rumqttc::QoS::AtMostOnce)
        .await;

    let publisher = app.mqtt_v311(&device).await.expect("device");
    let topic = format!("$devices/{}/events/bulk", device.id);
    // 8 KiB: under rumqttc's default packet size limit.
    let payload = vec![0x5a_u8; 8 * 1024];
    let before = app.rss_kib().expect("RSS of iotcore");
    // 50 MiB in 6,400 messages, bounded in count.
    for _ in 0..6400 {
        publisher
            .client
            .publish(&topic, rumqttc::QoS::AtMostOnce, false, payload.clone())
            .await
            .expect("publish");
        // The healthy subscriber keeps up; each message it gets shows the broker is serving.
        healthy
            .next_publish(WAIT)
            .await
            .expect("the healthy subscriber keeps receiving");
    }
    let after = app.rss_kib().expect("RSS of iotcore");
    let growth_mib = after.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 20,
        "iotcore grew by {growth_mib} MiB while 50 MiB went to a stalled subscriber"
    );
    drop(stalled);
    app.stop().await;
}

/// SPEC §3.5: retained messages per namespace are bounded; beyond the limit a message for a
/// new topic is delivered but not retained.
#[tokio::test]
async fn retained_messages_beyond_the_limit_are_not_kept() {
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_MAX_RETAINED_PER_NAMESPACE", "1")]).await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let mut publisher = app.mqtt_v311(&device).await.expect("device");
    for (topic, payload) in [("first", "kept"), ("second", "over the limit")] {
        let topic = format!("$devices/{}/state/{topic}", device.id);
        publisher
            .client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
        publisher.puback().await;
    }
    let mut late = connect_v311(app.mqtt, &format!("{user}:late"), &user, &pass)
        .await
        .expect("subscriber");
    late.subscribe("$devices/+/state/#", rumqttc::QoS::AtLeastOnce)
        .await;
    let retained = late
        .next_publish(WAIT)
        .await
        .expect("the first retained message");
    assert_eq!(retained.payload.as_ref(), b"kept");
    assert!(
        late.next_publish(Duration::from_millis(500))
            .await
            .is_none(),
        "the second was retained"
    );
    app.stop().await;
}

#[tokio::test]
async fn packets_pipelined_behind_connect_are_answered() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let filter = format!("$devices/{}/commands/#", device.id);
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        // CONNECT and SUBSCRIBE in one write, so the broker reads both at once; nothing
        // follows them, so the SUBACK comes only if the buffered SUBSCRIBE is handled.
        let mut bytes = bytes::BytesMut::new();
        Packet::Connect(Raw::connect_packet(version, &device.id, &device, 60))
            .encode(version, &mut bytes)
            .expect("encode CONNECT");
        Packet::Subscribe(iotcore_codec::Subscribe {
            packet_id: 7,
            filters: vec![(
                filter.clone(),
                iotcore_codec::SubscriptionOptions {
                    qos: iotcore_codec::QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                },
            )],
            properties: iotcore_codec::Properties::default(),
        })
        .encode(version, &mut bytes)
        .expect("encode SUBSCRIBE");
        let mut raw = Raw::open(app.mqtt, version).await;
        raw.write(&bytes).await;
        match raw.packet().await {
            Some(Packet::ConnAck(connack)) => assert_eq!(connack.code, 0, "{version:?} CONNACK"),
            other => panic!("{version:?}: expected CONNACK, got {other:?}"),
        }
        match raw.packet().await {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.packet_id, 7, "{version:?}");
                assert_eq!(
                    ack.reasons,
                    vec![ReasonCode(1)],
                    "{version:?} granted QoS 1"
                );
            }
            other => panic!("{version:?}: expected SUBACK, got {other:?}"),
        }
    }
}

/// A CONNECT of `level` (4: 3.1.1, 5: 5.0) with protocol name `name`, connect flags `flags`,
/// client id `c` and then `rest` as the remainder of the payload, written by hand.
fn connect_bytes(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3c]);
    if level == 5 {
        body.push(0x00); // no CONNECT properties
    }
    body.extend_from_slice(b"\x00\x01c");
    body.extend_from_slice(rest);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// MQTT-3.1.4-1: a CONNECT that breaks its own format closes the connection, with no
/// CONNACK, in 3.1.1 and 5.0: the Will Flag set without a will topic and payload
/// (MQTT-3.1.2-9), the reserved flag set (MQTT-3.1.2-3), Will QoS or Will Retain without the
/// Will Flag (MQTT-3.1.2-11, -13), Will QoS 3 (MQTT-3.1.2-12), the Password Flag without a
/// password (MQTT-3.1.2-19). A protocol name other than `MQTT` is answered with return code
/// 0x01 before the close (MQTT-3.1.2-1). Nothing of it reaches another connection.
#[tokio::test]
async fn connects_that_break_their_format_are_closed_without_connack() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let mut bystander = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    for (level, version) in [(4, ProtocolVersion::V3_1_1), (5, ProtocolVersion::V5)] {
        // A will topic "t" and payload "w", preceded in 5.0 by empty will properties.
        let will: &[u8] = if level == 5 {
            b"\x00\x00\x01t\x00\x01w"
        } else {
            b"\x00\x01t\x00\x01w"
        };
        for (what, flags, rest) in [
            ("will flag without will topic and payload", 0x06, &b""[..]),
            ("reserved flag", 0x03, &b""[..]),
            ("will QoS without will flag", 0x0a, &b""[..]),
            ("will retain without will flag", 0x22, &b""[..]),
            ("will QoS 3", 0x1e, will),
            ("password flag without password", 0xc2, &b"\x00\x01u"[..]),
        ] {
            let mut raw = Raw::open(app.mqtt, version).await;
            raw.write(&connect_bytes(b"MQTT", level, flags, rest)).await;
            let answer = raw.packet().await;
            assert!(answer.is_none(), "level {level}, {what}: got {answer:?}");
        }
        let mut raw = Raw::open(app.mqtt, ProtocolVersion::V3_1_1).await;
        raw.write(&connect_bytes(b"MQTX", level, 0x02, b"")).await;
        match raw.packet().await {
            Some(Packet::ConnAck(connack)) => assert_eq!(connack.code, 1, "level {level}"),
            other => panic!("level {level}, protocol name MQTX: got {other:?}"),
        }
        assert!(raw.packet().await.is_none(), "closed after the CONNACK");
    }
    bystander.send(&Packet::PingReq).await;
    assert!(
        matches!(bystander.packet().await, Some(Packet::PingResp)),
        "the bystander is unaffected"
    );
    app.stop().await;
}

/// A PUBLISH that breaks its format after the CONNECT closes the connection, told with
/// DISCONNECT in 5.0 and closed without a word in 3.1.1: QoS 3 (MQTT-3.3.1-4; 0x81
/// Malformed Packet), DUP set on QoS 0 (MQTT-3.3.1-2; 0x82 Protocol Error).
#[tokio::test]
async fn malformed_publishes_are_answered_with_a_disconnect_and_closed() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let properties: &[u8] = if version == ProtocolVersion::V5 {
            b"\x00"
        } else {
            b""
        };
        // Topic "t", a packet id where the QoS has one, properties in 5.0, payload "x".
        let qos3 = [&[0x36, 0][..], b"\x00\x01t\x00\x01", properties, b"x"].concat();
        let dup_qos0 = [&[0x38, 0][..], b"\x00\x01t", properties, b"x"].concat();
        for (what, mut packet, reason) in [
            ("QoS 3", qos3, ReasonCode::MALFORMED_PACKET),
            ("DUP on QoS 0", dup_qos0, ReasonCode::PROTOCOL_ERROR),
        ] {
            packet[1] = (packet.len() - 2) as u8;
            let mut raw = Raw::connect(app.mqtt, version, &device, 60).await;
            raw.write(&packet).await;
            let answer = raw.packet().await;
            if version == ProtocolVersion::V5 {
                match answer {
                    Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason, "{what}"),
                    other => panic!("{what}: expected DISCONNECT {reason:?}, got {other:?}"),
                }
                assert!(raw.packet().await.is_none(), "{what}: closed");
            } else {
                assert!(answer.is_none(), "{what}: got {answer:?}");
            }
        }
    }
    app.stop().await;
}
