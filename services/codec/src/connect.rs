//! CONNECT (MQTT 5.0 §3.1) and CONNACK (§3.2).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::fixed_header::packet_type;
use crate::primitives::{prefixed_len, put_prefixed, Reader};
use crate::properties::{Properties, PropertyContext};
use crate::publish::check_topic_name;
use crate::reason::valid_v5;
use crate::version::{ProtocolVersion, QoS};
use crate::Plan;

/// The message the server publishes for a client that goes away without DISCONNECT.
///
/// Decoding guarantees the topic is a valid topic name (non-empty, no wildcards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (will delay, message expiry, ...); empty in 3.x.
    pub properties: Properties,
}

/// A client's request to open a session.
///
/// `protocol` comes from the packet itself (name and level agree); the client identifier may
/// be empty, which the broker accepts or rejects by its own rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// Clean session in 3.x, clean start in 5.0.
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    /// Present without a username only in MQTT 5 (MQTT-3.1.2-22 forbids it in 3.1.1).
    pub password: Option<Bytes>,
    pub properties: Properties,
}

/// The server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// A [`crate::connack_v3`] return code in 3.x, a [`crate::ReasonCode`] value in 5.0.
    pub code: u8,
    pub properties: Properties,
}

mod flag {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_START: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x40;
    pub const USERNAME: u8 = 0x80;
}

impl Connect {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.binary()?;
        let level = r.u8()?;
        if name.as_ref() != b"MQTT" && name.as_ref() != b"MQIsdp" {
            return Err(DecodeError::InvalidProtocolName);
        }
        let protocol = ProtocolVersion::from_level(level)
            .ok_or(DecodeError::UnsupportedProtocolVersion(level))?;
        if name.as_ref() != protocol.protocol_name().as_bytes() {
            return Err(DecodeError::InvalidProtocolName);
        }
        let flags = r.u8()?;
        // MQTT-3.1.2-3: the reserved flag must be zero.
        if flags & flag::RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let has_will = flags & flag::WILL != 0;
        let will_qos = (flags >> 3) & 0b11;
        let will_retain = flags & flag::WILL_RETAIN != 0;
        // MQTT-3.1.2-13 / -15 (3.1.1: -13, -15): no will QoS or retain without a will.
        if !has_will && (will_qos != 0 || will_retain) {
            return Err(DecodeError::InvalidWillFlags);
        }
        let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS(will_qos))?;
        let has_username = flags & flag::USERNAME != 0;
        let has_password = flags & flag::PASSWORD != 0;
        if has_password && !has_username && !protocol.is_v5() {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = r.u16()?;
        let properties = if protocol.is_v5() {
            Properties::decode(r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let client_id = r.string()?;
        let will = if has_will {
            let properties = if protocol.is_v5() {
                Properties::decode(r, PropertyContext::Will)?
            } else {
                Properties::default()
            };
            let topic = r.string()?;
            check_topic_name(&topic)?;
            Some(Will {
                topic,
                payload: r.binary()?,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        r.finish()?;
        Ok(Self {
            protocol,
            clean_start: flags & flag::CLEAN_START != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    /// `plan.props` holds the CONNECT properties, `plan.extra` the will properties.
    pub(crate) fn plan(&self) -> Result<Plan, EncodeError> {
        let v5 = self.protocol.is_v5();
        if self.password.is_some() && self.username.is_none() && !v5 {
            return Err(EncodeError::PasswordWithoutUsername);
        }
        let mut remaining = prefixed_len(self.protocol.protocol_name().as_bytes())? + 1 + 1 + 2;
        let mut plan = Plan::new(0, 0);
        if v5 {
            plan.props = self.properties.content_len(PropertyContext::Connect)?;
            remaining += Properties::wire_len(plan.props);
        }
        remaining += prefixed_len(self.client_id.as_bytes())?;
        if let Some(will) = &self.will {
            if v5 {
                plan.extra = will.properties.content_len(PropertyContext::Will)?;
                remaining += Properties::wire_len(plan.extra);
            }
            remaining += prefixed_len(will.topic.as_bytes())? + prefixed_len(&will.payload)?;
        }
        if let Some(username) = &self.username {
            remaining += prefixed_len(username.as_bytes())?;
        }
        if let Some(password) = &self.password {
            remaining += prefixed_len(password)?;
        }
        plan.remaining = remaining;
        Ok(plan)
    }

    pub(crate) fn write(&self, plan: &Plan, buf: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        put_prefixed(buf, self.protocol.protocol_name().as_bytes());
        buf.put_u8(self.protocol.level());
        let mut flags = 0u8;
        if self.clean_start {
            flags |= flag::CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= flag::WILL | (will.qos.as_u8() << 3);
            if will.retain {
                flags |= flag::WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= flag::USERNAME;
        }
        if self.password.is_some() {
            flags |= flag::PASSWORD;
        }
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive);
        if v5 {
            self.properties.write(plan.props, buf);
        }
        put_prefixed(buf, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                will.properties.write(plan.extra, buf);
            }
            put_prefixed(buf, will.topic.as_bytes());
            put_prefixed(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_prefixed(buf, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_prefixed(buf, password);
        }
    }
}

impl ConnAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        // MQTT-3.2.2-1: only bit 0 (session present) is defined.
        if flags & 0xFE != 0 {
            return Err(DecodeError::InvalidConnAckFlags(flags));
        }
        let code = r.u8()?;
        let valid = if version.is_v5() {
            valid_v5(packet_type::CONNACK, code)
        } else {
            code <= crate::connack_v3::NOT_AUTHORIZED
        };
        if !valid {
            return Err(DecodeError::InvalidReasonCode {
                code,
                packet: "CONNACK",
            });
        }
        let session_present = flags & 0x01 != 0;
        // MQTT-3.2.2-4 (3.1.1) / MQTT-3.2.2-6 (5.0): a refused connection has no session.
        if session_present && code != 0 {
            return Err(DecodeError::SessionPresentWithError);
        }
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::ConnAck)?
        } else {
            Properties::default()
        };
        r.finish()?;
        Ok(Self {
            session_present,
            code,
            properties,
        })
    }

    pub(crate) fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        if !version.is_v5() {
            return Ok(Plan::new(2, 0));
        }
        let props = self.properties.content_len(PropertyContext::ConnAck)?;
        Ok(Plan::new(2 + Properties::wire_len(props), props))
    }

    pub(crate) fn write(&self, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
        // MQTT 3.1 has no Session Present flag: the first byte of its CONNACK is reserved and
        // not used, so it goes out as 0.
        buf.put_u8(u8::from(
            self.session_present && version != ProtocolVersion::V3_1,
        ));
        buf.put_u8(self.code);
        if version.is_v5() {
            self.properties.write(plan.props, buf);
        }
    }
}
