//! Strategies producing arbitrary valid packets for each protocol version.

#![allow(dead_code)]

use bytes::Bytes;
use iotcore_codec::*;
use proptest::collection::vec;
use proptest::option::of as opt;
use proptest::prelude::*;

/// Strings as clients send them: any valid UTF-8 except U+0000, including multi-byte.
pub fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 /_é中😀\u{7f}-]{0,12}"
}

pub fn topic_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/_é中$-]{1,16}"
}

/// The codec leaves filter syntax to the topic crate, so any non-empty string goes.
pub fn topic_filter() -> impl Strategy<Value = String> {
    "[a-z0-9/+#$é]{1,16}"
}

pub fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..32).prop_map(Bytes::from)
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

pub fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    opt(0..=1u8)
}

prop_compose! {
    /// Every property set, each with a valid value; `restrict` trims it to a packet type.
    fn any_properties()(
        a in (flag(), opt(any::<u32>()), opt(text()), opt(topic_name()), opt(binary()),
              vec(1..=MAX_VARIABLE_BYTE_INTEGER, 0..3)),
        b in (opt(any::<u32>()), opt(text()), opt(any::<u16>()), opt(text()), opt(binary()),
              flag()),
        c in (opt(any::<u32>()), flag(), opt(text()), opt(text()), opt(text()),
              opt(1..=u16::MAX)),
        d in (opt(any::<u16>()), opt(1..=u16::MAX), flag(), flag(),
              vec((text(), text()), 0..3), opt(1..=u32::MAX)),
        e in (flag(), flag(), flag()),
    ) -> Properties {
        Properties {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: b.0,
            assigned_client_identifier: b.1,
            server_keep_alive: b.2,
            authentication_method: b.3,
            authentication_data: b.4,
            request_problem_information: b.5,
            will_delay_interval: c.0,
            request_response_information: c.1,
            response_information: c.2,
            server_reference: c.3,
            reason_string: c.4,
            receive_maximum: c.5,
            topic_alias_maximum: d.0,
            topic_alias: d.1,
            maximum_qos: d.2,
            retain_available: d.3,
            user_properties: d.4,
            maximum_packet_size: d.5,
            wildcard_subscription_available: e.0,
            subscription_identifier_available: e.1,
            shared_subscription_available: e.2,
        }
    }
}

/// Packet types, as far as their allowed properties go (MQTT 5.0 §2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

macro_rules! keep {
    ($from:ident, $($field:ident),*) => {
        Properties { $($field: $from.$field,)* ..Properties::default() }
    };
}

pub fn restrict(mut p: Properties, ctx: Ctx) -> Properties {
    // MQTT 5.0 §3.1.2.11.10: authentication data only comes with a method.
    if p.authentication_method.is_none() {
        p.authentication_data = None;
    }
    match ctx {
        Ctx::Connect => keep!(
            p,
            session_expiry_interval,
            receive_maximum,
            maximum_packet_size,
            topic_alias_maximum,
            request_response_information,
            request_problem_information,
            user_properties,
            authentication_method,
            authentication_data
        ),
        Ctx::Will => keep!(
            p,
            will_delay_interval,
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            user_properties
        ),
        Ctx::ConnAck => keep!(
            p,
            session_expiry_interval,
            receive_maximum,
            maximum_qos,
            retain_available,
            maximum_packet_size,
            assigned_client_identifier,
            topic_alias_maximum,
            reason_string,
            user_properties,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
            server_keep_alive,
            response_information,
            server_reference,
            authentication_method,
            authentication_data
        ),
        Ctx::Publish => keep!(
            p,
            payload_format_indicator,
            message_expiry_interval,
            topic_alias,
            response_topic,
            correlation_data,
            user_properties,
            subscription_identifiers,
            content_type
        ),
        Ctx::Ack => keep!(p, reason_string, user_properties),
        Ctx::Subscribe => {
            let mut out = keep!(p, subscription_identifiers, user_properties);
            out.subscription_identifiers.truncate(1);
            out
        }
        Ctx::Unsubscribe => keep!(p, user_properties),
        Ctx::Disconnect => keep!(
            p,
            session_expiry_interval,
            reason_string,
            user_properties,
            server_reference
        ),
        Ctx::Auth => keep!(
            p,
            authentication_method,
            authentication_data,
            reason_string,
            user_properties
        ),
    }
}

/// Properties for `ctx` in `version`: always empty before MQTT 5.
pub fn properties(version: ProtocolVersion, ctx: Ctx) -> BoxedStrategy<Properties> {
    if version == ProtocolVersion::V5 {
        any_properties().prop_map(move |p| restrict(p, ctx)).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn one_of(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_map(ReasonCode)
}

pub const V5_CONNACK: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
pub const V5_PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
pub const V5_PUBREL: &[u8] = &[0x00, 0x92];
pub const V5_SUBACK: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
pub const V5_UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
pub const V5_DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
pub const V5_AUTH: &[u8] = &[0x00, 0x18, 0x19];

fn reason(version: ProtocolVersion, v5_codes: &'static [u8]) -> BoxedStrategy<ReasonCode> {
    if version == ProtocolVersion::V5 {
        one_of(v5_codes).boxed()
    } else {
        Just(ReasonCode::SUCCESS).boxed()
    }
}

pub fn will(version: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        properties(version, Ctx::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

pub fn connect(version: ProtocolVersion) -> impl Strategy<Value = Connect> {
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        opt(will(version)),
        opt(text()),
        opt(binary()),
        properties(version, Ctx::Connect),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // MQTT-3.1.2-22: before MQTT 5 a password needs a user name.
                let password = if version == ProtocolVersion::V5 || username.is_some() {
                    password
                } else {
                    None
                };
                Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

pub fn connack(version: ProtocolVersion) -> impl Strategy<Value = ConnAck> {
    let code = if version == ProtocolVersion::V5 {
        proptest::sample::select(V5_CONNACK).boxed()
    } else {
        (0..=5u8).boxed()
    };
    (any::<bool>(), code, properties(version, Ctx::ConnAck)).prop_map(
        move |(session_present, code, properties)| ConnAck {
            // MQTT 3.1 has no Session Present flag.
            session_present: session_present && code == 0 && version != ProtocolVersion::V3_1,
            code,
            properties,
        },
    )
}

pub fn publish(version: ProtocolVersion) -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        binary(),
        properties(version, Ctx::Publish),
    )
        .prop_map(
            |(dup, qos, retain, topic, drop_topic, id, payload, properties)| {
                let qos0 = qos == QoS::AtMostOnce;
                // An alias may stand in for the topic (MQTT 5.0 §3.3.2.3.4).
                let topic = if drop_topic && properties.topic_alias.is_some() {
                    String::new()
                } else {
                    topic
                };
                Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: (!qos0).then_some(id),
                    payload,
                    properties,
                }
            },
        )
}

pub fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if version == ProtocolVersion::V5 {
        (qos(), any::<bool>(), any::<bool>(), 0..=2u8)
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed()
    } else {
        qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            })
            .boxed()
    }
}

pub fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v = version;
    let v5 = version == ProtocolVersion::V5;
    let ack = move || (packet_id(), properties(v, Ctx::Ack));
    let mut choices: Vec<BoxedStrategy<Packet>> = vec![
        connect(v).prop_map(Packet::Connect).boxed(),
        connack(v).prop_map(Packet::ConnAck).boxed(),
        publish(v).prop_map(Packet::Publish).boxed(),
        (ack(), reason(v, V5_PUBACK))
            .prop_map(|((packet_id, properties), reason)| {
                Packet::PubAck(PubAck {
                    packet_id,
                    reason,
                    properties,
                })
            })
            .boxed(),
        (ack(), reason(v, V5_PUBACK))
            .prop_map(|((packet_id, properties), reason)| {
                Packet::PubRec(PubRec {
                    packet_id,
                    reason,
                    properties,
                })
            })
            .boxed(),
        (ack(), reason(v, V5_PUBREL))
            .prop_map(|((packet_id, properties), reason)| {
                Packet::PubRel(PubRel {
                    packet_id,
                    reason,
                    properties,
                })
            })
            .boxed(),
        (ack(), reason(v, V5_PUBREL))
            .prop_map(|((packet_id, properties), reason)| {
                Packet::PubComp(PubComp {
                    packet_id,
                    reason,
                    properties,
                })
            })
            .boxed(),
        (
            packet_id(),
            vec((topic_filter(), subscription_options(v)), 1..4),
            properties(v, Ctx::Subscribe),
        )
            .prop_map(|(packet_id, filters, properties)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    properties,
                })
            })
            .boxed(),
        (
            packet_id(),
            if v5 {
                vec(one_of(V5_SUBACK), 1..4).boxed()
            } else {
                vec(one_of(&[0x00, 0x01, 0x02, 0x80]), 1..4).boxed()
            },
            properties(v, Ctx::Ack),
        )
            .prop_map(|(packet_id, reasons, properties)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    reasons,
                    properties,
                })
            })
            .boxed(),
        (
            packet_id(),
            vec(topic_filter(), 1..4),
            properties(v, Ctx::Unsubscribe),
        )
            .prop_map(|(packet_id, filters, properties)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    properties,
                })
            })
            .boxed(),
        (
            packet_id(),
            if v5 {
                vec(one_of(V5_UNSUBACK), 1..4).boxed()
            } else {
                Just(Vec::new()).boxed()
            },
            properties(v, Ctx::Ack),
        )
            .prop_map(|(packet_id, reasons, properties)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    reasons,
                    properties,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (reason(v, V5_DISCONNECT), properties(v, Ctx::Disconnect))
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
            .boxed(),
    ];
    if v5 {
        choices.push(
            (one_of(V5_AUTH), properties(v, Ctx::Auth))
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(choices).boxed()
}
