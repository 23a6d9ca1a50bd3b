//! The packet enum and the entry points: `check`, `decode` and `Packet::encode`.

use bytes::{Buf, BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::fixed_header::{self, packet_type};
use crate::primitives::{put_variable_byte_integer, variable_byte_integer_len, Reader};
use crate::version::ProtocolVersion;
use crate::{
    Auth, ConnAck, Connect, Disconnect, Plan, PubAck, PubComp, PubRec, PubRel, Publish, SubAck,
    Subscribe, UnsubAck, Unsubscribe, MAX_REMAINING_LENGTH,
};

/// Any MQTT control packet.
// CONNECT (with its will) is the largest variant but arrives once per connection; boxing it
// would make every match on the hot PUBLISH path deal with an indirection for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubRec),
    PubRel(PubRel),
    PubComp(PubComp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// Says whether `buf` starts with a whole packet: `Ok(Some(len))` with its length in bytes,
/// `Ok(None)` if more bytes are needed.
///
/// Fails as soon as the fixed header shows a malformed remaining length or a packet longer
/// than `max_packet_size` (fixed header included), without waiting for the body.
pub fn check(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, DecodeError> {
    let Some(header) = fixed_header::parse(buf)? else {
        return Ok(None);
    };
    let total = header.total_len();
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Decodes one packet from the front of `buf`, consuming its bytes.
///
/// `Ok(None)` means more bytes are needed, and nothing was consumed. `version` is the
/// session's protocol; a CONNECT is decoded by the level it carries instead. A packet longer
/// than `max_packet_size` (fixed header included) is `DecodeError::PacketTooLarge` as soon as
/// its fixed header is readable, and a bad packet type or flags as soon as the first byte is,
/// so a peer cannot make us buffer a body we will refuse. After an error the connection must
/// be closed: how much of `buf` was consumed is unspecified.
///
/// PUBLISH payloads and other binary fields are slices of `buf`'s allocation, not copies.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = fixed_header::parse(buf)? else {
        return Ok(None);
    };
    let total = header.total_len();
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    fixed_header::validate(&header, version)?;
    if buf.len() < total {
        return Ok(None);
    }
    let mut body = buf.split_to(total).freeze();
    body.advance(header.header_len);
    let mut r = Reader::new(body);
    let r = &mut r;
    use packet_type::*;
    let packet = match header.packet_type {
        CONNECT => Packet::Connect(Connect::decode(r)?),
        CONNACK => Packet::ConnAck(ConnAck::decode(r, version)?),
        PUBLISH => Packet::Publish(Publish::decode(r, header.flags, version)?),
        PUBACK => Packet::PubAck(PubAck::decode(r, version)?),
        PUBREC => Packet::PubRec(PubRec::decode(r, version)?),
        PUBREL => Packet::PubRel(PubRel::decode(r, version)?),
        PUBCOMP => Packet::PubComp(PubComp::decode(r, version)?),
        SUBSCRIBE => Packet::Subscribe(Subscribe::decode(r, version)?),
        SUBACK => Packet::SubAck(SubAck::decode(r, version)?),
        UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::decode(r, version)?),
        UNSUBACK => Packet::UnsubAck(UnsubAck::decode(r, version)?),
        PINGREQ => {
            r.finish()?;
            Packet::PingReq
        }
        PINGRESP => {
            r.finish()?;
            Packet::PingResp
        }
        DISCONNECT => Packet::Disconnect(Disconnect::decode(r, version)?),
        AUTH => Packet::Auth(Auth::decode(r)?),
        // `validate` refused every other type.
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    Ok(Some(packet))
}

/// The protocol a CONNECT at the front of `buf` asks for, read from its first bytes.
///
/// Lets a server that failed to decode a first packet answer in the client's dialect (a
/// MQTT 5 CONNACK with a reason code, or a 3.x return code). `None` if `buf` does not start
/// with a CONNECT carrying a known protocol name and level.
pub fn connect_protocol(buf: &[u8]) -> Option<ProtocolVersion> {
    let header = fixed_header::parse(buf).ok()??;
    if header.packet_type != packet_type::CONNECT {
        return None;
    }
    let body = buf.get(header.header_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let name = body.get(2..2 + name_len)?;
    let protocol = ProtocolVersion::from_level(*body.get(2 + name_len)?)?;
    (name == protocol.protocol_name().as_bytes()).then_some(protocol)
}

impl Packet {
    /// Appends the packet's bytes to `buf` as `version` (a CONNECT uses its own `protocol`).
    ///
    /// MQTT 5 fields (properties, reason codes, subscription options other than QoS) are
    /// left out for 3.x. On error nothing has been written.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let plan = self.plan(version)?;
        buf.reserve(1 + variable_byte_integer_len(plan.remaining) + plan.remaining);
        buf.put_u8(self.first_byte());
        put_variable_byte_integer(buf, plan.remaining);
        match self {
            Self::Connect(p) => p.write(&plan, buf),
            Self::ConnAck(p) => p.write(version, &plan, buf),
            Self::Publish(p) => p.write(version, &plan, buf),
            Self::PubAck(p) => p.write(&plan, buf),
            Self::PubRec(p) => p.write(&plan, buf),
            Self::PubRel(p) => p.write(&plan, buf),
            Self::PubComp(p) => p.write(&plan, buf),
            Self::Subscribe(p) => p.write(version, &plan, buf),
            Self::SubAck(p) => p.write(version, &plan, buf),
            Self::Unsubscribe(p) => p.write(version, &plan, buf),
            Self::UnsubAck(p) => p.write(version, &plan, buf),
            Self::PingReq | Self::PingResp => {}
            Self::Disconnect(p) => p.write(&plan, buf),
            Self::Auth(p) => p.write(&plan, buf),
        }
        Ok(())
    }

    /// The number of bytes `encode` appends for this packet, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let plan = self.plan(version)?;
        Ok(1 + variable_byte_integer_len(plan.remaining) + plan.remaining)
    }

    /// The packet type's name as the specifications spell it, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::ConnAck(_) => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::PubAck(_) => "PUBACK",
            Self::PubRec(_) => "PUBREC",
            Self::PubRel(_) => "PUBREL",
            Self::PubComp(_) => "PUBCOMP",
            Self::Subscribe(_) => "SUBSCRIBE",
            Self::SubAck(_) => "SUBACK",
            Self::Unsubscribe(_) => "UNSUBSCRIBE",
            Self::UnsubAck(_) => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect(_) => "DISCONNECT",
            Self::Auth(_) => "AUTH",
        }
    }

    fn first_byte(&self) -> u8 {
        use packet_type::*;
        let (kind, flags) = match self {
            Self::Publish(p) => return p.first_byte(),
            Self::Connect(_) => (CONNECT, 0),
            Self::ConnAck(_) => (CONNACK, 0),
            Self::PubAck(_) => (PUBACK, 0),
            Self::PubRec(_) => (PUBREC, 0),
            Self::PubRel(_) => (PUBREL, 0b0010),
            Self::PubComp(_) => (PUBCOMP, 0),
            Self::Subscribe(_) => (SUBSCRIBE, 0b0010),
            Self::SubAck(_) => (SUBACK, 0),
            Self::Unsubscribe(_) => (UNSUBSCRIBE, 0b0010),
            Self::UnsubAck(_) => (UNSUBACK, 0),
            Self::PingReq => (PINGREQ, 0),
            Self::PingResp => (PINGRESP, 0),
            Self::Disconnect(_) => (DISCONNECT, 0),
            Self::Auth(_) => (AUTH, 0),
        };
        kind << 4 | flags
    }

    fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        let plan = match self {
            Self::Connect(p) => p.plan()?,
            Self::ConnAck(p) => p.plan(version)?,
            Self::Publish(p) => p.plan(version)?,
            Self::PubAck(p) => p.plan(version)?,
            Self::PubRec(p) => p.plan(version)?,
            Self::PubRel(p) => p.plan(version)?,
            Self::PubComp(p) => p.plan(version)?,
            Self::Subscribe(p) => p.plan(version)?,
            Self::SubAck(p) => p.plan(version)?,
            Self::Unsubscribe(p) => p.plan(version)?,
            Self::UnsubAck(p) => p.plan(version)?,
            Self::PingReq | Self::PingResp => Plan::new(0, 0),
            Self::Disconnect(p) => p.plan(version)?,
            Self::Auth(p) => p.plan(version)?,
        };
        if plan.remaining > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge(plan.remaining));
        }
        Ok(plan)
    }
}
