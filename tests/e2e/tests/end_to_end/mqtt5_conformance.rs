//! MQTT 5 behaviours checked packet by packet with a raw client, mostly inside a virtual
//! broker (free topics): a reason code on every acknowledgement, the subscription options,
//! what CONNACK assigns and announces, the client's Maximum Packet Size, message expiry and
//! the order of messages across QoS levels and redelivery.

use crate::sessions::{connect, next_publish};
use crate::virtual_brokers::create_broker;
use iotcore_codec::{
    Connect, Packet, Properties, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};

/// A virtual broker's credential, usable with any client id and any topic.
async fn broker_credential(app: &TestApp) -> Device {
    let (id, password) = create_broker(app, "conformance").await;
    Device {
        id,
        registry_id: String::new(),
        password,
    }
}

async fn client(app: &TestApp, who: &Device, client_id: &str) -> Raw {
    Raw::connect_as(app.mqtt, ProtocolVersion::V5, client_id, who, 60).await
}

fn options(
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    }
}

async fn subscribe(
    raw: &mut Raw,
    packet_id: u16,
    filters: &[(&str, SubscriptionOptions)],
) -> Vec<ReasonCode> {
    let filters = filters
        .iter()
        .map(|(filter, options)| ((*filter).to_owned(), *options))
        .collect();
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id,
        filters,
        properties: Properties::default(),
    }))
    .await;
    loop {
        match raw.packet().await {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.packet_id, packet_id);
                return ack.reasons;
            }
            Some(_) => continue,
            None => panic!("closed while waiting for SUBACK"),
        }
    }
}

fn publish(topic: &str, qos: QoS, packet_id: u16, retain: bool, payload: &str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        payload: payload.to_owned().into(),
        properties: Properties::default(),
    })
}

fn puback(packet_id: u16) -> Packet {
    Packet::PubAck(PubAck {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    })
}

/// The next packet, which must be there.
async fn next(raw: &mut Raw) -> Packet {
    raw.packet()
        .await
        .expect("the broker closed the connection")
}

/// MQTT 5 reason codes on every acknowledgement: SUBACK one per filter in order
/// (MQTT-3.9.3-1, granted QoS or 0x8F / 0x87), UNSUBACK one per filter (MQTT-3.11.3-1,
/// 0x00 or 0x11), PUBACK (MQTT-3.4.2-1, 0x00 or 0x87), PUBREC / PUBREL / PUBCOMP of both
/// directions (MQTT-3.5.2-1, MQTT-3.6.2-1, MQTT-3.7.2-1, PUBCOMP 0x92 for an unknown
/// packet id), and a DISCONNECT from the server with a reason code and a reason string
/// (MQTT-3.14.2-1).
#[tokio::test]
async fn every_acknowledgement_carries_a_reason_code() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut sub = client(&app, &vb, "sub").await;
    let qos1 = options(QoS::AtLeastOnce, false, false, 0);
    let reasons = subscribe(
        &mut sub,
        1,
        &[
            ("acks/0", options(QoS::AtMostOnce, false, false, 0)),
            ("acks/1", qos1),
            ("acks/2", options(QoS::ExactlyOnce, false, false, 0)),
            ("acks/#/bad", qos1),
        ],
    )
    .await;
    assert_eq!(
        reasons,
        vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::TOPIC_FILTER_INVALID
        ]
    );

    let mut publisher = client(&app, &vb, "pub").await;
    assert_eq!(
        publisher.publish_qos1("acks/1", b"one").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut sub).await;
    assert_eq!((got.topic.as_str(), got.qos), ("acks/1", QoS::AtLeastOnce));
    sub.send(&puback(got.packet_id.unwrap_or(0))).await;

    // QoS 2 in: PUBREC 0x00, PUBCOMP 0x00; a PUBREL for an unknown id: PUBCOMP 0x92.
    publisher
        .send(&publish("acks/2", QoS::ExactlyOnce, 20, false, "two"))
        .await;
    match next(&mut publisher).await {
        Packet::PubRec(rec) => assert_eq!((rec.packet_id, rec.reason), (20, ReasonCode::SUCCESS)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    for (packet_id, expected) in [
        (20, ReasonCode::SUCCESS),
        (21, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
    ] {
        publisher
            .send(&Packet::PubRel(PubRel {
                packet_id,
                reason: ReasonCode::SUCCESS,
                properties: Properties::default(),
            }))
            .await;
        match next(&mut publisher).await {
            Packet::PubComp(comp) => {
                assert_eq!((comp.packet_id, comp.reason), (packet_id, expected))
            }
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
    }

    // QoS 2 out: the subscriber's PUBREC is answered with PUBREL 0x00.
    let got = next_publish(&mut sub).await;
    assert_eq!((got.topic.as_str(), got.qos), ("acks/2", QoS::ExactlyOnce));
    let packet_id = got.packet_id.unwrap_or(0);
    sub.send(&Packet::PubRec(PubRec {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }))
    .await;
    match next(&mut sub).await {
        Packet::PubRel(rel) => assert_eq!(
            (rel.packet_id, rel.reason),
            (packet_id, ReasonCode::SUCCESS)
        ),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.send(&Packet::PubComp(PubComp {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }))
    .await;

    sub.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec!["acks/1".into(), "acks/never".into()],
        properties: Properties::default(),
    }))
    .await;
    match next(&mut sub).await {
        Packet::UnsubAck(ack) => {
            assert_eq!(ack.packet_id, 2);
            assert_eq!(
                ack.reasons,
                vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }

    // A device outside its rights: PUBACK, PUBREC and SUBACK 0x87.
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let mut limited = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    assert_eq!(
        limited.publish_qos1("free/topic", b"no").await,
        ReasonCode::NOT_AUTHORIZED
    );
    limited
        .send(&publish("free/topic", QoS::ExactlyOnce, 30, false, "no"))
        .await;
    match next(&mut limited).await {
        Packet::PubRec(rec) => assert_eq!(
            (rec.packet_id, rec.reason),
            (30, ReasonCode::NOT_AUTHORIZED)
        ),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    assert_eq!(
        limited.subscribe_qos1("free/#").await,
        ReasonCode::NOT_AUTHORIZED
    );

    // MQTT-3.1.0-2: a second CONNECT is a protocol error, said with a code and in words.
    let connect: Connect = Raw::connect_packet(ProtocolVersion::V5, &device.id, &device, 60);
    limited.send(&Packet::Connect(connect)).await;
    match next(&mut limited).await {
        Packet::Disconnect(d) => {
            assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
            assert_eq!(
                d.properties.reason_string.as_deref(),
                Some("second CONNECT")
            );
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(limited.packet().await.is_none());
    app.stop().await;
}

/// Subscription options: No Local (MQTT-3.8.3-3: never one's own messages), Retain As
/// Published (MQTT-3.3.1-12: RETAIN 0 when forwarding with it off; MQTT-3.3.1-13: as
/// published with it on), Retain Handling (MQTT-3.3.1-9: 0 sends retained messages on
/// subscribe, with RETAIN 1; MQTT-3.3.1-10: 1 only for a new subscription; MQTT-3.3.1-11:
/// 2 never). Where nothing may arrive, a later message on the same subscription arriving
/// first shows it.
#[tokio::test]
async fn no_local_retain_as_published_and_retain_handling() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut p = client(&app, &vb, "p").await;
    assert_eq!(
        p.publish_qos1_retained("opt/x", b"kept").await,
        ReasonCode::SUCCESS
    );

    let mut a = client(&app, &vb, "a").await;
    let as_published = options(QoS::AtLeastOnce, false, true, 0);
    assert_eq!(
        subscribe(&mut a, 1, &[("opt/#", as_published)]).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    let retained = next_publish(&mut a).await;
    assert_eq!((retained.topic.as_str(), retained.retain), ("opt/x", true));
    a.send(&puback(retained.packet_id.unwrap_or(0))).await;
    let only_new = options(QoS::AtLeastOnce, false, true, 1);
    assert_eq!(
        subscribe(&mut a, 2, &[("opt/#", only_new)]).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );

    let mut b = client(&app, &vb, "b").await;
    let never = options(QoS::AtLeastOnce, false, false, 2);
    assert_eq!(
        subscribe(&mut b, 1, &[("opt/#", never)]).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    let no_local = options(QoS::AtLeastOnce, true, false, 2);
    assert_eq!(
        subscribe(&mut p, 1, &[("opt/#", no_local)]).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );

    assert_eq!(
        p.publish_qos1_retained("opt/y", b"live").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut a).await;
    assert_eq!(
        (got.topic.as_str(), got.retain),
        ("opt/y", true),
        "retain as published; no second retained opt/x"
    );
    let got = next_publish(&mut b).await;
    assert_eq!(
        (got.topic.as_str(), got.retain),
        ("opt/y", false),
        "RETAIN cleared; no retained opt/x"
    );
    b.send(&puback(got.packet_id.unwrap_or(0))).await;

    assert_eq!(
        b.publish_qos1("opt/marker", b"m").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut p).await;
    assert_eq!(
        got.topic, "opt/marker",
        "p got neither its own opt/y nor the retained opt/x"
    );
    app.stop().await;
}

/// CONNACK: an empty client id is assigned one (MQTT-3.2.2-16, Assigned Client
/// Identifier), a keep alive of 0 or above `mqtt.max_keep_alive_secs` is answered with
/// Server Keep Alive (MQTT-3.2.2-21), and the server's limits are announced (Receive
/// Maximum, Maximum Packet Size, Topic Alias Maximum, MQTT-3.2.2-x properties).
#[tokio::test]
async fn connack_assigns_the_client_id_and_announces_the_server_limits() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let connect = Raw::connect_packet(ProtocolVersion::V5, "", &vb, 0);
    let (_raw, answer) = Raw::handshake(app.mqtt, connect).await;
    let Some(Packet::ConnAck(connack)) = answer else {
        panic!("expected CONNACK, got {answer:?}");
    };
    assert_eq!(connack.code, 0);
    let properties = connack.properties;
    assert!(
        properties
            .assigned_client_identifier
            .as_deref()
            .is_some_and(|id| !id.is_empty()),
        "{properties:?}"
    );
    assert_eq!(properties.server_keep_alive, Some(3600));
    assert_eq!(properties.receive_maximum, Some(64));
    assert!(properties.maximum_packet_size.is_some_and(|max| max > 0));
    assert!(properties.topic_alias_maximum.is_some());
    app.stop().await;
}

/// MQTT-3.1.2-24/25: a message larger than the client's Maximum Packet Size is not sent
/// to it (and the client is not disconnected); smaller ones still are.
#[tokio::test]
async fn messages_over_the_clients_maximum_packet_size_are_not_sent() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut connect = Raw::connect_packet(ProtocolVersion::V5, "small", &vb, 60);
    connect.properties.maximum_packet_size = Some(256);
    let (mut small, answer) = Raw::handshake(app.mqtt, connect).await;
    assert!(
        matches!(answer, Some(Packet::ConnAck(ref c)) if c.code == 0),
        "{answer:?}"
    );
    let qos1 = options(QoS::AtLeastOnce, false, false, 0);
    assert_eq!(
        subscribe(&mut small, 1, &[("size/#", qos1)]).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    let mut publisher = client(&app, &vb, "pub").await;
    let big = vec![b'x'; 1024];
    assert_eq!(
        publisher.publish_qos1("size/big", &big).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publisher.publish_qos1("size/small", b"fits").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut small).await;
    assert_eq!(got.topic, "size/small");
    app.stop().await;
}

/// MQTT-3.3.2-5: a message whose expiry passed while it waited for an absent session is
/// not delivered; one without expiry is.
#[tokio::test]
async fn a_message_that_expired_while_queued_is_not_delivered() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let (mut sub, _) = connect(&app, ProtocolVersion::V5, &vb, false, Some(300)).await;
    let qos1 = options(QoS::AtLeastOnce, false, false, 0);
    assert_eq!(
        subscribe(&mut sub, 1, &[("exp/#", qos1)]).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    crate::sessions::disconnect(sub).await;

    let mut publisher = client(&app, &vb, "pub").await;
    let mut short = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "exp/short".into(),
        packet_id: Some(5),
        payload: "gone".into(),
        properties: Properties::default(),
    };
    short.properties.message_expiry_interval = Some(1);
    publisher.send(&Packet::Publish(short)).await;
    assert!(matches!(next(&mut publisher).await, Packet::PubAck(_)));
    // The second passes; this waits for the expiry, not for the broker.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        publisher.publish_qos1("exp/long", b"kept").await,
        ReasonCode::SUCCESS
    );

    let (mut sub, present) = connect(&app, ProtocolVersion::V5, &vb, false, Some(300)).await;
    assert!(present);
    let got = next_publish(&mut sub).await;
    assert_eq!(got.topic, "exp/long", "the expired message was dropped");
    app.stop().await;
}

/// MQTT-4.6.0-2..4 and MQTT-4.6.0-6: messages of one topic reach a subscriber in the
/// order they were published, whatever their QoS (1 and 2 interleaved here), and
/// MQTT-4.6.0-1 with MQTT-4.4.0-1: unacknowledged ones are sent again on reconnect, with
/// DUP set, in the same order.
#[tokio::test]
async fn messages_of_a_topic_keep_their_order_across_qos_and_redelivery() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let (mut sub, _) = connect(&app, ProtocolVersion::V5, &vb, false, Some(300)).await;
    let qos2 = options(QoS::ExactlyOnce, false, false, 0);
    assert_eq!(
        subscribe(&mut sub, 1, &[("order/#", qos2)]).await,
        vec![ReasonCode::GRANTED_QOS_2]
    );

    let mut publisher = client(&app, &vb, "pub").await;
    let sent: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for (i, payload) in sent.iter().enumerate() {
        let packet_id = u16::try_from(i + 1).unwrap_or(1);
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publisher
            .send(&publish("order/t", qos, packet_id, false, payload))
            .await;
        match next(&mut publisher).await {
            Packet::PubAck(_) => {}
            Packet::PubRec(rec) => {
                publisher
                    .send(&Packet::PubRel(PubRel {
                        packet_id: rec.packet_id,
                        reason: ReasonCode::SUCCESS,
                        properties: Properties::default(),
                    }))
                    .await;
                assert!(matches!(next(&mut publisher).await, Packet::PubComp(_)));
            }
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
    }

    let mut first = Vec::new();
    for _ in &sent {
        let got = next_publish(&mut sub).await;
        assert!(!got.dup);
        first.push(String::from_utf8_lossy(&got.payload).into_owned());
    }
    assert_eq!(first, sent, "in publish order");
    // Nothing acknowledged; the connection is lost.
    drop(sub);

    let (mut sub, present) = connect(&app, ProtocolVersion::V5, &vb, false, Some(300)).await;
    assert!(present);
    let mut again = Vec::new();
    for _ in &sent {
        let got = next_publish(&mut sub).await;
        assert!(got.dup, "MQTT-3.3.1-1: DUP on redelivery");
        again.push(String::from_utf8_lossy(&got.payload).into_owned());
    }
    assert_eq!(again, sent, "redelivered in the original order");
    app.stop().await;
}

/// MQTT-3.3.4-6: a Subscription Identifier is for the server to send. A PUBLISH from a
/// client that carries one is a protocol error: DISCONNECT 0x82 and the close, at any QoS,
/// and the message goes to nobody.
#[tokio::test]
async fn a_publish_with_a_subscription_identifier_is_a_protocol_error() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut watcher = client(&app, &vb, "watcher").await;
    assert_eq!(
        subscribe(
            &mut watcher,
            1,
            &[("sid/#", options(QoS::AtLeastOnce, false, false, 0))]
        )
        .await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut offender = client(&app, &vb, "offender").await;
        let mut forged = publish("sid/forged", qos, 1, false, "forged");
        if let Packet::Publish(publish) = &mut forged {
            publish.properties.subscription_identifiers = vec![7];
        }
        offender.send(&forged).await;
        match offender.packet().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR, "{qos:?}")
            }
            other => panic!("{qos:?}: expected DISCONNECT 0x82, got {other:?}"),
        }
        assert!(offender.packet().await.is_none(), "{qos:?}: closed");
    }
    // The marker, published after the forged messages, is the first the watcher gets.
    let mut publisher = client(&app, &vb, "publisher").await;
    publisher
        .send(&publish("sid/marker", QoS::AtLeastOnce, 1, false, "m"))
        .await;
    match next(&mut publisher).await {
        Packet::PubAck(ack) => assert_eq!(ack.reason, ReasonCode::SUCCESS),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(next_publish(&mut watcher).await.topic, "sid/marker");
    app.stop().await;
}

/// MQTT-3.8.3-4: No Local on a shared subscription is a protocol error; the SUBSCRIBE is
/// answered with DISCONNECT 0x82 and nothing of it is granted.
#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut offender = client(&app, &vb, "offender").await;
    let shared = options(QoS::AtLeastOnce, true, false, 0);
    offender
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("$share/g/nl/#".to_owned(), shared)],
            properties: Properties::default(),
        }))
        .await;
    match offender.packet().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR),
        other => panic!("expected DISCONNECT 0x82, got {other:?}"),
    }
    assert!(offender.packet().await.is_none(), "closed");
    // No Local on a plain subscription is fine.
    let mut plain = client(&app, &vb, "plain").await;
    assert_eq!(
        subscribe(
            &mut plain,
            1,
            &[("nl/#", options(QoS::AtLeastOnce, true, false, 0))]
        )
        .await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    app.stop().await;
}
