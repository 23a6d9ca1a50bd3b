//! MQTT data representations (MQTT 5.0 §1.5): integers, variable byte integers, UTF-8 strings
//! and binary data, read from a complete packet body and written into a buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// The largest value a four-byte variable byte integer holds.
pub const MAX_VARIABLE_BYTE_INTEGER: u32 = 268_435_455;

/// Longest string or binary data a two-byte length prefix allows.
const MAX_STRING_LEN: usize = u16::MAX as usize;

/// Reads one varint from the front of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the value and the number of bytes it took.
pub(crate) fn read_variable_byte_integer(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A zero final byte after a continuation adds nothing: the value had a shorter
            // encoding, which MQTT 5.0 §1.5.5 forbids.
            if i > 0 && byte == 0 {
                return Err(DecodeError::NonMinimalVariableByteInteger);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::VariableByteIntegerTooLong)
}

/// Bytes a varint takes on the wire (values above the maximum still report 4; callers
/// reject them separately).
pub(crate) const fn variable_byte_integer_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_variable_byte_integer(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

/// Wire length of a length-prefixed string or binary value, checking the prefix can hold it.
pub(crate) fn prefixed_len(data: &[u8]) -> Result<usize, EncodeError> {
    if data.len() > MAX_STRING_LEN {
        return Err(EncodeError::StringTooLong(data.len()));
    }
    Ok(2 + data.len())
}

/// Writes a length-prefixed string or binary value whose length `prefixed_len` accepted.
pub(crate) fn put_prefixed(buf: &mut BytesMut, data: &[u8]) {
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

/// A cursor over one complete packet body.
///
/// Every read checks the remaining length first, so a short body is `DecodeError::Truncated`
/// rather than a panic; binary values are zero-copy slices of the body.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u16())
    }

    /// A packet identifier, which is never 0 where one is present (MQTT-2.2.1-3).
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u32())
    }

    pub(crate) fn variable_byte_integer(&mut self) -> Result<u32, DecodeError> {
        match read_variable_byte_integer(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::Truncated),
        }
    }

    /// A UTF-8 encoded string (MQTT 5.0 §1.5.4): valid UTF-8 without U+0000.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        if self.buf.len() < len {
            return Err(DecodeError::Truncated);
        }
        let text = std::str::from_utf8(&self.buf[..len]).map_err(|_| DecodeError::InvalidUtf8)?;
        // MQTT-1.5.4-2: a receiver must treat U+0000 as malformed.
        if text.as_bytes().contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        let owned = text.to_owned();
        self.buf.advance(len);
        Ok(owned)
    }

    /// Binary data (MQTT 5.0 §1.5.6) as a zero-copy slice of the body.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        if self.buf.len() < len {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything left in the body, without copying.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails if anything follows the packet's defined content.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}
