//! Every kind of malformed or forbidden packet gives its own typed error (and never a panic),
//! and encoding refuses what cannot be put on the wire.

use bytes::{Bytes, BytesMut};
use iotcore_codec::DecodeError::*;
use iotcore_codec::*;

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn decode_err(wire: &[u8], version: ProtocolVersion) -> DecodeError {
    let mut buf = BytesMut::from(wire);
    match decode(&mut buf, version, 1 << 16) {
        Err(error) => error,
        other => panic!("expected an error for {wire:02x?}, got {other:?}"),
    }
}

/// Wraps a body in a fixed header with a one-byte remaining length.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut wire = vec![first, body.len() as u8];
    wire.extend_from_slice(body);
    wire
}

#[test]
fn reserved_fixed_header_flags_are_malformed_mqtt_2_1_3_1() {
    for (wire, version) in [
        (&b"\x60\x02\x00\x01"[..], V3),         // PUBREL must carry 0b0010
        (b"\x80\x06\x00\x01\x00\x01a\x00", V3), // SUBSCRIBE
        (b"\xa0\x05\x00\x01\x00\x01a", V5),     // UNSUBSCRIBE
        (b"\x41\x02\x00\x01", V3),              // PUBACK must carry 0
        (b"\xc1\x00", V5),                      // PINGREQ
        (b"\xe2\x00", V3),                      // DISCONNECT
        (b"\x11\x00", V3),                      // CONNECT
    ] {
        let error = decode_err(wire, version);
        assert!(
            matches!(error, InvalidHeaderFlags { .. }),
            "{wire:02x?}: {error:?}"
        );
        assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
}

#[test]
fn reserved_packet_types_are_refused() {
    assert_eq!(decode_err(b"\x00\x00", V5), ReservedPacketType(0));
    // AUTH only exists in MQTT 5.
    assert_eq!(decode_err(b"\xf0\x00", V3), ReservedPacketType(15));
    assert_eq!(
        decode_err(b"\xf0\x00", ProtocolVersion::V3_1),
        ReservedPacketType(15)
    );
}

#[test]
fn remaining_length_longer_than_four_bytes_is_malformed() {
    // Refused from the fourth length byte, before any body arrives.
    assert_eq!(
        decode_err(b"\x30\xff\xff\xff\xff", V3),
        VariableByteIntegerTooLong
    );
    assert_eq!(
        check(b"\x30\xff\xff\xff\xff\x7f", 1 << 30),
        Err(VariableByteIntegerTooLong)
    );
}

#[test]
fn non_minimal_remaining_length_is_malformed() {
    assert_eq!(
        decode_err(b"\xc0\x80\x00", V3),
        NonMinimalVariableByteInteger
    );
    assert_eq!(
        decode_err(b"\xc0\x80\x80\x00", V5),
        NonMinimalVariableByteInteger
    );
}

#[test]
fn oversize_packet_is_refused_from_its_fixed_header_alone() {
    // Only the fixed header of a 129-byte packet has arrived.
    let mut buf = BytesMut::from(&b"\x30\x7f"[..]);
    let error = decode(&mut buf, V5, 100).unwrap_err();
    assert_eq!(
        error,
        PacketTooLarge {
            size: 129,
            max: 100
        }
    );
    assert_eq!(error.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    assert_eq!(
        check(b"\x30\x7f", 100),
        Err(PacketTooLarge {
            size: 129,
            max: 100
        })
    );
    // The limit counts the fixed header: 129 bytes fit in 129.
    assert_eq!(check(b"\x30\x7f", 129), Ok(None));
}

#[test]
fn body_shorter_than_its_fields_is_truncated() {
    assert_eq!(decode_err(b"\x30\x03\x00\x05a", V3), Truncated);
    assert_eq!(decode_err(b"\x40\x01\x00", V3), Truncated);
    assert_eq!(decode_err(b"\x32\x04\x00\x01t\x00", V3), Truncated);
}

#[test]
fn trailing_bytes_after_the_content_are_malformed() {
    assert_eq!(decode_err(b"\xc0\x01\x00", V3), TrailingBytes(1));
    assert_eq!(decode_err(b"\xd0\x02\x00\x00", V5), TrailingBytes(2));
    assert_eq!(decode_err(b"\x40\x03\x00\x01\x00", V3), TrailingBytes(1));
    assert_eq!(decode_err(b"\xe0\x01\x00", V3), TrailingBytes(1));
    assert_eq!(decode_err(b"\xb0\x03\x00\x01\x00", V3), TrailingBytes(1));
    assert_eq!(decode_err(b"\x20\x03\x00\x00\x00", V3), TrailingBytes(1));
    let connect = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x04testX";
    assert_eq!(decode_err(connect, V3), TrailingBytes(1));
    // An MQTT 5 ack whose properties end before the packet does.
    assert_eq!(
        decode_err(b"\x40\x05\x00\x01\x00\x00\xff", V5),
        TrailingBytes(1)
    );
}

#[test]
fn invalid_utf8_in_strings_is_malformed_mqtt_1_5_4_1() {
    assert_eq!(
        decode_err(&packet(0x30, b"\x00\x02\xc3\x28x"), V3),
        InvalidUtf8
    );
    // UTF-16 surrogates encoded as UTF-8 are invalid too.
    assert_eq!(
        decode_err(&packet(0x30, b"\x00\x03\xed\xa0\x80"), V3),
        InvalidUtf8
    );
    let connect = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02\xff\xfe";
    assert_eq!(decode_err(connect, V3), InvalidUtf8);
    assert_eq!(InvalidUtf8.reason_code(), ReasonCode::MALFORMED_PACKET);
}

#[test]
fn null_character_in_strings_is_malformed_mqtt_1_5_4_2() {
    assert_eq!(
        decode_err(&packet(0x30, b"\x00\x03a\x00b"), V3),
        NullCharacter
    );
    assert_eq!(
        decode_err(&packet(0x82, b"\x00\x01\x00\x01\x00\x00"), V3),
        NullCharacter
    );
    // In a user property too.
    let publish = packet(0x30, b"\x00\x01t\x07\x26\x00\x01\x00\x00\x01v");
    assert_eq!(decode_err(&publish, V5), NullCharacter);
}

#[test]
fn wildcards_in_publish_topic_names_are_refused_mqtt_3_3_2_2() {
    for topic in [&b"a/+"[..], b"#", b"a/#", b"+/b"] {
        let mut body = vec![0, topic.len() as u8];
        body.extend_from_slice(topic);
        let error = decode_err(&packet(0x30, &body), V3);
        assert_eq!(error, WildcardInTopicName);
        assert_eq!(error.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
    }
    // The response topic is a topic name as well (MQTT-3.3.2-14).
    let publish = packet(0x30, b"\x00\x01t\x05\x08\x00\x02a#");
    assert_eq!(decode_err(&publish, V5), WildcardInTopicName);
    // And so is the will topic.
    let connect = b"\x10\x11\x00\x04MQTT\x04\x06\x00\x3c\x00\x00\x00\x01+\x00\x00";
    assert_eq!(decode_err(&connect[..], V3), WildcardInTopicName);
}

#[test]
fn empty_publish_topic_is_refused_unless_a_v5_alias_stands_in() {
    assert_eq!(decode_err(b"\x30\x03\x00\x00x", V3), EmptyTopicName);
    assert_eq!(decode_err(b"\x30\x04\x00\x00\x00x", V5), EmptyTopicName);
    assert_eq!(EmptyTopicName.reason_code(), ReasonCode::PROTOCOL_ERROR);
    let mut buf = BytesMut::from(&b"\x30\x07\x00\x00\x03\x23\x00\x01x"[..]);
    assert!(matches!(
        decode(&mut buf, V5, 100),
        Ok(Some(Packet::Publish(_)))
    ));
}

#[test]
fn packet_identifier_zero_is_refused_mqtt_2_2_1_3() {
    for (wire, version) in [
        (&b"\x32\x05\x00\x01t\x00\x00"[..], V3), // QoS 1 PUBLISH
        (b"\x34\x05\x00\x01t\x00\x00", V5),      // QoS 2 PUBLISH
        (b"\x82\x06\x00\x00\x00\x01a\x00", V3),  // SUBSCRIBE
        (b"\xa2\x05\x00\x00\x00\x01a", V3),      // UNSUBSCRIBE
        (b"\x40\x02\x00\x00", V3),               // PUBACK
        (b"\x50\x02\x00\x00", V5),               // PUBREC
        (b"\x62\x02\x00\x00", V3),               // PUBREL
        (b"\x70\x02\x00\x00", V5),               // PUBCOMP
        (b"\x90\x03\x00\x00\x00", V3),           // SUBACK
        (b"\xb0\x02\x00\x00", V3),               // UNSUBACK
    ] {
        assert_eq!(decode_err(wire, version), ZeroPacketId, "{wire:02x?}");
    }
}

#[test]
fn publish_qos_3_is_malformed() {
    let error = decode_err(b"\x36\x05\x00\x01t\x00\x01", V3);
    assert_eq!(error, InvalidQoS(3));
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
}

#[test]
fn dup_on_qos_0_publish_is_refused_mqtt_3_3_1_2() {
    assert_eq!(decode_err(b"\x38\x03\x00\x01t", V3), DupWithQoS0);
    assert_eq!(decode_err(b"\x39\x03\x00\x01t", V5), DupWithQoS0);
}

#[test]
fn subscribe_and_unsubscribe_need_at_least_one_filter() {
    assert_eq!(decode_err(b"\x82\x02\x00\x01", V3), NoTopicFilters);
    assert_eq!(decode_err(b"\x82\x03\x00\x01\x00", V5), NoTopicFilters);
    assert_eq!(decode_err(b"\xa2\x02\x00\x01", V3), NoTopicFilters);
    assert_eq!(decode_err(b"\xa2\x03\x00\x01\x00", V5), NoTopicFilters);
    assert_eq!(NoTopicFilters.reason_code(), ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn empty_topic_filters_are_refused_mqtt_4_7_3_1() {
    assert_eq!(
        decode_err(b"\x82\x05\x00\x01\x00\x00\x00", V3),
        EmptyTopicFilter
    );
    assert_eq!(
        decode_err(b"\xa2\x04\x00\x01\x00\x00", V3),
        EmptyTopicFilter
    );
}

#[test]
fn subscription_option_reserved_bits_and_retain_handling_3_are_refused() {
    // In 3.1.1 everything above the QoS bits is reserved (MQTT-3.8.3-4).
    let v3 = decode_err(b"\x82\x06\x00\x01\x00\x01a\x04", V3);
    assert_eq!(v3, InvalidSubscriptionOptions(0x04));
    let v5 = decode_err(b"\x82\x07\x00\x01\x00\x00\x01a\x40", V5);
    assert_eq!(v5, InvalidSubscriptionOptions(0x40));
    let rh3 = decode_err(b"\x82\x07\x00\x01\x00\x00\x01a\x30", V5);
    assert_eq!(rh3, InvalidRetainHandling);
    assert_eq!(rh3.reason_code(), ReasonCode::PROTOCOL_ERROR);
    assert_eq!(
        decode_err(b"\x82\x06\x00\x01\x00\x01a\x03", V3),
        InvalidQoS(3)
    );
}

fn connect_with(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    body.extend_from_slice(rest);
    packet(0x10, &body)
}

#[test]
fn connect_protocol_name_must_match_the_level() {
    let client = b"\x00\x01c";
    for (name, level) in [
        (&b"MQTT"[..], 3),
        (b"MQIsdp", 4),
        (b"MQIsdp", 5),
        (b"HTTP", 4),
    ] {
        let error = decode_err(&connect_with(name, level, 0x02, client), V3);
        assert_eq!(error, InvalidProtocolName);
        assert_eq!(
            error.reason_code(),
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
        );
    }
}

#[test]
fn connect_unknown_level_is_unsupported_protocol_version() {
    let error = decode_err(&connect_with(b"MQTT", 6, 0x02, b"\x00\x01c"), V3);
    assert_eq!(error, UnsupportedProtocolVersion(6));
    assert_eq!(
        error.reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
}

#[test]
fn connect_reserved_flag_is_malformed_mqtt_3_1_2_3() {
    let error = decode_err(&connect_with(b"MQTT", 4, 0x03, b"\x00\x01c"), V3);
    assert_eq!(error, ConnectReservedFlag);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
}

#[test]
fn connect_will_qos_or_retain_without_will_flag_is_malformed_mqtt_3_1_2_11() {
    let qos = connect_with(b"MQTT", 4, 0x0A, b"\x00\x01c");
    assert_eq!(decode_err(&qos, V3), InvalidWillFlags);
    let retain = connect_with(b"MQTT", 5, 0x22, b"\x00\x00\x01c");
    assert_eq!(decode_err(&retain, V5), InvalidWillFlags);
}

#[test]
fn connect_will_qos_3_is_malformed() {
    let will = b"\x00\x01c\x00\x01w\x00\x00";
    assert_eq!(
        decode_err(&connect_with(b"MQTT", 4, 0x1E, will), V3),
        InvalidQoS(3)
    );
}

#[test]
fn connect_password_without_user_name_is_refused_before_v5_mqtt_3_1_2_22() {
    let rest = b"\x00\x01c\x00\x02pw";
    let v311 = connect_with(b"MQTT", 4, 0x42, rest);
    assert_eq!(decode_err(&v311, V3), PasswordWithoutUsername);
    let v31 = connect_with(b"MQIsdp", 3, 0x42, rest);
    assert_eq!(decode_err(&v31, V3), PasswordWithoutUsername);
    // MQTT 5 allows it.
    let v5 = connect_with(b"MQTT", 5, 0x42, b"\x00\x00\x01c\x00\x02pw");
    let mut buf = BytesMut::from(&v5[..]);
    let Ok(Some(Packet::Connect(connect))) = decode(&mut buf, V3, 100) else {
        panic!("MQTT 5 CONNECT with only a password decodes");
    };
    assert_eq!(connect.password, Some(Bytes::from_static(b"pw")));
    assert_eq!(connect.username, None);
}

#[test]
fn connack_reserved_flags_and_session_present_on_refusal_are_refused() {
    assert_eq!(decode_err(b"\x20\x02\x02\x00", V3), InvalidConnAckFlags(2));
    assert_eq!(decode_err(b"\x20\x02\x01\x05", V3), SessionPresentWithError);
    let unknown = decode_err(b"\x20\x02\x00\x06", V3);
    assert!(matches!(unknown, InvalidReasonCode { code: 6, .. }));
}

/// A QoS 0 MQTT 5 PUBLISH to topic "t" carrying `props` as its properties.
fn publish_v5(props: &[u8]) -> Vec<u8> {
    let mut body = b"\x00\x01t".to_vec();
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    packet(0x30, &body)
}

#[test]
fn unknown_property_identifier_is_malformed() {
    let error = decode_err(&publish_v5(b"\x05\x00"), V5);
    assert_eq!(error, UnknownProperty(5));
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    // Identifiers are variable byte integers; a large one is unknown, not a crash.
    assert_eq!(
        decode_err(&publish_v5(b"\x80\x01\x00"), V5),
        UnknownProperty(128)
    );
}

#[test]
fn property_not_allowed_in_the_packet_type_is_malformed() {
    // Session expiry interval belongs to CONNECT, CONNACK and DISCONNECT, not PUBLISH.
    let error = decode_err(&publish_v5(b"\x11\x00\x00\x00\x01"), V5);
    assert_eq!(
        error,
        PropertyNotAllowed {
            id: 0x11,
            packet: "PUBLISH"
        }
    );
    // Reason string is not allowed in SUBSCRIBE.
    let subscribe = packet(0x82, b"\x00\x01\x04\x1f\x00\x01x\x00\x01a\x00");
    assert!(matches!(
        decode_err(&subscribe, V5),
        PropertyNotAllowed { id: 0x1f, .. }
    ));
    // Will delay is a will property, not a CONNECT property.
    let connect = connect_with(b"MQTT", 5, 0x02, b"\x05\x18\x00\x00\x00\x01\x00\x01c");
    assert!(matches!(
        decode_err(&connect, V5),
        PropertyNotAllowed { id: 0x18, .. }
    ));
}

#[test]
fn single_properties_appearing_twice_are_a_protocol_error() {
    let twice = publish_v5(b"\x03\x00\x01a\x03\x00\x01b");
    let error = decode_err(&twice, V5);
    assert_eq!(error, DuplicateProperty(0x03));
    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // At most one subscription identifier in SUBSCRIBE.
    let subscribe = packet(0x82, b"\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00");
    assert_eq!(decode_err(&subscribe, V5), DuplicateProperty(0x0b));
}

#[test]
fn user_properties_and_publish_subscription_identifiers_may_repeat() {
    let wire = publish_v5(b"\x26\x00\x01k\x00\x01a\x26\x00\x01k\x00\x01b\x0b\x01\x0b\x02");
    let mut buf = BytesMut::from(&wire[..]);
    let Ok(Some(Packet::Publish(publish))) = decode(&mut buf, V5, 100) else {
        panic!("repeated user properties and subscription identifiers decode");
    };
    assert_eq!(publish.properties.user_properties.len(), 2);
    assert_eq!(publish.properties.subscription_identifiers, vec![1, 2]);
}

#[test]
fn zero_values_where_zero_is_forbidden_are_protocol_errors() {
    let sid = decode_err(&publish_v5(b"\x0b\x00"), V5);
    assert_eq!(sid, InvalidPropertyValue(0x0b));
    assert_eq!(sid.reason_code(), ReasonCode::PROTOCOL_ERROR);
    let alias = decode_err(&publish_v5(b"\x23\x00\x00"), V5);
    assert_eq!(alias, InvalidPropertyValue(0x23));
    assert_eq!(alias.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
    let receive_max = connect_with(b"MQTT", 5, 0x02, b"\x03\x21\x00\x00\x00\x01c");
    assert_eq!(decode_err(&receive_max, V5), InvalidPropertyValue(0x21));
    let packet_size = connect_with(b"MQTT", 5, 0x02, b"\x05\x27\x00\x00\x00\x00\x00\x01c");
    assert_eq!(decode_err(&packet_size, V5), InvalidPropertyValue(0x27));
    // Flags that may only be 0 or 1.
    assert_eq!(
        decode_err(&publish_v5(b"\x01\x02"), V5),
        InvalidPropertyValue(0x01)
    );
}

#[test]
fn authentication_data_without_a_method_is_a_protocol_error() {
    let auth = packet(0xf0, b"\x18\x04\x16\x00\x01x");
    let error = decode_err(&auth, V5);
    assert_eq!(error, AuthenticationDataWithoutMethod);
    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn malformed_variable_byte_integers_in_properties_are_refused() {
    // A property length of five bytes.
    let too_long = packet(0x30, b"\x00\x01t\xff\xff\xff\xff\x01");
    assert_eq!(decode_err(&too_long, V5), VariableByteIntegerTooLong);
    // A subscription identifier with a redundant zero byte.
    assert_eq!(
        decode_err(&publish_v5(b"\x0b\x81\x00"), V5),
        NonMinimalVariableByteInteger
    );
}

#[test]
fn property_length_exceeding_the_packet_is_malformed() {
    let wire = packet(0x30, b"\x00\x01t\x10\x01\x01");
    assert_eq!(decode_err(&wire, V5), PropertyLengthExceedsPacket);
    // A property that runs past the declared property length into the payload.
    let overrun = packet(0x30, b"\x00\x01t\x02\x02\x00\x00\x00\x01");
    assert_eq!(decode_err(&overrun, V5), PropertyLengthMismatch);
}

#[test]
fn reason_codes_not_valid_for_the_packet_type_are_refused() {
    // Session taken over is a DISCONNECT reason, not a PUBACK one.
    let puback = decode_err(b"\x40\x03\x00\x01\x8e", V5);
    assert_eq!(
        puback,
        InvalidReasonCode {
            code: 0x8e,
            packet: "PUBACK"
        }
    );
    assert_eq!(puback.reason_code(), ReasonCode::PROTOCOL_ERROR);
    assert!(matches!(
        decode_err(b"\x62\x03\x00\x01\x10", V5),
        InvalidReasonCode { .. }
    ));
    assert!(matches!(
        decode_err(b"\xe0\x01\x01", V5),
        InvalidReasonCode { .. }
    ));
    assert!(matches!(
        decode_err(b"\xf0\x01\x80", V5),
        InvalidReasonCode { .. }
    ));
    assert!(matches!(
        decode_err(b"\x90\x03\x00\x01\x03", V3),
        InvalidReasonCode { .. }
    ));
    assert!(matches!(
        decode_err(b"\x90\x04\x00\x01\x00\x11", V5),
        InvalidReasonCode { .. }
    ));
    assert!(matches!(
        decode_err(b"\xb0\x04\x00\x01\x00\x01", V5),
        InvalidReasonCode { .. }
    ));
    assert!(matches!(
        decode_err(b"\x20\x03\x00\x8e\x00", V5),
        InvalidReasonCode { .. }
    ));
    assert_eq!(decode_err(b"\x90\x03\x00\x01\x00", V5), NoReasonCodes);
}

fn publish(qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        payload: Bytes::new(),
        properties: Properties::default(),
    }
}

fn encode_err(packet: Packet, version: ProtocolVersion) -> EncodeError {
    let mut buf = BytesMut::from(&b"kept"[..]);
    let error = packet.encode(version, &mut buf).unwrap_err();
    assert_eq!(&buf[..], b"kept", "a failed encode writes nothing");
    error
}

#[test]
fn encoding_refuses_what_cannot_go_on_the_wire() {
    let long = "x".repeat(65_536);
    let topic = Publish {
        topic: long.clone(),
        ..publish(QoS::AtMostOnce)
    };
    assert_eq!(
        encode_err(Packet::Publish(topic), V3),
        EncodeError::StringTooLong(65_536)
    );
    let user = Publish {
        properties: Properties {
            user_properties: vec![("k".into(), long)],
            ..Properties::default()
        },
        ..publish(QoS::AtMostOnce)
    };
    assert_eq!(
        encode_err(Packet::Publish(user), V5),
        EncodeError::StringTooLong(65_536)
    );
    assert_eq!(
        encode_err(Packet::Publish(publish(QoS::ExactlyOnce)), V3),
        EncodeError::MissingPacketId(2)
    );
    let misplaced = Publish {
        properties: Properties {
            session_expiry_interval: Some(1),
            ..Properties::default()
        },
        ..publish(QoS::AtMostOnce)
    };
    assert!(matches!(
        encode_err(Packet::Publish(misplaced), V5),
        EncodeError::PropertyNotAllowed { id: 0x11, .. }
    ));
    let subscribe = |filters, ids: Vec<u32>| Subscribe {
        packet_id: 1,
        filters,
        properties: Properties {
            subscription_identifiers: ids,
            ..Properties::default()
        },
    };
    let one = || vec![("a".to_string(), SubscriptionOptions::default())];
    assert_eq!(
        encode_err(Packet::Subscribe(subscribe(Vec::new(), vec![])), V3),
        EncodeError::EmptyPayload("SUBSCRIBE")
    );
    assert_eq!(
        encode_err(Packet::Subscribe(subscribe(one(), vec![0])), V5),
        EncodeError::InvalidSubscriptionIdentifier(0)
    );
    assert_eq!(
        encode_err(Packet::Subscribe(subscribe(one(), vec![1, 2])), V5),
        EncodeError::DuplicateProperty(0x0b)
    );
    let rh3 = vec![(
        "a".to_string(),
        SubscriptionOptions {
            retain_handling: 3,
            ..SubscriptionOptions::default()
        },
    )];
    assert_eq!(
        encode_err(Packet::Subscribe(subscribe(rh3, vec![])), V5),
        EncodeError::InvalidRetainHandling(3)
    );
    let connect = Connect {
        protocol: V3,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"pw")),
        properties: Properties::default(),
    };
    assert_eq!(
        encode_err(Packet::Connect(connect), V3),
        EncodeError::PasswordWithoutUsername
    );
    assert_eq!(
        encode_err(Packet::Auth(Auth::default()), V3),
        EncodeError::NotInVersion("AUTH")
    );
}

#[test]
fn encoding_refuses_a_remaining_length_over_the_maximum() {
    // Zeroed memory is mapped lazily; the payload is never touched.
    let payload = Bytes::from(vec![0u8; MAX_REMAINING_LENGTH]);
    let huge = Packet::Publish(Publish {
        payload,
        ..publish(QoS::AtMostOnce)
    });
    assert_eq!(
        huge.encoded_len(V3),
        Err(EncodeError::PacketTooLarge(MAX_REMAINING_LENGTH + 3))
    );
}
