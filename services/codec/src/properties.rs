//! MQTT 5.0 properties (§2.2.2): one struct for all of them, checked against the packet type
//! they travel in.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{
    prefixed_len, put_prefixed, put_variable_byte_integer, variable_byte_integer_len, Reader,
    MAX_VARIABLE_BYTE_INTEGER,
};
pub(crate) use crate::property_context::PropertyContext;
use crate::property_context::{id, KNOWN};
use crate::publish::check_topic_name;

/// Every MQTT 5.0 property; `None` / empty means absent.
///
/// Decoding guarantees that only properties allowed in the packet type are set, that single
/// properties appeared once, and that values are in range (no zero receive maximum, maximum
/// packet size, topic alias or subscription identifier; 0/1 flags are 0 or 1). In MQTT 3.x
/// packets it is always empty, and encoding for 3.x ignores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Repeatable in PUBLISH (one per matching subscription); at most one in SUBSCRIBE.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    /// In wire order; names may repeat (MQTT 5.0 §3.1.2.11.8).
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

fn flag(property: u8, value: u8) -> Result<u8, DecodeError> {
    match value {
        0 | 1 => Ok(value),
        _ => Err(DecodeError::InvalidPropertyValue(property)),
    }
}

fn non_zero<T: PartialEq + Default>(property: u8, value: T) -> Result<T, DecodeError> {
    if value == T::default() {
        return Err(DecodeError::InvalidPropertyValue(property));
    }
    Ok(value)
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Reads a property length and the properties it covers.
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.variable_byte_integer()? as usize;
        if len > r.remaining() {
            return Err(DecodeError::PropertyLengthExceedsPacket);
        }
        let end = r.remaining() - len;
        let mut p = Self::default();
        let mut seen = 0u64;
        while r.remaining() > end {
            let raw = r.variable_byte_integer()?;
            let property = match u8::try_from(raw) {
                Ok(v) if v < 64 && KNOWN & (1 << v) != 0 => v,
                _ => return Err(DecodeError::UnknownProperty(raw)),
            };
            let bit = 1u64 << property;
            if ctx.allowed() & bit == 0 {
                return Err(DecodeError::PropertyNotAllowed {
                    id: property,
                    packet: ctx.name(),
                });
            }
            if seen & bit != 0 && !ctx.repeatable(property) {
                return Err(DecodeError::DuplicateProperty(property));
            }
            seen |= bit;
            p.decode_value(property, r)?;
        }
        if r.remaining() != end {
            return Err(DecodeError::PropertyLengthMismatch);
        }
        // MQTT 5.0 §3.1.2.11.10: authentication data means nothing without a method.
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthenticationDataWithoutMethod);
        }
        Ok(p)
    }

    fn decode_value(&mut self, property: u8, r: &mut Reader) -> Result<(), DecodeError> {
        use id::*;
        match property {
            PAYLOAD_FORMAT_INDICATOR => {
                self.payload_format_indicator = Some(flag(property, r.u8()?)?)
            }
            MESSAGE_EXPIRY_INTERVAL => self.message_expiry_interval = Some(r.u32()?),
            CONTENT_TYPE => self.content_type = Some(r.string()?),
            RESPONSE_TOPIC => {
                let topic = r.string()?;
                // MQTT-3.3.2-14: the response topic is a topic name, so no wildcards.
                check_topic_name(&topic)?;
                self.response_topic = Some(topic);
            }
            CORRELATION_DATA => self.correlation_data = Some(r.binary()?),
            SUBSCRIPTION_IDENTIFIER => {
                let value = non_zero(property, r.variable_byte_integer()?)?;
                self.subscription_identifiers.push(value);
            }
            SESSION_EXPIRY_INTERVAL => self.session_expiry_interval = Some(r.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => self.assigned_client_identifier = Some(r.string()?),
            SERVER_KEEP_ALIVE => self.server_keep_alive = Some(r.u16()?),
            AUTHENTICATION_METHOD => self.authentication_method = Some(r.string()?),
            AUTHENTICATION_DATA => self.authentication_data = Some(r.binary()?),
            REQUEST_PROBLEM_INFORMATION => {
                self.request_problem_information = Some(flag(property, r.u8()?)?)
            }
            WILL_DELAY_INTERVAL => self.will_delay_interval = Some(r.u32()?),
            REQUEST_RESPONSE_INFORMATION => {
                self.request_response_information = Some(flag(property, r.u8()?)?)
            }
            RESPONSE_INFORMATION => self.response_information = Some(r.string()?),
            SERVER_REFERENCE => self.server_reference = Some(r.string()?),
            REASON_STRING => self.reason_string = Some(r.string()?),
            RECEIVE_MAXIMUM => self.receive_maximum = Some(non_zero(property, r.u16()?)?),
            TOPIC_ALIAS_MAXIMUM => self.topic_alias_maximum = Some(r.u16()?),
            TOPIC_ALIAS => self.topic_alias = Some(non_zero(property, r.u16()?)?),
            MAXIMUM_QOS => self.maximum_qos = Some(flag(property, r.u8()?)?),
            RETAIN_AVAILABLE => self.retain_available = Some(flag(property, r.u8()?)?),
            USER_PROPERTY => {
                let name = r.string()?;
                let value = r.string()?;
                self.user_properties.push((name, value));
            }
            MAXIMUM_PACKET_SIZE => self.maximum_packet_size = Some(non_zero(property, r.u32()?)?),
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                self.wildcard_subscription_available = Some(flag(property, r.u8()?)?)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                self.subscription_identifier_available = Some(flag(property, r.u8()?)?)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                self.shared_subscription_available = Some(flag(property, r.u8()?)?)
            }
            // `decode` only passes identifiers from KNOWN.
            other => return Err(DecodeError::UnknownProperty(u32::from(other))),
        }
        Ok(())
    }

    /// Checks the set can be sent in `ctx` and returns the length of its content (without
    /// the property length prefix).
    pub(crate) fn content_len(&self, ctx: PropertyContext) -> Result<usize, EncodeError> {
        use id::*;
        let allowed = ctx.allowed();
        let mut len = 0usize;
        let mut check = |property: u8, present: bool, value_len: usize| {
            if !present {
                return Ok(());
            }
            if allowed & (1 << property) == 0 {
                return Err(EncodeError::PropertyNotAllowed {
                    id: property,
                    packet: ctx.name(),
                });
            }
            len += 1 + value_len;
            Ok(())
        };
        let s = |v: &Option<String>| v.as_deref().map_or(Ok(0), |s| prefixed_len(s.as_bytes()));
        let b = |v: &Option<Bytes>| v.as_deref().map_or(Ok(0), prefixed_len);
        let p = self;
        check(
            PAYLOAD_FORMAT_INDICATOR,
            p.payload_format_indicator.is_some(),
            1,
        )?;
        check(
            MESSAGE_EXPIRY_INTERVAL,
            p.message_expiry_interval.is_some(),
            4,
        )?;
        check(CONTENT_TYPE, p.content_type.is_some(), s(&p.content_type)?)?;
        check(
            RESPONSE_TOPIC,
            p.response_topic.is_some(),
            s(&p.response_topic)?,
        )?;
        check(
            CORRELATION_DATA,
            p.correlation_data.is_some(),
            b(&p.correlation_data)?,
        )?;
        if ctx != PropertyContext::Publish && p.subscription_identifiers.len() > 1 {
            return Err(EncodeError::DuplicateProperty(SUBSCRIPTION_IDENTIFIER));
        }
        for &sid in &p.subscription_identifiers {
            if sid == 0 || sid > MAX_VARIABLE_BYTE_INTEGER {
                return Err(EncodeError::InvalidSubscriptionIdentifier(sid));
            }
            check(
                SUBSCRIPTION_IDENTIFIER,
                true,
                variable_byte_integer_len(sid as usize),
            )?;
        }
        check(
            SESSION_EXPIRY_INTERVAL,
            p.session_expiry_interval.is_some(),
            4,
        )?;
        let assigned = s(&p.assigned_client_identifier)?;
        check(
            ASSIGNED_CLIENT_IDENTIFIER,
            p.assigned_client_identifier.is_some(),
            assigned,
        )?;
        check(SERVER_KEEP_ALIVE, p.server_keep_alive.is_some(), 2)?;
        let method = s(&p.authentication_method)?;
        check(
            AUTHENTICATION_METHOD,
            p.authentication_method.is_some(),
            method,
        )?;
        let data = b(&p.authentication_data)?;
        check(AUTHENTICATION_DATA, p.authentication_data.is_some(), data)?;
        check(
            REQUEST_PROBLEM_INFORMATION,
            p.request_problem_information.is_some(),
            1,
        )?;
        check(WILL_DELAY_INTERVAL, p.will_delay_interval.is_some(), 4)?;
        check(
            REQUEST_RESPONSE_INFORMATION,
            p.request_response_information.is_some(),
            1,
        )?;
        let info = s(&p.response_information)?;
        check(RESPONSE_INFORMATION, p.response_information.is_some(), info)?;
        check(
            SERVER_REFERENCE,
            p.server_reference.is_some(),
            s(&p.server_reference)?,
        )?;
        check(
            REASON_STRING,
            p.reason_string.is_some(),
            s(&p.reason_string)?,
        )?;
        check(RECEIVE_MAXIMUM, p.receive_maximum.is_some(), 2)?;
        check(TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum.is_some(), 2)?;
        check(TOPIC_ALIAS, p.topic_alias.is_some(), 2)?;
        check(MAXIMUM_QOS, p.maximum_qos.is_some(), 1)?;
        check(RETAIN_AVAILABLE, p.retain_available.is_some(), 1)?;
        for (name, value) in &p.user_properties {
            let pair = prefixed_len(name.as_bytes())? + prefixed_len(value.as_bytes())?;
            check(USER_PROPERTY, true, pair)?;
        }
        check(MAXIMUM_PACKET_SIZE, p.maximum_packet_size.is_some(), 4)?;
        let wildcard = p.wildcard_subscription_available.is_some();
        check(WILDCARD_SUBSCRIPTION_AVAILABLE, wildcard, 1)?;
        let sid_available = p.subscription_identifier_available.is_some();
        check(SUBSCRIPTION_IDENTIFIER_AVAILABLE, sid_available, 1)?;
        let shared = p.shared_subscription_available.is_some();
        check(SHARED_SUBSCRIPTION_AVAILABLE, shared, 1)?;
        Ok(len)
    }

    /// Bytes the property length prefix plus content take, for a set `content_len` accepted.
    pub(crate) fn wire_len(content_len: usize) -> usize {
        variable_byte_integer_len(content_len) + content_len
    }

    /// Writes the property length and the properties, for a set `content_len` accepted.
    pub(crate) fn write(&self, content_len: usize, buf: &mut BytesMut) {
        use id::*;
        fn text(v: &Option<String>) -> Option<&[u8]> {
            v.as_deref().map(str::as_bytes)
        }
        put_variable_byte_integer(buf, content_len);
        let p = self;
        let byte = |buf: &mut BytesMut, property: u8, v: Option<u8>| {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u8(v);
            }
        };
        let two = |buf: &mut BytesMut, property: u8, v: Option<u16>| {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u16(v);
            }
        };
        let four = |buf: &mut BytesMut, property: u8, v: Option<u32>| {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u32(v);
            }
        };
        let data = |buf: &mut BytesMut, property: u8, v: Option<&[u8]>| {
            if let Some(v) = v {
                buf.put_u8(property);
                put_prefixed(buf, v);
            }
        };
        byte(buf, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
        four(buf, MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
        data(buf, CONTENT_TYPE, text(&p.content_type));
        data(buf, RESPONSE_TOPIC, text(&p.response_topic));
        data(buf, CORRELATION_DATA, p.correlation_data.as_deref());
        for &sid in &p.subscription_identifiers {
            buf.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_variable_byte_integer(buf, sid as usize);
        }
        four(buf, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
        data(
            buf,
            ASSIGNED_CLIENT_IDENTIFIER,
            text(&p.assigned_client_identifier),
        );
        two(buf, SERVER_KEEP_ALIVE, p.server_keep_alive);
        data(buf, AUTHENTICATION_METHOD, text(&p.authentication_method));
        data(buf, AUTHENTICATION_DATA, p.authentication_data.as_deref());
        byte(
            buf,
            REQUEST_PROBLEM_INFORMATION,
            p.request_problem_information,
        );
        four(buf, WILL_DELAY_INTERVAL, p.will_delay_interval);
        byte(
            buf,
            REQUEST_RESPONSE_INFORMATION,
            p.request_response_information,
        );
        data(buf, RESPONSE_INFORMATION, text(&p.response_information));
        data(buf, SERVER_REFERENCE, text(&p.server_reference));
        data(buf, REASON_STRING, text(&p.reason_string));
        two(buf, RECEIVE_MAXIMUM, p.receive_maximum);
        two(buf, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
        two(buf, TOPIC_ALIAS, p.topic_alias);
        byte(buf, MAXIMUM_QOS, p.maximum_qos);
        byte(buf, RETAIN_AVAILABLE, p.retain_available);
        for (name, value) in &p.user_properties {
            buf.put_u8(USER_PROPERTY);
            put_prefixed(buf, name.as_bytes());
            put_prefixed(buf, value.as_bytes());
        }
        four(buf, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
        byte(
            buf,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            p.wildcard_subscription_available,
        );
        byte(
            buf,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            p.subscription_identifier_available,
        );
        byte(
            buf,
            SHARED_SUBSCRIPTION_AVAILABLE,
            p.shared_subscription_available,
        );
    }
}
