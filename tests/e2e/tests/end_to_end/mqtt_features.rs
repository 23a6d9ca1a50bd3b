//! MQTT features beyond the basics, each naming the specification statement it checks:
//! QoS 2, wills, MQTT 5 properties passed through, subscription identifiers, topic
//! aliases; and `mosquitto_sub` as an independent subscriber.

use bytes::Bytes;
use iotcore_codec::{Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, Will};
use iotcore_e2e::mqtt::{connect_v311, connect_v5, WAIT};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};
use rumqttc::v5::mqttbytes::v5::{PublishProperties, SubscribeProperties};
use std::time::Duration;

/// A device, and a registry client watching every `$devices/+/…` topic of its registry.
async fn device_and_watcher(
    app: &TestApp,
    filter: &str,
    qos: rumqttc::QoS,
) -> (Device, iotcore_e2e::mqtt::V311) {
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let mut watcher = connect_v311(app.mqtt, &format!("{user}:watcher"), &user, &pass)
        .await
        .expect("watcher");
    watcher.subscribe(filter, qos).await;
    (device, watcher)
}

/// MQTT-4.3.3: a QoS 2 message is delivered once, with QoS 2, to a QoS 2 subscription.
#[tokio::test]
async fn qos2_is_delivered_exactly_once_end_to_end() {
    let app = TestApp::spawn().await;
    let (device, mut watcher) =
        device_and_watcher(&app, "$devices/+/events/#", rumqttc::QoS::ExactlyOnce).await;
    let mut publisher = app.mqtt_v311(&device).await.expect("device");
    let topic = format!("$devices/{}/events/q2", device.id);
    publisher
        .client
        .publish(&topic, rumqttc::QoS::ExactlyOnce, false, "once")
        .await
        .expect("publish");
    // The publisher's flow completes: PUBREC, then PUBCOMP after its PUBREL.
    loop {
        match publisher.next(WAIT).await {
            Some(Ok(rumqttc::Packet::PubComp(_))) => break,
            Some(Ok(_)) => continue,
            other => panic!("no PUBCOMP: {other:?}"),
        }
    }
    let received = watcher.next_publish(WAIT).await.expect("delivered");
    assert_eq!(received.qos, rumqttc::QoS::ExactlyOnce);
    assert_eq!(received.payload.as_ref(), b"once");
    assert!(
        watcher
            .next_publish(Duration::from_millis(500))
            .await
            .is_none(),
        "delivered twice"
    );
    app.stop().await;
}

fn with_will(
    mut connect: iotcore_codec::Connect,
    topic: &str,
    payload: &'static [u8],
) -> iotcore_codec::Connect {
    connect.will = Some(Will {
        topic: topic.to_owned(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    connect
}

/// MQTT-3.1.2-8: the will is published when the network connection is lost;
/// MQTT-3.1.2-10: it is discarded after a normal DISCONNECT.
#[tokio::test]
async fn will_is_published_on_connection_loss_and_not_after_disconnect() {
    let app = TestApp::spawn().await;
    let (device, mut watcher) =
        device_and_watcher(&app, "$devices/+/state/#", rumqttc::QoS::AtLeastOnce).await;
    let will_topic = format!("$devices/{}/state/online", device.id);

    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let connect = Raw::connect_packet(version, &device.id, &device, 60);
        let (mut polite, connack) =
            Raw::handshake(app.mqtt, with_will(connect, &will_topic, b"gone")).await;
        assert!(
            matches!(connack, Some(Packet::ConnAck(ref c)) if c.code == 0),
            "{connack:?}"
        );
        let disconnect = iotcore_codec::Disconnect {
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        };
        polite.send(&Packet::Disconnect(disconnect)).await;
        assert!(polite.packet().await.is_none());
        assert!(
            watcher.next_publish(Duration::from_secs(1)).await.is_none(),
            "will after DISCONNECT ({version:?})"
        );

        let connect = Raw::connect_packet(version, &device.id, &device, 60);
        let (rude, connack) =
            Raw::handshake(app.mqtt, with_will(connect, &will_topic, b"gone")).await;
        assert!(
            matches!(connack, Some(Packet::ConnAck(ref c)) if c.code == 0),
            "{connack:?}"
        );
        drop(rude);
        let will = watcher.next_publish(WAIT).await.expect("the will");
        assert_eq!(will.topic, will_topic);
        assert_eq!(will.payload.as_ref(), b"gone");
    }
    app.stop().await;
}

/// A will is published with the client's own rights: one it could not publish is refused
/// at CONNECT (3.1.1: 5, MQTT 5: 0x87).
#[tokio::test]
async fn will_to_a_topic_the_device_may_not_publish_is_refused() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let other = app.create_device(&app.token, &registry, "other").await;
    let forged = format!("$devices/{}/state", other.id);
    for (version, code) in [(ProtocolVersion::V3_1_1, 5), (ProtocolVersion::V5, 0x87)] {
        let connect = with_will(
            Raw::connect_packet(version, &device.id, &device, 60),
            &forged,
            b"x",
        );
        let (_, connack) = Raw::handshake(app.mqtt, connect).await;
        assert!(
            matches!(connack, Some(Packet::ConnAck(ref c)) if c.code == code),
            "{version:?}: {connack:?}"
        );
    }
    app.stop().await;
}

/// MQTT-3.3.2-15..20: payload format, content type, response topic, correlation data and
/// user properties reach subscribers unchanged, and the message expiry interval is the
/// time left; MQTT-3.3.4-3: with the subscription identifier.
#[tokio::test]
async fn mqtt5_properties_reach_subscribers_unchanged() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let mut watcher = connect_v5(app.mqtt, &user, &user, &pass)
        .await
        .expect("watcher");
    let properties = SubscribeProperties {
        id: Some(7),
        user_properties: Vec::new(),
    };
    watcher
        .client
        .subscribe_with_properties(
            "$devices/+/events/#",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            properties,
        )
        .await
        .expect("subscribe");
    watcher.suback().await;

    let publisher = app.mqtt_v5(&device).await.expect("device");
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        content_type: Some("application/json".into()),
        response_topic: Some(format!("$devices/{}/commands/reply", device.id)),
        correlation_data: Some(Bytes::from_static(b"request-1")),
        user_properties: vec![
            ("k".into(), "1".into()),
            ("k".into(), "2".into()),
            ("z".into(), "last".into()),
        ],
        ..Default::default()
    };
    let topic = format!("$devices/{}/events/props", device.id);
    publisher
        .client
        .publish_with_properties(
            &topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "{}",
            sent.clone(),
        )
        .await
        .expect("publish");
    let received = watcher.next_publish(WAIT).await.expect("delivered");
    let got = received.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, sent.payload_format_indicator);
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.response_topic, sent.response_topic);
    assert_eq!(got.correlation_data, sent.correlation_data);
    assert_eq!(
        got.user_properties, sent.user_properties,
        "order and repeats kept (MQTT-3.3.2-18)"
    );
    assert!(
        got.message_expiry_interval
            .is_some_and(|left| left > 0 && left <= 600),
        "{got:?}"
    );
    assert_eq!(got.subscription_identifiers, vec![7]);
    app.stop().await;
}

/// MQTT-3.3.2-12: a topic alias set by the client stands for its topic afterwards.
#[tokio::test]
async fn topic_alias_from_the_client_is_resolved() {
    let app = TestApp::spawn().await;
    let (device, mut watcher) =
        device_and_watcher(&app, "$devices/+/events/#", rumqttc::QoS::AtLeastOnce).await;
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let topic = format!("$devices/{}/events/aliased", device.id);
    for (packet_id, topic, payload) in [(1, topic.clone(), "first"), (2, String::new(), "second")] {
        let properties = Properties {
            topic_alias: Some(1),
            ..Properties::default()
        };
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(packet_id),
            payload: Bytes::from_static(payload.as_bytes()),
            properties,
        };
        raw.send(&Packet::Publish(publish)).await;
        match raw.packet().await {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.reason, ReasonCode::SUCCESS),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    for payload in ["first", "second"] {
        let received = watcher.next_publish(WAIT).await.expect("delivered");
        assert_eq!(
            (received.topic.as_str(), received.payload.as_ref()),
            (topic.as_str(), payload.as_bytes())
        );
    }
    // An alias above the announced maximum closes the connection with 0x94.
    let properties = Properties {
        topic_alias: Some(u16::MAX),
        ..Properties::default()
    };
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.clone(),
        packet_id: None,
        payload: Bytes::new(),
        properties,
    };
    raw.send(&Packet::Publish(publish)).await;
    match raw.packet().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::TOPIC_ALIAS_INVALID),
        other => panic!("expected DISCONNECT 0x94, got {other:?}"),
    }
    app.stop().await;
}

/// `mosquitto_sub`, an independent client, receives a device's retained state.
#[tokio::test]
async fn mosquitto_sub_receives_a_devices_retained_state() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let mut publisher = app.mqtt_v311(&device).await.expect("device");
    let topic = format!("$devices/{}/state/mode", device.id);
    publisher
        .client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, true, "eco")
        .await
        .expect("publish");
    publisher.puback().await;

    let output = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &app.mqtt.port().to_string(),
            "-V",
            "mqttv5",
            "-q",
            "1",
        ])
        .args(["-i", &format!("{user}:mosquitto"), "-u", &user, "-P", &pass])
        .args(["-t", "$devices/+/state/#", "-C", "1", "-W", "10", "-v"])
        .output()
        .await
        .expect("mosquitto_sub is installed (the test command installs mosquitto-clients)");
    assert!(
        output.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("{topic} eco")
    );
    app.stop().await;
}

/// MQTT 5 §4.8.2 shared subscriptions: each message goes to one member of the group, and
/// ordinary subscribers still get every message.
#[tokio::test]
async fn a_shared_subscription_spreads_messages_over_its_members() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let mut members = Vec::new();
    for name in ["a", "b"] {
        let mut member = connect_v311(app.mqtt, &format!("{user}:{name}"), &user, &pass)
            .await
            .expect("member");
        member
            .client
            .subscribe(
                "$share/workers/$devices/+/events/#",
                rumqttc::QoS::AtLeastOnce,
            )
            .await
            .expect("sub");
        assert_eq!(
            member.suback().await.return_codes,
            vec![rumqttc::SubscribeReasonCode::Success(
                rumqttc::QoS::AtLeastOnce
            )]
        );
        members.push(member);
    }
    let mut everything = connect_v311(app.mqtt, &format!("{user}:all"), &user, &pass)
        .await
        .expect("all");
    everything
        .subscribe("$devices/+/events/#", rumqttc::QoS::AtLeastOnce)
        .await;

    let mut publisher = app.mqtt_v311(&device).await.expect("device");
    let topic = format!("$devices/{}/events", device.id);
    for n in 0..6 {
        publisher
            .client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, false, n.to_string())
            .await
            .expect("publish");
        publisher.puback().await;
    }
    let mut seen = Vec::new();
    for member in &mut members {
        let mut got = 0;
        while let Some(publish) = member.next_publish(Duration::from_millis(700)).await {
            seen.push(String::from_utf8_lossy(&publish.payload).into_owned());
            got += 1;
        }
        assert!(got > 0, "every member gets a share");
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..6).map(|n| n.to_string()).collect::<Vec<_>>(),
        "each message exactly once"
    );
    for _ in 0..6 {
        everything
            .next_publish(WAIT)
            .await
            .expect("the ordinary subscriber gets every message");
    }
    app.stop().await;
}

/// MQTT 3.1 (protocol name MQIsdp, level 3) clients work too: `mosquitto_pub -V mqttv31`
/// publishes, a raw 3.1 client subscribes.
#[tokio::test]
async fn mqtt_3_1_clients_publish_and_subscribe() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, password) = app.create_registry_password(&app.token, &registry).await;
    let backend = Device {
        id: user.clone(),
        registry_id: registry.clone(),
        password,
    };
    let mut raw = Raw::connect(app.mqtt, ProtocolVersion::V3_1, &backend, 60).await;
    assert_eq!(
        raw.subscribe_qos1("$devices/+/events/#").await,
        ReasonCode::GRANTED_QOS_1
    );

    let topic = format!("$devices/{}/events/legacy", device.id);
    let status = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &app.mqtt.port().to_string(),
            "-V",
            "mqttv31",
            "-q",
            "1",
        ])
        .args([
            "-i",
            &device.id,
            "-u",
            &device.id,
            "-P",
            &device.password,
            "-t",
            &topic,
            "-m",
            "from 3.1",
        ])
        .status()
        .await
        .expect("mosquitto_pub is installed");
    assert!(
        status.success(),
        "mosquitto_pub -V mqttv31 exited with {status}"
    );
    loop {
        match raw.packet().await {
            Some(Packet::Publish(publish)) => {
                assert_eq!(publish.topic, topic);
                assert_eq!(publish.payload.as_ref(), b"from 3.1");
                break;
            }
            Some(_) => continue,
            None => panic!("the 3.1 subscriber was disconnected"),
        }
    }
    app.stop().await;
}
