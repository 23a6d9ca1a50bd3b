//! The limits of SPEC §3.5 and the tenant quotas of SPEC §7.3, one test each, with the raw
//! client so that every reason code is visible (client libraries turn failure reason codes
//! into errors that end their connection).

use iotcore_codec::{
    Packet, ProtocolVersion, PubRel, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};
use serde_json::{json, Value};
use std::time::Duration;

async fn set_quotas(app: &TestApp, tenant_id: &str, quotas: Value) {
    let path = format!("/v1/tenants/{tenant_id}/quotas");
    let (status, body) = app
        .call("PATCH", &path, &app.operator_token, Some(quotas))
        .await;
    assert_eq!(status, 200, "PATCH quotas: {body}");
}

async fn device(app: &TestApp, name: &str) -> Device {
    let registry = app.create_registry(&app.token, name).await;
    app.create_device(&app.token, &registry, name).await
}

/// The CONNACK code a CONNECT of `device` gets (`None`: closed without one).
async fn connack_code(app: &TestApp, version: ProtocolVersion, device: &Device) -> Option<u8> {
    let connect = Raw::connect_packet(version, &device.id, device, 60);
    match Raw::handshake(app.mqtt, connect).await {
        (_, Some(Packet::ConnAck(connack))) => Some(connack.code),
        (_, _) => None,
    }
}

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: Vec<u8>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        payload: payload.into(),
        properties: Default::default(),
    })
}

/// The DISCONNECT reason the broker closes with, after skipping other packets.
async fn disconnect_reason(raw: &mut Raw) -> ReasonCode {
    loop {
        match raw.packet().await {
            Some(Packet::Disconnect(d)) => return d.reason,
            Some(_) => continue,
            None => panic!("closed without DISCONNECT"),
        }
    }
}

/// MQTT 5 §3.2.2.3.6: a packet larger than the Maximum Packet Size the server announced
/// closes the connection with DISCONNECT 0x95 (Packet too large); others carry on.
#[tokio::test]
async fn a_packet_over_the_maximum_size_is_refused_with_0x95() {
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_MAX_PACKET_SIZE", "1024")]).await;
    let device = device(&app, "d").await;
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let topic = format!("$devices/{}/events", device.id);
    raw.send(&publish(&topic, QoS::AtMostOnce, 0, vec![0; 2000]))
        .await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        ReasonCode::PACKET_TOO_LARGE
    );
    assert!(raw.packet().await.is_none());

    // MQTT 3.1.1: closed without a word.
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V3_1_1, &device, 60).await;
    raw.send(&publish(&topic, QoS::AtMostOnce, 0, vec![0; 2000]))
        .await;
    assert!(raw.packet().await.is_none());
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    assert_eq!(
        raw.publish_qos1(&topic, b"small").await,
        ReasonCode::SUCCESS
    );
    app.stop().await;
}

/// SPEC §3.5 topic length and levels: a topic name over either limit is invalid (MQTT 5
/// DISCONNECT 0x90, MQTT-3.3.2-... Topic Name invalid), a filter over them is refused in
/// the SUBACK (0x8F).
#[tokio::test]
async fn topics_over_the_length_or_level_limits_are_refused() {
    let app = TestApp::spawn_with(&[
        ("IOTCORE_MQTT_MAX_TOPIC_LENGTH", "64"),
        ("IOTCORE_MQTT_MAX_TOPIC_LEVELS", "5"),
    ])
    .await;
    let device = device(&app, "d").await;
    let base = format!("$devices/{}/events", device.id);
    let too_deep = format!("{base}/a/b/c");
    let too_long = format!("{base}/{}", "x".repeat(64));
    for topic in [&too_deep, &too_long] {
        let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
        raw.send(&publish(topic, QoS::AtLeastOnce, 1, b"p".to_vec()))
            .await;
        assert_eq!(
            disconnect_reason(&mut raw).await,
            ReasonCode::TOPIC_NAME_INVALID,
            "{topic}"
        );
    }
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let commands = format!("$devices/{}/commands", device.id);
    assert_eq!(
        raw.subscribe_qos1(&format!("{commands}/a/b/c")).await,
        ReasonCode::TOPIC_FILTER_INVALID
    );
    assert_eq!(
        raw.subscribe_qos1(&format!("{commands}/{}", "x".repeat(64)))
            .await,
        ReasonCode::TOPIC_FILTER_INVALID
    );
    assert_eq!(raw.publish_qos1(&base, b"p").await, ReasonCode::SUCCESS);
    app.stop().await;
}

/// SPEC §3.5 subscriptions per session: beyond `mqtt.max_subscriptions` a SUBACK says 0x97
/// (Quota exceeded) in MQTT 5 and 0x80 (Failure, MQTT-3.9.3) in 3.1.1; replacing an
/// existing subscription is still allowed (MQTT-3.8.4-3).
#[tokio::test]
async fn subscriptions_beyond_the_limit_are_refused_with_0x97() {
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_MAX_SUBSCRIPTIONS", "2")]).await;
    let device = device(&app, "d").await;
    let commands = format!("$devices/{}/commands", device.id);
    for (version, refused) in [
        (ProtocolVersion::V5, ReasonCode::QUOTA_EXCEEDED),
        (ProtocolVersion::V3_1_1, ReasonCode::V3_SUBACK_FAILURE),
    ] {
        let mut raw = Raw::connect(app.mqtt, version, &device, 60).await;
        for filter in ["a", "b"] {
            assert_eq!(
                raw.subscribe_qos1(&format!("{commands}/{filter}")).await,
                ReasonCode::GRANTED_QOS_1
            );
        }
        assert_eq!(raw.subscribe_qos1(&format!("{commands}/c")).await, refused);
        assert_eq!(
            raw.subscribe_qos1(&format!("{commands}/a")).await,
            ReasonCode::GRANTED_QOS_1,
            "a replaced subscription is not a new one"
        );
    }
    app.stop().await;
}

/// SPEC §3.5 inflight window: MQTT-3.3.4-7 forbids more unacknowledged QoS 2 PUBLISH
/// packets than the Receive Maximum the server announced; the broker closes the connection
/// with 0x93 (Receive Maximum exceeded).
#[tokio::test]
async fn more_qos2_in_flight_than_the_receive_maximum_is_refused_with_0x93() {
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_INFLIGHT_WINDOW", "2")]).await;
    let device = device(&app, "d").await;
    let connect = Raw::connect_packet(ProtocolVersion::V5, &device.id, &device, 60);
    let (mut raw, connack) = Raw::handshake(app.mqtt, connect).await;
    match connack {
        Some(Packet::ConnAck(connack)) => {
            assert_eq!(connack.properties.receive_maximum, Some(2))
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let topic = format!("$devices/{}/events", device.id);
    for id in 1..=2 {
        raw.send(&publish(&topic, QoS::ExactlyOnce, id, b"p".to_vec()))
            .await;
        assert!(matches!(raw.packet().await, Some(Packet::PubRec(r)) if r.packet_id == id));
    }
    // Completing one makes room for another.
    raw.send(&Packet::PubRel(PubRel {
        packet_id: 1,
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(raw.packet().await, Some(Packet::PubComp(_))));
    raw.send(&publish(&topic, QoS::ExactlyOnce, 3, b"p".to_vec()))
        .await;
    assert!(matches!(raw.packet().await, Some(Packet::PubRec(r)) if r.packet_id == 3));
    raw.send(&publish(&topic, QoS::ExactlyOnce, 4, b"p".to_vec()))
        .await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED
    );
    app.stop().await;
}

/// SPEC §7.3 connections per tenant: at the tenant's quota a CONNECT is refused (MQTT 5
/// CONNACK 0x97 Quota exceeded; 3.1.1 return code 3, Server unavailable), other tenants
/// are not affected, and a quota changed through the API applies without a restart.
#[tokio::test]
async fn connections_beyond_the_tenant_quota_are_refused_with_0x97() {
    let app = TestApp::spawn().await;
    set_quotas(&app, &app.tenant_id, json!({ "max_connections": 1 })).await;
    let first = device(&app, "first").await;
    let second = device(&app, "second").await;
    let (other_tenant, other_token) = app.other_tenant("other").await;
    let other_registry = app.create_registry(&other_token, "r").await;
    let other = app.create_device(&other_token, &other_registry, "d").await;

    let held = Raw::connect(app.mqtt, ProtocolVersion::V5, &first, 60).await;
    assert_eq!(
        connack_code(&app, ProtocolVersion::V5, &second).await,
        Some(ReasonCode::QUOTA_EXCEEDED.0)
    );
    assert_eq!(
        connack_code(&app, ProtocolVersion::V3_1_1, &second).await,
        Some(3)
    );
    let _other = Raw::connect(app.mqtt, ProtocolVersion::V5, &other, 60).await;

    // The broker follows the quota as the control plane changes it.
    set_quotas(&app, &app.tenant_id, json!({ "max_connections": 2 })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match connack_code(&app, ProtocolVersion::V5, &second).await {
            Some(0) => break,
            code if tokio::time::Instant::now() > deadline => {
                panic!("still refused after the quota was raised: {code:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // A closed connection frees its slot.
    drop(held);
    let _ = other_tenant;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    set_quotas(&app, &app.tenant_id, json!({ "max_connections": 1 })).await;
    loop {
        match connack_code(&app, ProtocolVersion::V5, &first).await {
            Some(0) => break,
            code if tokio::time::Instant::now() > deadline => {
                panic!("the slot of a closed connection was not freed: {code:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    app.stop().await;
}

/// SPEC §3.5 CONNECTs per second per tenant: beyond the rate a CONNECT is refused with
/// CONNACK 0x9F (Connection rate exceeded) before its password is checked; another
/// tenant's clients still connect.
#[tokio::test]
async fn connects_beyond_the_tenant_rate_are_refused_with_0x9f() {
    let app =
        TestApp::spawn_with(&[("IOTCORE_MQTT_MAX_CONNECTS_PER_SECOND_PER_TENANT", "1")]).await;
    let device = device(&app, "d").await;
    let (_, other_token) = app.other_tenant("other").await;
    let other_registry = app.create_registry(&other_token, "r").await;
    let other = app.create_device(&other_token, &other_registry, "d").await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(connack_code(&app, ProtocolVersion::V5, &device).await);
    }
    assert!(
        codes.contains(&Some(ReasonCode::CONNECTION_RATE_EXCEEDED.0)),
        "six CONNECTs at 1 per second: {codes:?}"
    );
    assert_eq!(
        connack_code(&app, ProtocolVersion::V5, &other).await,
        Some(0),
        "the other tenant is not throttled"
    );
    app.stop().await;
}

/// SPEC §3.5 publishes per second per client: a client publishing faster is disconnected
/// with DISCONNECT 0x96 (Message rate too high, MQTT 5 §3.14.2.1) whatever the QoS; an
/// MQTT 3.1.1 client is disconnected without a word, and sends its unacknowledged
/// messages again after reconnecting rather than losing them.
#[tokio::test]
async fn publishes_beyond_the_client_rate_disconnect_with_0x96() {
    let app =
        TestApp::spawn_with(&[("IOTCORE_MQTT_MAX_PUBLISHES_PER_SECOND_PER_CLIENT", "1")]).await;
    let device = device(&app, "d").await;
    let topic = format!("$devices/{}/events", device.id);
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let mut raw = Raw::connect(app.mqtt, version, &device, 60).await;
        // One write: sent one by one, a later PUBLISH could meet the socket the broker
        // already closed after an earlier one, and the write would fail.
        let mut six = bytes::BytesMut::new();
        for id in 1..=6 {
            publish(&topic, QoS::AtLeastOnce, id, b"p".to_vec())
                .encode(version, &mut six)
                .expect("encode");
        }
        raw.write(&six).await;
        let mut acked = 0;
        let reason = loop {
            match raw.packet().await {
                Some(Packet::PubAck(ack)) => {
                    assert_eq!(ack.reason, ReasonCode::SUCCESS);
                    acked += 1;
                }
                Some(Packet::Disconnect(d)) => break Some(d.reason),
                None => break None,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(acked < 6, "{version:?}: six publishes at 1 per second");
        match version {
            ProtocolVersion::V5 => assert_eq!(reason, Some(ReasonCode::MESSAGE_RATE_TOO_HIGH)),
            _ => assert_eq!(reason, None),
        }
    }
    // Another client of the same tenant has its own rate.
    let other = app
        .create_device(&app.token, &device.registry_id, "other")
        .await;
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V5, &other, 60).await;
    assert_eq!(
        raw.publish_qos1(&format!("$devices/{}/events", other.id), b"p")
            .await,
        ReasonCode::SUCCESS
    );
    app.stop().await;
}

/// SPEC §7.3 messages per second per tenant: all of a tenant's clients share its rate;
/// beyond it a QoS 1 PUBLISH is answered PUBACK 0x97 (Quota exceeded, the refusal a
/// PUBACK can carry) and the client stays connected.
#[tokio::test]
async fn publishes_beyond_the_tenant_message_rate_are_refused_with_0x97() {
    let app = TestApp::spawn().await;
    set_quotas(
        &app,
        &app.tenant_id,
        json!({ "max_messages_per_second": 1 }),
    )
    .await;
    let a = device(&app, "a").await;
    let b = device(&app, "b").await;
    let mut raw_a = Raw::connect(app.mqtt, ProtocolVersion::V5, &a, 60).await;
    let mut raw_b = Raw::connect(app.mqtt, ProtocolVersion::V5, &b, 60).await;
    let mut reasons = Vec::new();
    for _ in 0..3 {
        reasons.push(
            raw_a
                .publish_qos1(&format!("$devices/{}/events", a.id), b"p")
                .await,
        );
        reasons.push(
            raw_b
                .publish_qos1(&format!("$devices/{}/events", b.id), b"p")
                .await,
        );
    }
    assert!(
        reasons.contains(&ReasonCode::QUOTA_EXCEEDED),
        "six publishes of one tenant at 1 per second: {reasons:?}"
    );
    app.stop().await;
}

/// SPEC §7.3 bytes per second per tenant: beyond it PUBACK 0x97 (Quota exceeded).
#[tokio::test]
async fn publishes_beyond_the_tenant_byte_rate_are_refused_with_0x97() {
    let app = TestApp::spawn().await;
    set_quotas(
        &app,
        &app.tenant_id,
        json!({ "max_bytes_per_second": 1000 }),
    )
    .await;
    let device = device(&app, "d").await;
    let topic = format!("$devices/{}/events", device.id);
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let payload: &'static [u8] = &[7; 600];
    let mut reasons = Vec::new();
    for _ in 0..4 {
        reasons.push(raw.publish_qos1(&topic, payload).await);
    }
    assert!(
        reasons.contains(&ReasonCode::QUOTA_EXCEEDED),
        "2,400 bytes at 1,000 per second: {reasons:?}"
    );
    app.stop().await;
}

/// SPEC §7.3 retained messages per tenant: beyond the quota a message for a new topic is
/// delivered but not retained.
#[tokio::test]
async fn retained_messages_beyond_the_tenant_quota_are_not_kept() {
    let app = TestApp::spawn().await;
    set_quotas(&app, &app.tenant_id, json!({ "max_retained_messages": 1 })).await;
    let device = device(&app, "d").await;
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    for (id, topic) in [(1, "first"), (2, "second")] {
        raw.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: format!("$devices/{}/state/{topic}", device.id),
            packet_id: Some(id),
            payload: bytes::Bytes::from_static(b"r"),
            properties: Default::default(),
        }))
        .await;
        assert!(
            matches!(raw.packet().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::SUCCESS)
        );
    }
    // A registry client reads the device's state topics (SPEC §3.4).
    let (user, password) = app
        .create_registry_password(&app.token, &device.registry_id)
        .await;
    let backend = Device {
        id: user.clone(),
        registry_id: device.registry_id.clone(),
        password,
    };
    let mut reader = Raw::connect(app.mqtt, ProtocolVersion::V5, &backend, 60).await;
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 9,
        filters: vec![(
            format!("$devices/{}/state/#", device.id),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            },
        )],
        properties: Default::default(),
    });
    reader.send(&subscribe).await;
    let mut retained = Vec::new();
    // The retained messages follow the SUBACK, written together: a PINGRESP asked for
    // after the first of them arrives comes after the last.
    loop {
        match reader.packet().await {
            Some(Packet::Publish(p)) => {
                if retained.is_empty() {
                    reader.send(&Packet::PingReq).await;
                }
                retained.push(p.topic);
            }
            Some(Packet::PingResp) => break,
            Some(_) => continue,
            None => panic!("closed"),
        }
    }
    assert_eq!(
        retained,
        vec![format!("$devices/{}/state/first", device.id)]
    );
    app.stop().await;
}

/// SPEC §3.1 slow consumers: a subscriber that never reads holds at most its in-flight
/// window (MQTT-4.9.0-2: no more unacknowledged QoS 1 messages than its Receive Maximum)
/// and its bounded queue; every further message is dropped for it and counted
/// (`iotcore_mqtt_dropped_total{reason="queue_full"}`), while the publisher carries on.
#[tokio::test]
async fn a_stalled_subscriber_holds_its_window_and_queue_and_the_rest_is_dropped_and_counted() {
    const WINDOW: usize = 4;
    const QUEUE: usize = 8;
    const PUBLISHED: usize = 100;
    let app = TestApp::spawn_with(&[
        ("IOTCORE_MQTT_INFLIGHT_WINDOW", "4"),
        ("IOTCORE_MQTT_OUTBOUND_QUEUE", "8"),
    ])
    .await;
    let device = device(&app, "d").await;
    let (user, password) = app
        .create_registry_password(&app.token, &device.registry_id)
        .await;
    let backend = Device {
        id: user.clone(),
        registry_id: device.registry_id.clone(),
        password,
    };
    let mut stalled = Raw::connect(app.mqtt, ProtocolVersion::V5, &backend, 0).await;
    assert_eq!(
        stalled.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    let mut publisher = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let topic = format!("$devices/{}/events/bulk", device.id);
    for _ in 0..PUBLISHED {
        assert_eq!(
            publisher.publish_qos1(&topic, b"bulk").await,
            ReasonCode::SUCCESS,
            "the publisher carries on"
        );
    }
    let series = format!(
        "iotcore_mqtt_dropped_total{{tenant=\"{}\",reason=\"queue_full\"}}",
        app.tenant_id
    );
    let dropped = app.metric(&series).await as usize;
    assert!(
        dropped >= PUBLISHED - WINDOW - QUEUE,
        "{dropped} of {PUBLISHED} dropped for a subscriber that holds {WINDOW} + {QUEUE}"
    );

    let kept = PUBLISHED - dropped;
    assert!(
        kept <= WINDOW + QUEUE,
        "{kept} kept for the stalled subscriber"
    );

    // The subscriber wakes up and acknowledges what it gets: exactly the messages kept for
    // it arrive, then a marker published afterwards, and nothing else.
    let marker = format!("$devices/{}/events/marker", device.id);
    let mut delivered = 0;
    let mut marker_sent = false;
    loop {
        if delivered == kept && !marker_sent {
            marker_sent = true;
            assert_eq!(
                publisher.publish_qos1(&marker, b"m").await,
                ReasonCode::SUCCESS
            );
        }
        match stalled.packet().await {
            Some(Packet::Publish(p)) => {
                if let Some(packet_id) = p.packet_id {
                    stalled
                        .send(&Packet::PubAck(iotcore_codec::PubAck {
                            packet_id,
                            reason: ReasonCode::SUCCESS,
                            properties: Default::default(),
                        }))
                        .await;
                }
                if p.topic == marker {
                    break;
                }
                assert_eq!(p.topic, topic);
                delivered += 1;
            }
            Some(_) => continue,
            None => panic!("the subscriber was disconnected"),
        }
    }
    assert_eq!(delivered, kept, "every kept message, and only those");
    app.stop().await;
}
