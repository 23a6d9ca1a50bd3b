//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (MQTT 5.0 §3.8–3.11).
//!
//! Topic filters are checked only for being non-empty here; their syntax (wildcard placement,
//! shared subscriptions) belongs to the topic filter type that parses them.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::fixed_header::packet_type;
use crate::primitives::{prefixed_len, put_prefixed, Reader};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{valid_v5, ReasonCode};
use crate::version::{ProtocolVersion, QoS};
use crate::Plan;

/// How a subscription wants messages delivered (MQTT 5.0 §3.8.3.1). In 3.x only `qos`
/// exists on the wire; the other fields decode as false/0 and are not encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained messages on subscribe, 1: only for a new subscription, 2: never.
    pub retain_handling: u8,
}

impl SubscriptionOptions {
    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        // MQTT-3.8.3-4 (3.1.1) and MQTT-3.8.3-5 (5.0): reserved bits must be zero.
        let reserved = if version.is_v5() { 0xC0 } else { 0xFC };
        if byte & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions(byte));
        }
        let qos = byte & 0b11;
        let qos = QoS::from_u8(qos).ok_or(DecodeError::InvalidQoS(qos))?;
        let retain_handling = (byte >> 4) & 0b11;
        if retain_handling == 3 {
            return Err(DecodeError::InvalidRetainHandling);
        }
        Ok(Self {
            qos,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos.as_u8();
        if version.is_v5() {
            byte |= u8::from(self.no_local) << 2
                | u8::from(self.retain_as_published) << 3
                | self.retain_handling << 4;
        }
        byte
    }
}

/// A request to add subscriptions; decoding guarantees a non-zero packet identifier and at
/// least one non-empty filter (MQTT-3.8.3-3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<(String, SubscriptionOptions)>,
    pub properties: Properties,
}

/// The answer to SUBSCRIBE, one reason code per filter in order (3.x: 0, 1, 2 or 0x80).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

/// A request to remove subscriptions; at least one non-empty filter (MQTT-3.10.3-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

/// The answer to UNSUBSCRIBE; in 3.x it carries no reason codes, so `reasons` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

fn decode_properties(
    r: &mut Reader,
    version: ProtocolVersion,
    ctx: PropertyContext,
) -> Result<Properties, DecodeError> {
    if version.is_v5() {
        Properties::decode(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn topic_filter(r: &mut Reader) -> Result<String, DecodeError> {
    let filter = r.string()?;
    // MQTT-4.7.3-1: topic filters are at least one character long.
    if filter.is_empty() {
        return Err(DecodeError::EmptyTopicFilter);
    }
    Ok(filter)
}

/// Plan for packet id + optional properties + `payload` bytes.
fn plan_with(
    properties: &Properties,
    version: ProtocolVersion,
    ctx: PropertyContext,
    payload: usize,
) -> Result<Plan, EncodeError> {
    let mut plan = Plan::new(2 + payload, 0);
    if version.is_v5() {
        plan.props = properties.content_len(ctx)?;
        plan.remaining += Properties::wire_len(plan.props);
    }
    Ok(plan)
}

fn write_head(
    packet_id: u16,
    properties: &Properties,
    version: ProtocolVersion,
    plan: &Plan,
    buf: &mut BytesMut,
) {
    buf.put_u16(packet_id);
    if version.is_v5() {
        properties.write(plan.props, buf);
    }
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = decode_properties(r, version, PropertyContext::Subscribe)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = topic_filter(r)?;
            let options = SubscriptionOptions::decode(r.u8()?, version)?;
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Self {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::EmptyPayload("SUBSCRIBE"));
        }
        let mut payload = 0;
        for (filter, options) in &self.filters {
            if options.retain_handling > 2 {
                return Err(EncodeError::InvalidRetainHandling(options.retain_handling));
            }
            payload += prefixed_len(filter.as_bytes())? + 1;
        }
        plan_with(
            &self.properties,
            version,
            PropertyContext::Subscribe,
            payload,
        )
    }

    pub(crate) fn write(&self, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
        write_head(self.packet_id, &self.properties, version, plan, buf);
        for (filter, options) in &self.filters {
            put_prefixed(buf, filter.as_bytes());
            buf.put_u8(options.encode(version));
        }
    }
}

fn decode_reasons(
    r: &mut Reader,
    version: ProtocolVersion,
    kind: u8,
    ctx: PropertyContext,
) -> Result<Vec<ReasonCode>, DecodeError> {
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = r.u8()?;
        let valid = if version.is_v5() {
            valid_v5(kind, code)
        } else {
            matches!(code, 0x00 | 0x01 | 0x02 | 0x80)
        };
        if !valid {
            return Err(DecodeError::InvalidReasonCode {
                code,
                packet: ctx.name(),
            });
        }
        reasons.push(ReasonCode(code));
    }
    if reasons.is_empty() {
        return Err(DecodeError::NoReasonCodes);
    }
    Ok(reasons)
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = decode_properties(r, version, PropertyContext::SubAck)?;
        let reasons = decode_reasons(r, version, packet_type::SUBACK, PropertyContext::SubAck)?;
        Ok(Self {
            packet_id,
            reasons,
            properties,
        })
    }

    pub(crate) fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        if self.reasons.is_empty() {
            return Err(EncodeError::EmptyPayload("SUBACK"));
        }
        let payload = self.reasons.len();
        plan_with(&self.properties, version, PropertyContext::SubAck, payload)
    }

    pub(crate) fn write(&self, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
        write_head(self.packet_id, &self.properties, version, plan, buf);
        for reason in &self.reasons {
            buf.put_u8(reason.0);
        }
    }
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = decode_properties(r, version, PropertyContext::Unsubscribe)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(topic_filter(r)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Self {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::EmptyPayload("UNSUBSCRIBE"));
        }
        let mut payload = 0;
        for filter in &self.filters {
            payload += prefixed_len(filter.as_bytes())?;
        }
        plan_with(
            &self.properties,
            version,
            PropertyContext::Unsubscribe,
            payload,
        )
    }

    pub(crate) fn write(&self, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
        write_head(self.packet_id, &self.properties, version, plan, buf);
        for filter in &self.filters {
            put_prefixed(buf, filter.as_bytes());
        }
    }
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        if !version.is_v5() {
            r.finish()?;
            return Ok(Self {
                packet_id,
                reasons: Vec::new(),
                properties: Properties::default(),
            });
        }
        let properties = Properties::decode(r, PropertyContext::UnsubAck)?;
        let reasons = decode_reasons(r, version, packet_type::UNSUBACK, PropertyContext::UnsubAck)?;
        Ok(Self {
            packet_id,
            reasons,
            properties,
        })
    }

    pub(crate) fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        if !version.is_v5() {
            return Ok(Plan::new(2, 0));
        }
        if self.reasons.is_empty() {
            return Err(EncodeError::EmptyPayload("UNSUBACK"));
        }
        let payload = self.reasons.len();
        plan_with(
            &self.properties,
            version,
            PropertyContext::UnsubAck,
            payload,
        )
    }

    pub(crate) fn write(&self, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.write(plan.props, buf);
            for reason in &self.reasons {
                buf.put_u8(reason.0);
            }
        }
    }
}
