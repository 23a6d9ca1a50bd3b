//! Byte vectors from the MQTT 3.1, 3.1.1 and 5.0 specifications and common captures: each
//! decodes to the expected structure and the structure encodes back to the same bytes.

use bytes::{Bytes, BytesMut};
use iotcore_codec::*;

const MAX: usize = 1 << 16;

fn assert_vector(wire: &[u8], version: ProtocolVersion, expected: Packet) {
    let mut buf = BytesMut::from(wire);
    assert_eq!(decode(&mut buf, version, MAX), Ok(Some(expected.clone())));
    assert!(buf.is_empty(), "the whole packet is consumed");
    let mut out = BytesMut::new();
    expected.encode(version, &mut out).unwrap();
    assert_eq!(&out[..], wire, "encoding gives the same bytes");
    assert_eq!(expected.encoded_len(version), Ok(wire.len()));
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

#[test]
fn connect_v3_1_1_minimal_capture() {
    let wire = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test";
    let expected = connect(ProtocolVersion::V3_1_1, "test");
    // The session's version does not matter for CONNECT: the packet carries its own.
    assert_vector(wire, ProtocolVersion::V5, Packet::Connect(expected.clone()));
    assert_vector(wire, ProtocolVersion::V3_1_1, Packet::Connect(expected));
}

#[test]
fn connect_v3_1_uses_mqisdp_and_level_3() {
    let wire = b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x04test";
    let expected = connect(ProtocolVersion::V3_1, "test");
    assert_vector(wire, ProtocolVersion::V3_1, Packet::Connect(expected));
}

/// MQTT 3.1.1 §3.1.2.10, figure 3.6: flags 0xCE (user name, password, will QoS 1, will,
/// clean session) and keep alive 10.
#[test]
fn connect_v3_1_1_specification_example_with_will_and_credentials() {
    let mut wire = b"\x10\x2a\x00\x04MQTT\x04\xce\x00\x0a".to_vec();
    wire.extend_from_slice(b"\x00\x03dev\x00\x06a/will\x00\x04gone\x00\x04user\x00\x04pass");
    wire[1] = (wire.len() - 2) as u8;
    let expected = Connect {
        keep_alive: 10,
        will: Some(Will {
            topic: "a/will".into(),
            payload: bytes("gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        username: Some("user".into()),
        password: Some(bytes("pass")),
        ..connect(ProtocolVersion::V3_1_1, "dev")
    };
    assert_vector(&wire, ProtocolVersion::V3_1_1, Packet::Connect(expected));
}

#[test]
fn connect_v5_with_properties_will_properties_and_password_only() {
    let mut wire = b"\x10\x00\x00\x04MQTT\x05\x6e\x00\x3c".to_vec();
    // Properties: session expiry 3600, receive maximum 20.
    wire.extend_from_slice(b"\x08\x11\x00\x00\x0e\x10\x21\x00\x14");
    wire.extend_from_slice(b"\x00\x02c1");
    // Will properties: will delay 10; will topic, will payload.
    wire.extend_from_slice(b"\x05\x18\x00\x00\x00\x0a\x00\x01w\x00\x03bye");
    // MQTT 5 allows a password without a user name (§3.1.2.9).
    wire.extend_from_slice(b"\x00\x01p");
    wire[1] = (wire.len() - 2) as u8;
    let expected = Connect {
        will: Some(Will {
            topic: "w".into(),
            payload: bytes("bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(10),
                ..Properties::default()
            },
        }),
        password: Some(bytes("p")),
        properties: Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(20),
            ..Properties::default()
        },
        ..connect(ProtocolVersion::V5, "c1")
    };
    assert_vector(&wire, ProtocolVersion::V5, Packet::Connect(expected));
}

#[test]
fn connect_protocol_is_read_from_the_first_bytes() {
    let v5 = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00";
    assert_eq!(connect_protocol(v5), Some(ProtocolVersion::V5));
    assert_eq!(
        connect_protocol(b"\x10\x12\x00\x06MQIsdp\x03"),
        Some(ProtocolVersion::V3_1)
    );
    assert_eq!(connect_protocol(b"\x10\x10\x00\x04MQTT\x07"), None);
    assert_eq!(connect_protocol(b"\x30\x10\x00\x04MQTT\x05"), None);
    assert_eq!(connect_protocol(b"\x10\x10\x00"), None);
}

#[test]
fn connack_v3_accepted_and_refused() {
    let accepted = ConnAck {
        session_present: true,
        code: connack_v3::ACCEPTED,
        properties: Properties::default(),
    };
    assert_vector(
        b"\x20\x02\x01\x00",
        ProtocolVersion::V3_1_1,
        Packet::ConnAck(accepted),
    );
    let refused = ConnAck {
        session_present: false,
        code: connack_v3::NOT_AUTHORIZED,
        properties: Properties::default(),
    };
    assert_vector(
        b"\x20\x02\x00\x05",
        ProtocolVersion::V3_1,
        Packet::ConnAck(refused),
    );
}

#[test]
fn connack_v3_1_has_no_session_present_flag() {
    // MQTT 3.1: the first byte of CONNACK is reserved, so a session kept for a 3.1 client is
    // not announced there.
    let resumed = Packet::ConnAck(ConnAck {
        session_present: true,
        code: connack_v3::ACCEPTED,
        properties: Properties::default(),
    });
    let mut out = BytesMut::new();
    resumed.encode(ProtocolVersion::V3_1, &mut out).unwrap();
    assert_eq!(&out[..], b"\x20\x02\x00\x00");
}

#[test]
fn connack_v5_with_properties() {
    let wire = b"\x20\x09\x00\x00\x06\x21\x00\x14\x22\x00\x0a";
    let expected = ConnAck {
        session_present: false,
        code: ReasonCode::SUCCESS.0,
        properties: Properties {
            receive_maximum: Some(20),
            topic_alias_maximum: Some(10),
            ..Properties::default()
        },
    };
    assert_vector(wire, ProtocolVersion::V5, Packet::ConnAck(expected));
}

#[test]
fn publish_v3_qos0_and_qos1_retained() {
    let qos0 = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a/b/c".into(),
        packet_id: None,
        payload: bytes("hello"),
        properties: Properties::default(),
    };
    assert_vector(
        b"\x30\x0c\x00\x05a/b/chello",
        ProtocolVersion::V3_1_1,
        Packet::Publish(qos0.clone()),
    );
    let qos1 = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        packet_id: Some(10),
        ..qos0
    };
    assert_vector(
        b"\x3b\x0e\x00\x05a/b/c\x00\x0ahello",
        ProtocolVersion::V3_1_1,
        Packet::Publish(qos1),
    );
}

#[test]
fn publish_v5_with_properties() {
    // Payload format indicator 1, topic alias 5, user property k=v.
    let wire = b"\x32\x14\x00\x01t\x00\x01\x0c\x01\x01\x23\x00\x05\x26\x00\x01k\x00\x01vhi";
    let expected = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: Some(1),
        payload: bytes("hi"),
        properties: Properties {
            payload_format_indicator: Some(1),
            topic_alias: Some(5),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        },
    };
    assert_vector(wire, ProtocolVersion::V5, Packet::Publish(expected));
}

#[test]
fn publish_v5_with_an_alias_may_have_an_empty_topic() {
    let wire = b"\x30\x06\x00\x00\x03\x23\x00\x05";
    let expected = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: String::new(),
        packet_id: None,
        payload: Bytes::new(),
        properties: Properties {
            topic_alias: Some(5),
            ..Properties::default()
        },
    };
    assert_vector(wire, ProtocolVersion::V5, Packet::Publish(expected));
}

#[test]
fn publish_payload_is_a_slice_of_the_receive_buffer() {
    let mut buf = BytesMut::from(&b"\x30\x0c\x00\x05a/b/chello"[..]);
    let start = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(publish))) = decode(&mut buf, ProtocolVersion::V3_1_1, MAX) else {
        panic!("expected a PUBLISH");
    };
    let payload = publish.payload.as_ptr() as usize;
    assert_eq!(
        payload,
        start + 9,
        "payload points into the input, not a copy"
    );
}

#[test]
fn publish_acks_in_both_versions() {
    let v3 = ProtocolVersion::V3_1_1;
    assert_vector(b"\x40\x02\x00\x01", v3, Packet::PubAck(PubAck::new(1)));
    assert_vector(b"\x50\x02\x00\x02", v3, Packet::PubRec(PubRec::new(2)));
    assert_vector(b"\x62\x02\x00\x03", v3, Packet::PubRel(PubRel::new(3)));
    assert_vector(b"\x70\x02\x00\x04", v3, Packet::PubComp(PubComp::new(4)));
    let v5 = ProtocolVersion::V5;
    assert_vector(b"\x40\x02\x00\x01", v5, Packet::PubAck(PubAck::new(1)));
    let no_subscribers = PubAck {
        reason: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        ..PubAck::new(1)
    };
    assert_vector(b"\x40\x03\x00\x01\x10", v5, Packet::PubAck(no_subscribers));
    let not_found = PubComp {
        reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        properties: Properties {
            reason_string: Some("gone".into()),
            ..Properties::default()
        },
        ..PubComp::new(7)
    };
    assert_vector(
        b"\x70\x0b\x00\x07\x92\x07\x1f\x00\x04gone",
        v5,
        Packet::PubComp(not_found),
    );
}

#[test]
fn v5_ack_with_reason_and_empty_property_length_decodes() {
    // A sender may spell out a zero property length; it means the same as leaving it out.
    let mut buf = BytesMut::from(&b"\x40\x04\x00\x01\x00\x00"[..]);
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V5, MAX),
        Ok(Some(Packet::PubAck(PubAck::new(1))))
    );
}

#[test]
fn subscribe_and_suback_v3() {
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![(
            "a/#".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
        )],
        properties: Properties::default(),
    };
    let v3 = ProtocolVersion::V3_1_1;
    assert_vector(
        b"\x82\x08\x00\x01\x00\x03a/#\x01",
        v3,
        Packet::Subscribe(subscribe),
    );
    let suback = SubAck {
        packet_id: 1,
        reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::V3_SUBACK_FAILURE],
        properties: Properties::default(),
    };
    assert_vector(b"\x90\x04\x00\x01\x01\x80", v3, Packet::SubAck(suback));
}

#[test]
fn subscribe_v5_with_identifier_and_all_options() {
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![(
            "a/+".into(),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )],
        properties: Properties {
            subscription_identifiers: vec![7],
            ..Properties::default()
        },
    };
    assert_vector(
        b"\x82\x0b\x00\x01\x02\x0b\x07\x00\x03a/+\x2e",
        ProtocolVersion::V5,
        Packet::Subscribe(subscribe),
    );
    let suback = SubAck {
        packet_id: 1,
        reasons: vec![ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED],
        properties: Properties::default(),
    };
    assert_vector(
        b"\x90\x04\x00\x01\x00\x9e",
        ProtocolVersion::V5,
        Packet::SubAck(suback),
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    let unsubscribe = Unsubscribe {
        packet_id: 2,
        filters: vec!["a".into()],
        properties: Properties::default(),
    };
    assert_vector(
        b"\xa2\x05\x00\x02\x00\x01a",
        ProtocolVersion::V3_1_1,
        Packet::Unsubscribe(unsubscribe.clone()),
    );
    assert_vector(
        b"\xa2\x06\x00\x02\x00\x00\x01a",
        ProtocolVersion::V5,
        Packet::Unsubscribe(unsubscribe),
    );
    let v3 = UnsubAck {
        packet_id: 2,
        reasons: Vec::new(),
        properties: Properties::default(),
    };
    assert_vector(
        b"\xb0\x02\x00\x02",
        ProtocolVersion::V3_1_1,
        Packet::UnsubAck(v3),
    );
    let v5 = UnsubAck {
        packet_id: 2,
        reasons: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: Properties::default(),
    };
    assert_vector(
        b"\xb0\x04\x00\x02\x00\x11",
        ProtocolVersion::V5,
        Packet::UnsubAck(v5),
    );
}

#[test]
fn ping_and_disconnect() {
    for version in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        assert_vector(b"\xc0\x00", version, Packet::PingReq);
        assert_vector(b"\xd0\x00", version, Packet::PingResp);
        assert_vector(
            b"\xe0\x00",
            version,
            Packet::Disconnect(Disconnect::default()),
        );
    }
    let with_will = Disconnect {
        reason: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Properties::default(),
    };
    assert_vector(
        b"\xe0\x01\x04",
        ProtocolVersion::V5,
        Packet::Disconnect(with_will),
    );
    let taken_over = Disconnect {
        reason: ReasonCode::SESSION_TAKEN_OVER,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    };
    assert_vector(
        b"\xe0\x07\x8e\x05\x11\x00\x00\x00\x00",
        ProtocolVersion::V5,
        Packet::Disconnect(taken_over),
    );
}

#[test]
fn auth_v5() {
    assert_vector(
        b"\xf0\x00",
        ProtocolVersion::V5,
        Packet::Auth(Auth::default()),
    );
    let challenge = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(b"\x01\x02")),
            ..Properties::default()
        },
    };
    assert_vector(
        b"\xf0\x0f\x18\x0d\x15\x00\x05SCRAM\x16\x00\x02\x01\x02",
        ProtocolVersion::V5,
        Packet::Auth(challenge),
    );
}

#[test]
fn v3_encoding_leaves_out_v5_fields() {
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        payload: bytes("x"),
        properties: Properties {
            content_type: Some("text/plain".into()),
            ..Properties::default()
        },
    };
    let mut out = BytesMut::new();
    Packet::Publish(publish)
        .encode(ProtocolVersion::V3_1_1, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"\x30\x04\x00\x01tx");
    let mut out = BytesMut::new();
    let disconnect = Disconnect {
        reason: ReasonCode::SERVER_SHUTTING_DOWN,
        properties: Properties::default(),
    };
    Packet::Disconnect(disconnect)
        .encode(ProtocolVersion::V3_1, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"\xe0\x00");
}
