//! PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 5.0 §3.4–3.7): a packet identifier, and in
//! MQTT 5 a reason code and properties that may be left out when they are the defaults.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::fixed_header::packet_type;
use crate::primitives::Reader;
use crate::properties::{Properties, PropertyContext};
use crate::reason::{valid_v5, ReasonCode};
use crate::version::ProtocolVersion;
use crate::Plan;

fn decode_ack(
    r: &mut Reader,
    version: ProtocolVersion,
    kind: u8,
    ctx: PropertyContext,
) -> Result<(u16, ReasonCode, Properties), DecodeError> {
    let packet_id = r.packet_id()?;
    let mut reason = ReasonCode::SUCCESS;
    let mut properties = Properties::default();
    // MQTT 5.0 §3.4.2.1: a remaining length of 2 means success without properties, and
    // §3.4.2.2.1: below 4 there is no property length.
    if version.is_v5() && !r.is_empty() {
        let code = r.u8()?;
        if !valid_v5(kind, code) {
            return Err(DecodeError::InvalidReasonCode {
                code,
                packet: ctx.name(),
            });
        }
        reason = ReasonCode(code);
        if !r.is_empty() {
            properties = Properties::decode(r, ctx)?;
        }
    }
    r.finish()?;
    Ok((packet_id, reason, properties))
}

fn plan_ack(
    reason: ReasonCode,
    properties: &Properties,
    version: ProtocolVersion,
    ctx: PropertyContext,
) -> Result<Plan, EncodeError> {
    if !version.is_v5() {
        return Ok(Plan::new(2, 0));
    }
    let props = properties.content_len(ctx)?;
    Ok(match (reason, props) {
        (ReasonCode::SUCCESS, 0) => Plan::new(2, 0),
        (_, 0) => Plan::new(3, 0),
        _ => Plan::new(3 + Properties::wire_len(props), props),
    })
}

fn write_ack(
    packet_id: u16,
    reason: ReasonCode,
    properties: &Properties,
    plan: &Plan,
    buf: &mut BytesMut,
) {
    buf.put_u16(packet_id);
    if plan.remaining >= 3 {
        buf.put_u8(reason.0);
    }
    if plan.remaining >= 4 {
        properties.write(plan.props, buf);
    }
}

macro_rules! ack_packet {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $ctx:expr) => {
        $(#[$doc])*
        ///
        /// Decoding guarantees a non-zero packet identifier and, in MQTT 5, a reason code
        /// valid for this packet type; in 3.x `reason` is `SUCCESS` and `properties` empty.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            pub packet_id: u16,
            pub reason: ReasonCode,
            pub properties: Properties,
        }

        impl $name {
            /// A successful acknowledgement without properties.
            pub fn new(packet_id: u16) -> Self {
                Self {
                    packet_id,
                    reason: ReasonCode::SUCCESS,
                    properties: Properties::default(),
                }
            }

            pub(crate) fn decode(
                r: &mut Reader,
                version: ProtocolVersion,
            ) -> Result<Self, DecodeError> {
                let (packet_id, reason, properties) = decode_ack(r, version, $kind, $ctx)?;
                Ok(Self {
                    packet_id,
                    reason,
                    properties,
                })
            }

            pub(crate) fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
                plan_ack(self.reason, &self.properties, version, $ctx)
            }

            pub(crate) fn write(&self, plan: &Plan, buf: &mut BytesMut) {
                write_ack(self.packet_id, self.reason, &self.properties, plan, buf)
            }
        }
    };
}

ack_packet!(
    /// Acknowledges a QoS 1 PUBLISH.
    PubAck,
    packet_type::PUBACK,
    PropertyContext::PubAck
);
ack_packet!(
    /// First answer to a QoS 2 PUBLISH ("received").
    PubRec,
    packet_type::PUBREC,
    PropertyContext::PubRec
);
ack_packet!(
    /// Answer to PUBREC ("release").
    PubRel,
    packet_type::PUBREL,
    PropertyContext::PubRel
);
ack_packet!(
    /// Last step of the QoS 2 handshake ("complete").
    PubComp,
    packet_type::PUBCOMP,
    PropertyContext::PubComp
);
