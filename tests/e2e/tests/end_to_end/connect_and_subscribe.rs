//! Statements of CONNECT, SUBSCRIBE, UNSUBSCRIBE, topic aliases, shared subscriptions and
//! the QoS flows that the other files leave out, each test naming the statement it checks
//! (MQTT 5.0 numbering unless it says 3.1.1). Raw clients, so that every code the broker
//! answers with is visible.

use crate::sessions::next_publish;
use crate::virtual_brokers::create_broker;
use bytes::Bytes;
use iotcore_codec::{Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, Unsubscribe};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};

async fn broker_credential(app: &TestApp) -> Device {
    let (id, password) = create_broker(app, "statements").await;
    Device {
        id,
        registry_id: String::new(),
        password,
    }
}

/// MQTT-3.1.2-2 (both versions): a CONNECT with a protocol level the broker does not speak
/// is answered with CONNACK return code 0x01 (unacceptable protocol version, in the 3.1.1
/// form a client of any version can read), then the connection is closed.
#[tokio::test]
async fn an_unknown_protocol_level_is_answered_with_0x01_and_closed() {
    let app = TestApp::spawn().await;
    let mut raw = Raw::open(app.mqtt, ProtocolVersion::V3_1_1).await;
    // CONNECT, protocol "MQTT" level 6, clean session, keep alive 60, client id "x".
    raw.write(&[
        0x10, 13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 6, 0x02, 0x00, 60, 0x00, 0x01, b'x',
    ])
    .await;
    match raw.packet().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, 0x01);
            assert!(!ack.session_present);
        }
        other => panic!("expected CONNACK 0x01, got {other:?}"),
    }
    assert!(raw.packet().await.is_none(), "closed after the refusal");
    app.stop().await;
}

/// MQTT-4.12.0-1: enhanced authentication is not supported; a CONNECT with an
/// Authentication Method gets CONNACK 0x8C (Bad authentication method), and
/// MQTT-3.2.2-7: a CONNACK code of 0x80 or more is followed by the close.
#[tokio::test]
async fn enhanced_authentication_is_refused_with_0x8c() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut connect = Raw::connect_packet(ProtocolVersion::V5, "scram", &vb, 60);
    connect.properties.authentication_method = Some("SCRAM-SHA-256".into());
    let (mut raw, answer) = Raw::handshake(app.mqtt, connect).await;
    match answer {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD.0);
            assert!(!ack.session_present, "MQTT-3.2.2-6");
        }
        other => panic!("expected CONNACK 0x8C, got {other:?}"),
    }
    assert!(raw.packet().await.is_none(), "closed after the refusal");
    app.stop().await;
}

/// MQTT-3.1.4-6 (3.1.1: MQTT-3.1.4-5): nothing a client sends behind a refused CONNECT is
/// processed. A PUBLISH and a SUBSCRIBE written in the same segment as a CONNECT with a
/// wrong password are dropped with it; the message the device publishes afterwards is the
/// first the watcher receives.
#[tokio::test]
async fn packets_behind_a_refused_connect_are_not_processed() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, password) = app.create_registry_password(&app.token, &registry).await;
    let backend = Device {
        id: user,
        registry_id: registry,
        password,
    };
    let mut watcher = Raw::connect(app.mqtt, ProtocolVersion::V5, &backend, 60).await;
    assert_eq!(
        watcher.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    let events = format!("$devices/{}/events", device.id);
    for (version, refusal) in [(ProtocolVersion::V3_1_1, 4), (ProtocolVersion::V5, 0x86)] {
        let mut impostor = device.clone();
        impostor.password = "not the password".into();
        let mut bytes = bytes::BytesMut::new();
        let connect = Raw::connect_packet(version, &device.id, &impostor, 60);
        Packet::Connect(connect)
            .encode(version, &mut bytes)
            .expect("encode CONNECT");
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: events.clone(),
            packet_id: None,
            payload: Bytes::from_static(b"smuggled"),
            properties: Properties::default(),
        })
        .encode(version, &mut bytes)
        .expect("encode PUBLISH");
        let mut raw = Raw::open(app.mqtt, version).await;
        raw.write(&bytes).await;
        match raw.packet().await {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, refusal, "{version:?}"),
            other => panic!("{version:?}: expected CONNACK, got {other:?}"),
        }
        assert!(raw.packet().await.is_none(), "{version:?}: closed");
    }
    let mut real = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    assert_eq!(
        real.publish_qos1(&events, b"genuine").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut watcher).await;
    assert_eq!(
        got.payload.as_ref(),
        b"genuine",
        "a smuggled PUBLISH was routed"
    );
    app.stop().await;
}

/// MQTT 3.1.1 MQTT-3.1.3-8: a 3.1.1 client with an empty client id must ask for a clean
/// session; with Clean Session 0 it is refused with return code 0x02 (identifier
/// rejected). MQTT 5 assigns one either way (MQTT-3.1.3-6).
#[tokio::test]
async fn an_empty_client_id_with_clean_session_0_is_refused_in_3_1_1() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    for (version, clean_start, code) in [
        (ProtocolVersion::V3_1_1, false, 0x02),
        (ProtocolVersion::V3_1_1, true, 0x00),
        (ProtocolVersion::V5, false, 0x00),
    ] {
        let mut connect = Raw::connect_packet(version, "", &device, 60);
        connect.clean_start = clean_start;
        connect.properties.session_expiry_interval = None;
        match Raw::handshake(app.mqtt, connect).await {
            (_, Some(Packet::ConnAck(ack))) => {
                assert_eq!(ack.code, code, "{version:?}, clean {clean_start}")
            }
            (_, other) => panic!("expected CONNACK, got {other:?}"),
        }
    }
    app.stop().await;
}

/// MQTT-3.10.4-1: UNSUBSCRIBE compares filters character by character (`U/#` is not `u/#`:
/// 0x11, No subscription existed); MQTT-3.10.4-2: once unsubscribed, no new message
/// matching the filter is sent. The message on the other filter arriving first shows it.
#[tokio::test]
async fn unsubscribe_matches_filters_exactly_and_stops_delivery() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut sub = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "sub", &vb, 60).await;
    for filter in ["u/#", "v/#"] {
        assert_eq!(sub.subscribe_qos1(filter).await, ReasonCode::GRANTED_QOS_1);
    }
    sub.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        filters: vec!["U/#".into(), "u/#".into()],
        properties: Properties::default(),
    }))
    .await;
    match sub.packet().await {
        Some(Packet::UnsubAck(ack)) => {
            assert_eq!(ack.packet_id, 9);
            assert_eq!(
                ack.reasons,
                vec![ReasonCode::NO_SUBSCRIPTION_EXISTED, ReasonCode::SUCCESS]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let mut publisher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "pub", &vb, 60).await;
    for topic in ["u/1", "v/1"] {
        assert_eq!(
            publisher.publish_qos1(topic, b"x").await,
            ReasonCode::SUCCESS
        );
    }
    assert_eq!(next_publish(&mut sub).await.topic, "v/1");
    app.stop().await;
}

/// MQTT-3.8.4-4 (3.1.1: MQTT-3.8.4-3): subscribing again to the same filter replaces the
/// subscription, and with Retain Handling 0 the retained messages are sent again, RETAIN
/// set.
#[tokio::test]
async fn subscribing_again_sends_the_retained_messages_again() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut publisher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "pub", &vb, 60).await;
    assert_eq!(
        publisher.publish_qos1_retained("r/x", b"kept").await,
        ReasonCode::SUCCESS
    );
    let mut sub = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "sub", &vb, 60).await;
    for round in ["first", "again"] {
        assert_eq!(sub.subscribe_qos1("r/#").await, ReasonCode::GRANTED_QOS_1);
        let retained = next_publish(&mut sub).await;
        assert_eq!(
            (
                retained.topic.as_str(),
                retained.retain,
                retained.payload.as_ref()
            ),
            ("r/x", true, &b"kept"[..]),
            "{round}"
        );
    }
    app.stop().await;
}

fn aliased(topic: &str, alias: u16, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.to_owned(),
        packet_id: Some(packet_id),
        payload: Bytes::from_static(b"x"),
        properties: Properties {
            topic_alias: Some(alias),
            ..Properties::default()
        },
    })
}

/// MQTT-3.3.2-7: topic alias mappings end with their network connection; an alias set on
/// one connection and used alone on the next is a protocol error (DISCONNECT 0x82).
/// MQTT-3.3.2-8: an alias of 0 is refused with 0x94 (Topic Alias invalid). MQTT-3.14.2-2:
/// the server's DISCONNECT carries no Session Expiry Interval.
#[tokio::test]
async fn topic_aliases_do_not_outlive_their_connection_and_0_is_invalid() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut first = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "aliaser", &vb, 60).await;
    first.send(&aliased("a/b", 1, 1)).await;
    assert!(
        matches!(first.packet().await, Some(Packet::PubAck(ack)) if ack.reason == ReasonCode::SUCCESS)
    );
    first.send(&aliased("", 1, 2)).await;
    assert!(
        matches!(first.packet().await, Some(Packet::PubAck(ack)) if ack.reason == ReasonCode::SUCCESS),
        "the alias works on its own connection"
    );
    drop(first);

    for (alias, topic, expected) in [
        (1, "", ReasonCode::PROTOCOL_ERROR),
        (0, "a/b", ReasonCode::TOPIC_ALIAS_INVALID),
    ] {
        let mut next = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "aliaser", &vb, 60).await;
        next.send(&aliased(topic, alias, 1)).await;
        match next.packet().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, expected, "alias {alias}");
                // MQTT-3.14.2-2: never a Session Expiry Interval from the server.
                assert_eq!(d.properties.session_expiry_interval, None);
            }
            other => panic!("alias {alias}: expected DISCONNECT, got {other:?}"),
        }
        assert!(next.packet().await.is_none());
    }
    app.stop().await;
}

/// MQTT 5 §4.8.2: retained messages are not sent for a shared subscription; the marker
/// published afterwards arriving first shows it.
#[tokio::test]
async fn a_shared_subscription_gets_no_retained_messages() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut publisher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "pub", &vb, 60).await;
    assert_eq!(
        publisher.publish_qos1_retained("s/kept", b"retained").await,
        ReasonCode::SUCCESS
    );
    let mut member = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "member", &vb, 60).await;
    assert_eq!(
        member.subscribe_qos1("$share/g/s/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    assert_eq!(
        publisher.publish_qos1("s/marker", b"live").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut member).await;
    assert_eq!((got.topic.as_str(), got.retain), ("s/marker", false));
    app.stop().await;
}

/// MQTT-3.3.1-3: the DUP flag a subscriber sees says whether the broker is retransmitting,
/// not what the publisher's flag was: a first delivery has DUP 0 even when the PUBLISH it
/// came from had DUP 1.
#[tokio::test]
async fn the_outgoing_dup_flag_does_not_copy_the_incoming_one() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut sub = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "sub", &vb, 60).await;
    assert_eq!(sub.subscribe_qos1("d/#").await, ReasonCode::GRANTED_QOS_1);
    let mut publisher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "pub", &vb, 60).await;
    publisher
        .send(&Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "d/1".into(),
            packet_id: Some(3),
            payload: Bytes::from_static(b"sent again by its client"),
            properties: Properties::default(),
        }))
        .await;
    assert!(matches!(publisher.packet().await, Some(Packet::PubAck(ack)) if ack.packet_id == 3));
    let got = next_publish(&mut sub).await;
    assert_eq!(got.topic, "d/1");
    assert!(!got.dup, "a first delivery");
    app.stop().await;
}

/// MQTT-4.3.3-9: after a PUBREC with a code of 0x80 or more, a PUBLISH with the same packet
/// id is a new message: here a QoS 2 PUBLISH to a topic the device may not use gets PUBREC
/// 0x87, and the next one with the same id, to its own events, is taken and delivered.
#[tokio::test]
async fn a_packet_id_refused_with_pubrec_0x87_is_free_for_a_new_message() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, password) = app.create_registry_password(&app.token, &registry).await;
    let backend = Device {
        id: user.clone(),
        registry_id: registry,
        password,
    };
    let mut watcher = Raw::connect(app.mqtt, ProtocolVersion::V5, &backend, 60).await;
    assert_eq!(
        watcher.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let events = format!("$devices/{}/events/q2", device.id);
    for (topic, expected) in [
        ("free/topic", ReasonCode::NOT_AUTHORIZED),
        (events.as_str(), ReasonCode::SUCCESS),
    ] {
        raw.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: topic.to_owned(),
            packet_id: Some(7),
            payload: Bytes::from_static(b"q2"),
            properties: Properties::default(),
        }))
        .await;
        match raw.packet().await {
            Some(Packet::PubRec(rec)) => assert_eq!((rec.packet_id, rec.reason), (7, expected)),
            other => panic!("{topic}: expected PUBREC, got {other:?}"),
        }
    }
    raw.send(&Packet::PubRel(iotcore_codec::PubRel {
        packet_id: 7,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }))
    .await;
    match raw.packet().await {
        Some(Packet::PubComp(comp)) => assert_eq!(comp.reason, ReasonCode::SUCCESS),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    assert_eq!(next_publish(&mut watcher).await.topic, events);
    app.stop().await;
}

/// MQTT-4.4.0-2: a message the subscriber answered with a PUBACK of 0x80 or more counts as
/// acknowledged and is not sent again when the session resumes; the message published
/// after it is the first to arrive.
#[tokio::test]
async fn a_message_refused_by_its_subscriber_is_not_sent_again() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let (mut sub, _) =
        crate::sessions::connect(&app, ProtocolVersion::V5, &vb, false, Some(300)).await;
    assert_eq!(sub.subscribe_qos1("n/#").await, ReasonCode::GRANTED_QOS_1);
    let mut publisher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "pub", &vb, 60).await;
    assert_eq!(
        publisher.publish_qos1("n/refused", b"no").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut sub).await;
    sub.send(&Packet::PubAck(iotcore_codec::PubAck {
        packet_id: got.packet_id.unwrap_or(0),
        reason: ReasonCode::UNSPECIFIED_ERROR,
        properties: Properties::default(),
    }))
    .await;
    // The PINGRESP shows the PUBACK was read before the connection is lost.
    sub.send(&Packet::PingReq).await;
    assert!(matches!(sub.packet().await, Some(Packet::PingResp)));
    drop(sub);

    assert_eq!(
        publisher.publish_qos1("n/after", b"yes").await,
        ReasonCode::SUCCESS
    );
    let (mut sub, present) =
        crate::sessions::connect(&app, ProtocolVersion::V5, &vb, false, Some(300)).await;
    assert!(present);
    let got = next_publish(&mut sub).await;
    assert_eq!(got.topic, "n/after", "the refused message came back");
    app.stop().await;
}

/// MQTT-3.2.2-19: a refused CONNACK says why in a reason string, except where that would
/// make it larger than the client's Maximum Packet Size: then the code comes alone.
#[tokio::test]
async fn a_refusal_leaves_out_its_reason_string_when_it_would_not_fit() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut wrong = vb.clone();
    wrong.password = "not the password".into();
    for (maximum, explained) in [(None, true), (Some(16), false)] {
        let mut connect = Raw::connect_packet(ProtocolVersion::V5, "refused", &wrong, 60);
        connect.properties.maximum_packet_size = maximum;
        let (mut raw, answer) = Raw::handshake(app.mqtt, connect).await;
        match answer {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD.0);
                assert_eq!(
                    ack.properties.reason_string.is_some(),
                    explained,
                    "maximum packet size {maximum:?}: {ack:?}"
                );
            }
            other => panic!("expected CONNACK 0x86, got {other:?}"),
        }
        assert!(raw.packet().await.is_none(), "closed after the refusal");
    }
    app.stop().await;
}

/// MQTT 3.1.1 MQTT-3.3.5-2: a PUBLISH the client may not make is answered with a positive
/// acknowledgement (3.1.1 has no way to say no) and dropped; the connection stays. The
/// allowed message published after it is the first the watcher receives.
#[tokio::test]
async fn an_unauthorized_publish_in_3_1_1_is_acknowledged_and_dropped() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let other = app.create_device(&app.token, &registry, "other").await;
    let (user, password) = app.create_registry_password(&app.token, &registry).await;
    let backend = Device {
        id: user,
        registry_id: registry,
        password,
    };
    let mut watcher = Raw::connect(app.mqtt, ProtocolVersion::V5, &backend, 60).await;
    assert_eq!(
        watcher.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V3_1_1, &device, 60).await;
    let forged = format!("$devices/{}/events", other.id);
    assert_eq!(
        raw.publish_qos1(&forged, b"forged").await,
        ReasonCode::SUCCESS
    );
    let own = format!("$devices/{}/events", device.id);
    assert_eq!(raw.publish_qos1(&own, b"own").await, ReasonCode::SUCCESS);
    let got = next_publish(&mut watcher).await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        (own.as_str(), &b"own"[..])
    );
    app.stop().await;
}

/// MQTT-3.1.2-29: with Request Problem Information 0, no reason string or user property
/// comes on anything but CONNACK, DISCONNECT and PUBLISH: refusals in PUBACK, PUBREC and
/// SUBACK carry their codes alone.
#[tokio::test]
async fn request_problem_information_0_keeps_reason_strings_off_acknowledgements() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let mut connect = Raw::connect_packet(ProtocolVersion::V5, &device.id, &device, 60);
    connect.properties.request_problem_information = Some(0);
    let (mut raw, answer) = Raw::handshake(app.mqtt, connect).await;
    assert!(
        matches!(answer, Some(Packet::ConnAck(ref c)) if c.code == 0),
        "{answer:?}"
    );
    let quiet = |properties: &Properties| {
        properties.reason_string.is_none() && properties.user_properties.is_empty()
    };
    raw.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "free/topic".into(),
        packet_id: Some(1),
        payload: Bytes::from_static(b"x"),
        properties: Properties::default(),
    }))
    .await;
    match raw.packet().await {
        Some(Packet::PubAck(ack)) => {
            assert_eq!(ack.reason, ReasonCode::NOT_AUTHORIZED);
            assert!(quiet(&ack.properties), "{ack:?}");
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    raw.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "free/topic".into(),
        packet_id: Some(2),
        payload: Bytes::from_static(b"x"),
        properties: Properties::default(),
    }))
    .await;
    match raw.packet().await {
        Some(Packet::PubRec(rec)) => {
            assert_eq!(rec.reason, ReasonCode::NOT_AUTHORIZED);
            assert!(quiet(&rec.properties), "{rec:?}");
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    raw.send(&Packet::Subscribe(iotcore_codec::Subscribe {
        packet_id: 3,
        filters: vec![(
            "#".into(),
            iotcore_codec::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            },
        )],
        properties: Properties::default(),
    }))
    .await;
    match raw.packet().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.reasons, vec![ReasonCode::NOT_AUTHORIZED]);
            assert!(quiet(&ack.properties), "{ack:?}");
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    app.stop().await;
}

/// MQTT-1.5.4-3 and MQTT-4.7.3-4: topics are matched byte for byte: a U+FEFF in a topic is
/// neither stripped nor skipped, and a precomposed "é" is not its decomposed form. Each
/// subscriber receives the one message published to its exact topic.
#[tokio::test]
async fn topics_are_matched_byte_for_byte() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let topics = ["t/\u{feff}x", "t/x", "t/caf\u{e9}", "t/cafe\u{301}"];
    let mut subscribers = Vec::new();
    for (n, topic) in topics.iter().enumerate() {
        let mut sub =
            Raw::connect_as(app.mqtt, ProtocolVersion::V5, &format!("sub{n}"), &vb, 60).await;
        // Both before anything is published: waiting for a SUBACK skips other packets.
        for filter in [topic, "marker"] {
            assert_eq!(sub.subscribe_qos1(filter).await, ReasonCode::GRANTED_QOS_1);
        }
        subscribers.push(sub);
    }
    let mut publisher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "pub", &vb, 60).await;
    for topic in topics {
        assert_eq!(
            publisher.publish_qos1(topic, topic.as_bytes()).await,
            ReasonCode::SUCCESS
        );
    }
    // Then a marker every subscriber receives: anything else would have come before it.
    assert_eq!(
        publisher.publish_qos1("marker", b"m").await,
        ReasonCode::SUCCESS
    );
    for (sub, topic) in subscribers.iter_mut().zip(topics) {
        let got = next_publish(sub).await;
        assert_eq!(
            got.topic, topic,
            "first message of the {topic:?} subscriber"
        );
        assert_eq!(got.payload.as_ref(), topic.as_bytes());
        assert_eq!(next_publish(sub).await.topic, "marker", "{topic:?}");
    }
    app.stop().await;
}

/// MQTT 3.1 has no Session Present flag: the first byte of its CONNACK is reserved. A 3.1
/// client whose session was kept gets 0 there; a 3.1.1 client 1 (3.1.1 MQTT-3.2.2-2).
#[tokio::test]
async fn a_3_1_connack_leaves_its_reserved_byte_at_0() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let (user, password) = app.create_registry_password(&app.token, &registry).await;
    let backend = Device {
        id: user.clone(),
        registry_id: registry,
        password,
    };
    for (version, suffix, flag) in [
        (ProtocolVersion::V3_1, "v31", false),
        (ProtocolVersion::V3_1_1, "v311", true),
    ] {
        let client_id = format!("{user}:{suffix}");
        for round in ["new", "kept"] {
            let mut connect = Raw::connect_packet(version, &client_id, &backend, 60);
            connect.clean_start = false;
            match Raw::handshake(app.mqtt, connect).await {
                (_, Some(Packet::ConnAck(ack))) => {
                    assert_eq!(ack.code, 0);
                    let expected = flag && round == "kept";
                    assert_eq!(ack.session_present, expected, "{version:?}, {round}");
                }
                (_, other) => panic!("expected CONNACK, got {other:?}"),
            }
        }
    }
    app.stop().await;
}
