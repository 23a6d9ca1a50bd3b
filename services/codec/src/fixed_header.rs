//! The fixed header (MQTT 5.0 §2.1): packet type, flags and remaining length.

use crate::error::DecodeError;
use crate::primitives::read_variable_byte_integer;
use crate::version::ProtocolVersion;

/// Control packet type values (the high nibble of the first byte).
pub(crate) mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// A parsed fixed header; `header_len + remaining_len` is the whole packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FixedHeader {
    pub packet_type: u8,
    pub flags: u8,
    pub header_len: usize,
    pub remaining_len: usize,
}

impl FixedHeader {
    pub(crate) fn total_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Parses the fixed header at the front of `buf`; `Ok(None)` when it is not all there yet.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((remaining, len)) = read_variable_byte_integer(&buf[1..])? else {
        return Ok(None);
    };
    Ok(Some(FixedHeader {
        packet_type: first >> 4,
        flags: first & 0x0F,
        header_len: 1 + len,
        remaining_len: remaining as usize,
    }))
}

/// Rejects reserved packet types and reserved flag values (MQTT-2.1.3-1, MQTT 3.1.1 §2.2.2),
/// so a bad first byte is refused before the body is awaited.
pub(crate) fn validate(header: &FixedHeader, version: ProtocolVersion) -> Result<(), DecodeError> {
    use packet_type::*;
    let expected = match header.packet_type {
        PUBLISH => {
            let qos = (header.flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS(qos));
            }
            // MQTT-3.3.1-2: DUP must be 0 for QoS 0.
            if qos == 0 && header.flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQoS0);
            }
            return Ok(());
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        CONNECT | CONNACK | PUBACK | PUBREC | PUBCOMP | SUBACK | UNSUBACK | PINGREQ | PINGRESP
        | DISCONNECT => 0,
        AUTH if version.is_v5() => 0,
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    if header.flags != expected {
        return Err(DecodeError::InvalidHeaderFlags {
            packet_type: header.packet_type,
            flags: header.flags,
        });
    }
    Ok(())
}
