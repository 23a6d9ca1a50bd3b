//! DISCONNECT (MQTT 5.0 §3.14) and AUTH (§3.15): a reason code and properties, both of
//! which may be left out when they are the defaults.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::fixed_header::packet_type;
use crate::primitives::Reader;
use crate::properties::{Properties, PropertyContext};
use crate::reason::{valid_v5, ReasonCode};
use crate::version::ProtocolVersion;
use crate::Plan;

/// Either side closing the connection; in MQTT 3.x always a normal disconnection with no
/// content on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// MQTT 5 enhanced authentication exchange; does not exist in 3.x.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

fn decode_reason(
    r: &mut Reader,
    kind: u8,
    ctx: PropertyContext,
) -> Result<(ReasonCode, Properties), DecodeError> {
    // An empty body means success without properties; a body of one byte has no property
    // length (MQTT 5.0 §3.14.2.2.1).
    if r.is_empty() {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
    }
    let code = r.u8()?;
    if !valid_v5(kind, code) {
        return Err(DecodeError::InvalidReasonCode {
            code,
            packet: ctx.name(),
        });
    }
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(r, ctx)?
    };
    r.finish()?;
    Ok((ReasonCode(code), properties))
}

fn write_reason(reason: ReasonCode, properties: &Properties, plan: &Plan, buf: &mut BytesMut) {
    if plan.remaining >= 1 {
        buf.put_u8(reason.0);
    }
    if plan.remaining >= 2 {
        properties.write(plan.props, buf);
    }
}

impl Disconnect {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        if !version.is_v5() {
            r.finish()?;
            return Ok(Self::default());
        }
        let (reason, properties) =
            decode_reason(r, packet_type::DISCONNECT, PropertyContext::Disconnect)?;
        Ok(Self { reason, properties })
    }

    pub(crate) fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        if !version.is_v5() {
            return Ok(Plan::new(0, 0));
        }
        let props = self.properties.content_len(PropertyContext::Disconnect)?;
        Ok(match (self.reason, props) {
            (ReasonCode::SUCCESS, 0) => Plan::new(0, 0),
            (_, 0) => Plan::new(1, 0),
            _ => Plan::new(1 + Properties::wire_len(props), props),
        })
    }

    pub(crate) fn write(&self, plan: &Plan, buf: &mut BytesMut) {
        write_reason(self.reason, &self.properties, plan, buf);
    }
}

impl Auth {
    /// The fixed header already refused AUTH outside MQTT 5.
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let (reason, properties) = decode_reason(r, packet_type::AUTH, PropertyContext::Auth)?;
        Ok(Self { reason, properties })
    }

    pub(crate) fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        if !version.is_v5() {
            return Err(EncodeError::NotInVersion("AUTH"));
        }
        let props = self.properties.content_len(PropertyContext::Auth)?;
        // MQTT 5.0 §3.15.2.1: only success without properties may omit both fields.
        Ok(match (self.reason, props) {
            (ReasonCode::SUCCESS, 0) => Plan::new(0, 0),
            _ => Plan::new(1 + Properties::wire_len(props), props),
        })
    }

    pub(crate) fn write(&self, plan: &Plan, buf: &mut BytesMut) {
        write_reason(self.reason, &self.properties, plan, buf);
    }
}
