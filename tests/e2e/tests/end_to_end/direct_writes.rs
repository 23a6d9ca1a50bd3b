//! Direct writes: a QoS 0 message to a plain TCP subscriber whose queue is empty and whose
//! connection is writing nothing is written to its socket by the publisher's connection;
//! everything else goes through the subscriber's queue. Neither path may reorder the
//! messages of a topic, lose one, or cut a packet (a message, a PUBACK's answer, a
//! PINGRESP) in two, also when the subscriber's socket fills up part way through a
//! message. Inside a virtual broker, where client ids and topics are free.

use crate::virtual_brokers::create_broker;
use iotcore_codec::{Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};

/// Messages per protocol version; with [`PAYLOAD`] some 12 MB, more than the socket
/// buffers of a loopback connection hold, so the broker's writes to the subscriber that
/// does not read yet fill its socket.
const MESSAGES: usize = 300;
const PAYLOAD: usize = 40 * 1024;
/// Every this many messages one is published at QoS 1: it always goes through the queue.
const QOS1_EVERY: usize = 7;

/// The payload of message `seq`: its number first, then a filler of its own letter, of a
/// length that differs from message to message.
fn payload(seq: usize) -> Vec<u8> {
    let mut payload = format!("{seq:06}:").into_bytes();
    let letter = b'a' + u8::try_from(seq % 26).unwrap_or(0);
    payload.resize(PAYLOAD - (seq % 7) * 1000, letter);
    payload
}

fn qos_of(seq: usize) -> QoS {
    if seq.is_multiple_of(QOS1_EVERY) {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    }
}

/// A subscriber that does not read while a publisher sends QoS 0 messages with QoS 1 ones
/// among them gets every message, whole and in publish order, once it reads, with a
/// PINGRESP for each of its PINGREQs in between; in MQTT 3.1.1 and 5.
#[tokio::test]
async fn direct_and_queued_messages_keep_their_order_through_a_full_socket() {
    // Room in the subscriber's queue for every message: none is dropped.
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_OUTBOUND_QUEUE", "1000")]).await;
    let (id, password) = create_broker(&app, "direct").await;
    let vb = Device {
        id,
        registry_id: String::new(),
        password,
    };
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let topic = format!("direct/{version:?}");
        let mut sub = Raw::connect_as(app.mqtt, version, &format!("sub-{version:?}"), &vb, 0).await;
        assert_eq!(sub.subscribe_qos1(&topic).await, ReasonCode::GRANTED_QOS_1);
        // One message first, read at once: the subscriber's connection has received
        // before, as a live subscriber has.
        let mut publisher =
            Raw::connect_as(app.mqtt, version, &format!("pub-{version:?}"), &vb, 0).await;
        assert_eq!(
            publisher.publish_qos1(&topic, b"first").await,
            ReasonCode::SUCCESS
        );
        match sub.packet().await {
            Some(Packet::Publish(first)) => {
                assert_eq!(&first.payload[..], b"first");
                ack(&mut sub, &first).await;
            }
            other => panic!("{version:?}: expected the first PUBLISH, got {other:?}"),
        }

        for seq in 0..MESSAGES {
            let qos = qos_of(seq);
            publisher
                .send(&Packet::Publish(Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: topic.clone(),
                    packet_id: (qos != QoS::AtMostOnce)
                        .then(|| u16::try_from(seq + 1).unwrap_or(1)),
                    payload: payload(seq).into(),
                    properties: Properties::default(),
                }))
                .await;
        }
        // Answered after every message before it was routed.
        assert_eq!(
            publisher
                .publish_qos1(&format!("{topic}/end"), b"end")
                .await,
            ReasonCode::SUCCESS
        );

        let mut pings = 0;
        let mut pongs = 0;
        let mut seq = 0;
        while seq < MESSAGES || pongs < pings {
            match sub.packet().await {
                Some(Packet::Publish(publish)) => {
                    assert!(seq < MESSAGES, "{version:?}: more messages than published");
                    assert_eq!(publish.topic, topic);
                    assert_eq!(publish.qos, qos_of(seq), "{version:?}: message {seq}");
                    assert!(
                        publish.payload[..] == payload(seq)[..],
                        "{version:?}: message {seq} whole and in order, got {:?}",
                        String::from_utf8_lossy(&publish.payload[..publish.payload.len().min(8)])
                    );
                    ack(&mut sub, &publish).await;
                    seq += 1;
                    if seq.is_multiple_of(10) {
                        sub.send(&Packet::PingReq).await;
                        pings += 1;
                    }
                }
                Some(Packet::PingResp) => pongs += 1,
                other => panic!("{version:?}: expected PUBLISH or PINGRESP, got {other:?}"),
            }
        }
        assert_eq!(pongs, pings, "{version:?}: a PINGRESP for every PINGREQ");
    }
    app.stop().await;
}

async fn ack(sub: &mut Raw, publish: &Publish) {
    if let Some(packet_id) = publish.packet_id {
        sub.send(&Packet::PubAck(PubAck {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }))
        .await;
    }
}
