//! PUBLISH (MQTT 5.0 §3.3).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{
    prefixed_len, put_prefixed, put_variable_byte_integer, variable_byte_integer_len, Reader,
};
use crate::properties::{Properties, PropertyContext};
use crate::version::{ProtocolVersion, QoS};
use crate::Plan;

/// An application message in flight.
///
/// Decoding guarantees: the topic has no wildcards and is non-empty unless an MQTT 5 topic
/// alias stands in for it; `packet_id` is `Some` (and non-zero) exactly when `qos` is above
/// 0; `dup` is false for QoS 0; `payload` shares the receive buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    pub packet_id: Option<u16>,
    pub payload: Bytes,
    pub properties: Properties,
}

/// MQTT-4.7.3-1 (topic names are at least one character) and MQTT-3.3.2-2 (no wildcards).
pub(crate) fn check_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.is_empty() {
        return Err(DecodeError::EmptyTopicName);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::WildcardInTopicName);
    }
    Ok(())
}

impl Publish {
    /// `flags` were already checked by the fixed header (QoS not 3, no DUP at QoS 0).
    pub(crate) fn decode(
        r: &mut Reader,
        flags: u8,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS(3))?;
        let topic = r.string()?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(r.packet_id()?),
        };
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Publish)?
        } else {
            Properties::default()
        };
        // MQTT 5.0 §3.3.2.3.4: an empty topic means "use the topic this alias maps to".
        if !(topic.is_empty() && properties.topic_alias.is_some()) {
            check_topic_name(&topic)?;
        }
        Ok(Self {
            dup: flags & 0b1000 != 0,
            qos,
            retain: flags & 0b0001 != 0,
            topic,
            packet_id,
            payload: r.rest(),
            properties,
        })
    }

    /// The same PUBLISH, borrowed.
    pub fn borrowed(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            payload: &self.payload,
            properties: &self.properties,
        }
    }

    pub(crate) fn first_byte(&self) -> u8 {
        self.borrowed().first_byte()
    }

    pub(crate) fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        self.borrowed().plan(version)
    }

    pub(crate) fn write(&self, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
        self.borrowed().write(version, plan, buf);
    }
}

/// A PUBLISH made of borrowed parts, to encode one message for many clients without
/// copying its topic, payload or properties into a [`Publish`] for each.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub packet_id: Option<u16>,
    pub payload: &'a [u8],
    pub properties: &'a Properties,
}

impl PublishRef<'_> {
    /// Appends the packet's bytes to `buf`, as [`Packet::encode`](crate::Packet::encode)
    /// does for a [`Publish`]. On error nothing has been written.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let plan = self.plan(version)?;
        if plan.remaining > crate::MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge(plan.remaining));
        }
        buf.reserve(1 + variable_byte_integer_len(plan.remaining) + plan.remaining);
        buf.put_u8(self.first_byte());
        put_variable_byte_integer(buf, plan.remaining);
        self.write(version, &plan, buf);
        Ok(())
    }

    fn first_byte(&self) -> u8 {
        // MQTT-3.3.1-2: DUP is never sent with QoS 0, whatever the struct says.
        let dup = self.dup && self.qos != QoS::AtMostOnce;
        0x30 | (u8::from(dup) << 3) | (self.qos.as_u8() << 1) | u8::from(self.retain)
    }

    fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        let mut remaining = prefixed_len(self.topic.as_bytes())? + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            if self.packet_id.is_none() {
                return Err(EncodeError::MissingPacketId(self.qos.as_u8()));
            }
            remaining += 2;
        }
        let mut props = 0;
        if version.is_v5() {
            props = self.properties.content_len(PropertyContext::Publish)?;
            remaining += Properties::wire_len(props);
        }
        Ok(Plan::new(remaining, props))
    }

    fn write(&self, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
        put_prefixed(buf, self.topic.as_bytes());
        if let (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) = (self.qos, self.packet_id) {
            buf.put_u16(id);
        }
        if version.is_v5() {
            self.properties.write(plan.props, buf);
        }
        buf.put_slice(self.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Packet;

    /// The borrowed encoder writes exactly what the owned packet does, in every version,
    /// with and without properties.
    #[test]
    fn a_borrowed_publish_encodes_as_the_owned_one() {
        let with_properties = Properties {
            content_type: Some("text/plain".into()),
            topic_alias: Some(3),
            subscription_identifiers: vec![7, 300],
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        };
        for version in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            for (qos, packet_id) in [
                (QoS::AtMostOnce, None),
                (QoS::AtLeastOnce, Some(1)),
                (QoS::ExactlyOnce, Some(65535)),
            ] {
                for properties in [Properties::default(), with_properties.clone()] {
                    let publish = Publish {
                        dup: qos != QoS::AtMostOnce,
                        qos,
                        retain: true,
                        topic: "a/b".into(),
                        packet_id,
                        payload: Bytes::from_static(&[1; 200]),
                        properties,
                    };
                    let mut owned = BytesMut::new();
                    Packet::Publish(publish.clone())
                        .encode(version, &mut owned)
                        .expect("encodes");
                    let mut borrowed = BytesMut::from(&b"before"[..]);
                    publish
                        .borrowed()
                        .encode(version, &mut borrowed)
                        .expect("encodes");
                    assert_eq!(&borrowed[..6], b"before");
                    assert_eq!(&borrowed[6..], &owned[..], "{version:?} {qos:?}");
                }
            }
        }
    }

    #[test]
    fn a_borrowed_publish_without_packet_id_is_refused_and_writes_nothing() {
        let properties = Properties::default();
        let publish = PublishRef {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t",
            packet_id: None,
            payload: b"p",
            properties: &properties,
        };
        let mut buf = BytesMut::new();
        assert!(publish.encode(ProtocolVersion::V5, &mut buf).is_err());
        assert!(buf.is_empty());
    }
}
