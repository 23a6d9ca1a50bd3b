//! What the broker owes a subscriber while acknowledgements are outstanding: the client's
//! Receive Maximum holds back PUBLISH packets only, a delivery started before UNSUBSCRIBE
//! is completed, and a shared subscription member keeps what it was sent, refused or not.
//! MQTT 5.0 numbering, inside a virtual broker (free client ids and topics), raw clients.

use crate::sessions::next_publish;
use crate::virtual_brokers::create_broker;
use iotcore_codec::{
    Packet, Properties, ProtocolVersion, PubAck, PubComp, PubRec, QoS, ReasonCode, Subscribe,
    SubscriptionOptions, Unsubscribe,
};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};

async fn broker_credential(app: &TestApp) -> Device {
    let (id, password) = create_broker(app, "acks").await;
    Device {
        id,
        registry_id: String::new(),
        password,
    }
}

async fn client(app: &TestApp, vb: &Device, client_id: &str) -> Raw {
    Raw::connect_as(app.mqtt, ProtocolVersion::V5, client_id, vb, 60).await
}

fn puback(packet_id: Option<u16>, reason: ReasonCode) -> Packet {
    Packet::PubAck(PubAck {
        packet_id: packet_id.unwrap_or(0),
        reason,
        properties: Properties::default(),
    })
}

/// MQTT-3.3.4-9 and MQTT-4.9.0-2: with Receive Maximum 1, one unacknowledged QoS 1
/// message holds back the next PUBLISH; MQTT-3.3.4-10 and MQTT-4.9.0-3: not PINGRESP or
/// SUBACK, which still come at once. The PUBACK lets the next message go.
#[tokio::test]
async fn a_full_receive_window_holds_back_publishes_only() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut connect = Raw::connect_packet(ProtocolVersion::V5, "narrow", &vb, 60);
    connect.properties.receive_maximum = Some(1);
    let (mut sub, answer) = Raw::handshake(app.mqtt, connect).await;
    assert!(
        matches!(answer, Some(Packet::ConnAck(ref c)) if c.code == 0),
        "{answer:?}"
    );
    assert_eq!(sub.subscribe_qos1("w/#").await, ReasonCode::GRANTED_QOS_1);
    let mut publisher = client(&app, &vb, "pub").await;
    for topic in ["w/1", "w/2"] {
        assert_eq!(
            publisher.publish_qos1(topic, b"x").await,
            ReasonCode::SUCCESS
        );
    }
    let first = next_publish(&mut sub).await;
    assert_eq!(first.topic, "w/1");

    sub.send(&Packet::PingReq).await;
    assert!(
        matches!(sub.packet().await, Some(Packet::PingResp)),
        "PINGRESP, not the second PUBLISH"
    );
    assert_eq!(
        sub.subscribe_qos1("other/#").await,
        ReasonCode::GRANTED_QOS_1,
        "SUBACK while the window is full"
    );

    sub.send(&puback(first.packet_id, ReasonCode::SUCCESS))
        .await;
    assert_eq!(next_publish(&mut sub).await.topic, "w/2");
    app.stop().await;
}

/// MQTT-3.10.4-3: a QoS 2 delivery that started before the UNSUBSCRIBE is completed: the
/// subscriber's PUBREC is still answered with PUBREL.
#[tokio::test]
async fn a_delivery_started_before_unsubscribe_is_completed() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut sub = client(&app, &vb, "sub").await;
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    };
    sub.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![("y/#".into(), options)],
        properties: Properties::default(),
    }))
    .await;
    assert!(matches!(sub.packet().await, Some(Packet::SubAck(_))));

    let mut publisher = client(&app, &vb, "pub").await;
    publisher
        .send(&Packet::Publish(iotcore_codec::Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "y/1".into(),
            packet_id: Some(40),
            payload: "two".into(),
            properties: Properties::default(),
        }))
        .await;
    assert!(matches!(publisher.packet().await, Some(Packet::PubRec(_))));
    let got = next_publish(&mut sub).await;
    assert_eq!((got.topic.as_str(), got.qos), ("y/1", QoS::ExactlyOnce));
    let packet_id = got.packet_id.unwrap_or(0);
    sub.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 4,
        filters: vec!["y/#".into()],
        properties: Properties::default(),
    }))
    .await;
    assert!(matches!(sub.packet().await, Some(Packet::UnsubAck(_))));
    sub.send(&Packet::PubRec(PubRec {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }))
    .await;
    match sub.packet().await {
        Some(Packet::PubRel(rel)) => assert_eq!(rel.packet_id, packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.send(&Packet::PubComp(PubComp {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }))
    .await;
    sub.send(&Packet::PingReq).await;
    assert!(matches!(sub.packet().await, Some(Packet::PingResp)));
    app.stop().await;
}

/// MQTT-4.8.2-6: a shared subscription member that answers with PUBACK 0x80 ends that
/// message's delivery: it is not offered to the other member. Messages published after it
/// are read from both members until all have arrived; the refused one is not among them.
#[tokio::test]
async fn a_message_refused_by_a_shared_member_goes_to_no_other_member() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut a = client(&app, &vb, "a").await;
    let mut b = client(&app, &vb, "b").await;
    for member in [&mut a, &mut b] {
        assert_eq!(
            member.subscribe_qos1("$share/g/t/#").await,
            ReasonCode::GRANTED_QOS_1
        );
    }
    let mut publisher = client(&app, &vb, "pub").await;
    assert_eq!(
        publisher.publish_qos1("t/refused", b"x").await,
        ReasonCode::SUCCESS
    );
    let (got, member) = tokio::select! {
        got = next_publish(&mut a) => (got, 'a'),
        got = next_publish(&mut b) => (got, 'b'),
    };
    assert_eq!(got.topic, "t/refused");
    let refusal = puback(got.packet_id, ReasonCode::UNSPECIFIED_ERROR);
    match member {
        'a' => a.send(&refusal).await,
        _ => b.send(&refusal).await,
    }

    let later = ["t/2", "t/3", "t/4"];
    for topic in later {
        assert_eq!(
            publisher.publish_qos1(topic, b"x").await,
            ReasonCode::SUCCESS
        );
    }
    let mut seen = Vec::new();
    while seen.len() < later.len() {
        let (publish, member) = tokio::select! {
            got = next_publish(&mut a) => (got, 'a'),
            got = next_publish(&mut b) => (got, 'b'),
        };
        assert_ne!(
            publish.topic, "t/refused",
            "offered again to member {member}"
        );
        let ack = puback(publish.packet_id, ReasonCode::SUCCESS);
        match member {
            'a' => a.send(&ack).await,
            _ => b.send(&ack).await,
        }
        seen.push(publish.topic);
    }
    seen.sort();
    assert_eq!(seen, later);
    app.stop().await;
}

/// A shared subscription member with a persistent session (Session Expiry 300).
async fn persistent_member(app: &TestApp, vb: &Device, client_id: &str) -> (Raw, bool) {
    let mut connect = Raw::connect_packet(ProtocolVersion::V5, client_id, vb, 60);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(300);
    match Raw::handshake(app.mqtt, connect).await {
        (raw, Some(Packet::ConnAck(ack))) if ack.code == 0 => (raw, ack.session_present),
        (_, other) => panic!("CONNECT refused: {other:?}"),
    }
}

/// MQTT-4.8.2-4 and -5: a QoS 1 message in flight to a shared subscription member whose
/// connection is lost stays with that member's session: it is not given to the other
/// member (whose own marker, published afterwards, arrives first), and it is completed,
/// with DUP set, when the member comes back.
#[tokio::test]
async fn a_shared_message_in_flight_stays_with_its_member() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let (mut a, _) = persistent_member(&app, &vb, "a").await;
    let (mut b, _) = persistent_member(&app, &vb, "b").await;
    for (member, marker) in [(&mut a, "m/a"), (&mut b, "m/b")] {
        for filter in ["$share/g/t/#", marker] {
            assert_eq!(
                member.subscribe_qos1(filter).await,
                ReasonCode::GRANTED_QOS_1
            );
        }
    }
    let mut publisher = client(&app, &vb, "pub").await;
    assert_eq!(
        publisher.publish_qos1("t/in-flight", b"x").await,
        ReasonCode::SUCCESS
    );
    let (got, member) = tokio::select! {
        got = next_publish(&mut a) => (got, "a"),
        got = next_publish(&mut b) => (got, "b"),
    };
    assert_eq!(got.topic, "t/in-flight");
    let (lost, mut other, other_marker) = match member {
        "a" => (a, b, "m/b"),
        _ => (b, a, "m/a"),
    };
    drop(lost); // without a PUBACK

    assert_eq!(
        publisher.publish_qos1(other_marker, b"m").await,
        ReasonCode::SUCCESS
    );
    let first = next_publish(&mut other).await;
    assert_eq!(first.topic, other_marker, "the other member got it");

    let (mut back, present) = persistent_member(&app, &vb, member).await;
    assert!(present);
    let again = next_publish(&mut back).await;
    assert_eq!((again.topic.as_str(), again.dup), ("t/in-flight", true));
    assert_eq!(again.packet_id, got.packet_id);
    app.stop().await;
}

/// MQTT-2.2.1-4: the QoS 1 messages the broker has in flight to a client each have a
/// packet identifier of their own, never 0.
#[tokio::test]
async fn messages_in_flight_have_distinct_non_zero_packet_ids() {
    let app = TestApp::spawn().await;
    let vb = broker_credential(&app).await;
    let mut sub = client(&app, &vb, "sub").await;
    assert_eq!(sub.subscribe_qos1("p/#").await, ReasonCode::GRANTED_QOS_1);
    let mut publisher = client(&app, &vb, "pub").await;
    for n in 0..20 {
        let topic = format!("p/{n}");
        assert_eq!(
            publisher.publish_qos1(&topic, b"x").await,
            ReasonCode::SUCCESS
        );
    }
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..20 {
        // None is acknowledged, so all twenty are in flight together.
        let got = next_publish(&mut sub).await;
        let id = got.packet_id.unwrap_or(0);
        assert_ne!(id, 0, "{got:?}");
        assert!(ids.insert(id), "packet id {id} used twice");
    }
    app.stop().await;
}
