//! The MQTT bytes of a load run.
//!
//! CONNECT and SUBSCRIBE happen once per connection and go through `iotcore-codec`. The
//! packets of the measured phase (PUBLISH and its acknowledgements) are written from a
//! template and read in place, without decoding into owned values, so that the generator
//! allocates nothing per message and stays cheaper than the broker it measures.

use bytes::{BufMut, BytesMut};
use iotcore_codec::{Connect, Packet, Properties, ProtocolVersion, QoS, Subscribe};
use iotcore_codec::{SubscriptionOptions, MAX_REMAINING_LENGTH};

/// The largest packet the generator accepts from a broker. Its own messages are far
/// smaller; anything larger is a broken peer, not something to buffer.
pub const MAX_PACKET: usize = 4 << 20;

/// Bytes at the start of every payload: nanoseconds since the run's start, when it was sent,
/// then the run's tag (so that messages of an earlier run still queued in a broker are told
/// apart).
pub const HEADER_LEN: usize = 12;

/// Payload bytes of a JSON-stamped message without padding (see [`PublishTemplate::json`]):
/// `{"sent_ns":"`, 20 digits, `","run":"`, 8 hex digits, `","pad":"`, the padding, `"}`.
pub const JSON_MIN_LEN: usize = JSON_SENT.len() + 20 + JSON_RUN.len() + 8 + JSON_PAD.len() + 2;
const JSON_SENT: &[u8] = br#"{"sent_ns":""#;
const JSON_RUN: &[u8] = br#"","run":""#;
const JSON_PAD: &[u8] = br#"","pad":""#;

/// What can be wrong with the bytes a broker sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed remaining length")]
    RemainingLength,
    #[error("packet of {0} bytes is larger than {MAX_PACKET}")]
    TooLarge(usize),
    #[error("truncated {0} packet")]
    Truncated(&'static str),
    #[error("could not encode {0}")]
    Encode(String),
}

/// Packet types, the high nibble of the first byte.
pub mod kind {
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const DISCONNECT: u8 = 14;
}

/// `Some((header_len, total_len))` when `buf` starts with a whole packet, `None` when more
/// bytes are needed.
pub fn frame(buf: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let header = 2 + i;
            let total = header + remaining;
            if total > MAX_PACKET {
                return Err(WireError::TooLarge(total));
            }
            return Ok((buf.len() >= total).then_some((header, total)));
        }
    }
    Err(WireError::RemainingLength)
}

/// A received PUBLISH, borrowed from the read buffer.
pub struct Incoming<'a> {
    pub qos: u8,
    pub packet_id: u16,
    pub payload: &'a [u8],
}

/// Reads a PUBLISH body (after the fixed header) in place.
pub fn parse_publish(first: u8, body: &[u8], v5: bool) -> Result<Incoming<'_>, WireError> {
    const WHAT: &str = "PUBLISH";
    let qos = (first >> 1) & 0b11;
    let topic_len = usize::from(read_u16(body, 0).ok_or(WireError::Truncated(WHAT))?);
    let mut pos = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = read_u16(body, pos).ok_or(WireError::Truncated(WHAT))?;
        pos += 2;
    }
    if v5 {
        let (len, used) = read_varint(body.get(pos..).unwrap_or_default())?;
        pos += used + len;
    }
    let payload = body.get(pos..).ok_or(WireError::Truncated(WHAT))?;
    Ok(Incoming {
        qos,
        packet_id,
        payload,
    })
}

/// The packet identifier at the start of an acknowledgement's body, and whether an MQTT 5
/// reason code in it says the message was refused.
pub fn parse_ack(body: &[u8]) -> Result<(u16, bool), WireError> {
    let id = read_u16(body, 0).ok_or(WireError::Truncated("acknowledgement"))?;
    let refused = body.get(2).is_some_and(|&code| code >= 0x80);
    Ok((id, refused))
}

/// The send time and run tag carried by a payload, if it is one of ours.
pub fn stamp(payload: &[u8]) -> Option<(u64, u32)> {
    let sent: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let tag: [u8; 4] = payload.get(8..HEADER_LEN)?.try_into().ok()?;
    Some((u64::from_be_bytes(sent), u32::from_be_bytes(tag)))
}

/// The send time and run tag of a JSON-stamped payload, from its `sent_ns` and `run` fields
/// (as a webhook receiver finds them in the envelope).
pub fn json_stamp(sent_ns: &str, run: &str) -> Option<(u64, u32)> {
    let sent = sent_ns.parse().ok()?;
    let tag = u32::from_str_radix(run, 16).ok()?;
    Some((sent, tag))
}

/// Appends a two-byte acknowledgement (`first` is the whole first byte: PUBACK 0x40, PUBREC
/// 0x50, PUBREL 0x62, PUBCOMP 0x70).
pub fn put_ack(buf: &mut BytesMut, first: u8, packet_id: u16) {
    buf.put_u8(first);
    buf.put_u8(2);
    buf.put_u16(packet_id);
}

pub fn put_pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[0xC0, 0x00]);
}

/// One publisher's PUBLISH laid out once: each message copies the prefix, writes its packet
/// identifier and send time, then the filler.
pub struct PublishTemplate {
    prefix: Vec<u8>,
    qos: u8,
    v5: bool,
    tag: u32,
    json: bool,
    filler: Vec<u8>,
}

impl PublishTemplate {
    /// A template whose payload starts with the binary stamp ([`stamp`]); `payload_len`
    /// counts the stamp and is raised to [`HEADER_LEN`] if smaller.
    pub fn new(
        topic: &str,
        qos: u8,
        payload_len: usize,
        v5: bool,
        tag: u32,
    ) -> Result<Self, WireError> {
        Self::build(topic, qos, payload_len, v5, tag, false)
    }

    /// A template whose payload is a JSON object, so that a rule's webhook receives it as
    /// the envelope's `payload`: `{"sent_ns":"…","run":"…","pad":"xx…"}` with the send time
    /// as 20 decimal digits and the run tag as 8 hex digits (strings, since JSON numbers may
    /// not have leading zeros); `payload_len` is raised to [`JSON_MIN_LEN`] if smaller.
    pub fn json(
        topic: &str,
        qos: u8,
        payload_len: usize,
        v5: bool,
        tag: u32,
    ) -> Result<Self, WireError> {
        Self::build(topic, qos, payload_len, v5, tag, true)
    }

    fn build(
        topic: &str,
        qos: u8,
        payload_len: usize,
        v5: bool,
        tag: u32,
        json: bool,
    ) -> Result<Self, WireError> {
        let stamp_len = if json { JSON_MIN_LEN } else { HEADER_LEN };
        let payload_len = payload_len.max(stamp_len);
        let topic_len = u16::try_from(topic.len())
            .map_err(|_| WireError::Encode(format!("topic of {} bytes", topic.len())))?;
        let remaining =
            2 + topic.len() + if qos > 0 { 2 } else { 0 } + usize::from(v5) + payload_len;
        if remaining > MAX_REMAINING_LENGTH || remaining > MAX_PACKET {
            return Err(WireError::TooLarge(remaining));
        }
        let mut prefix = Vec::with_capacity(5 + 2 + topic.len());
        prefix.push(0x30 | (qos << 1));
        let mut rest = remaining;
        loop {
            let mut byte = (rest % 128) as u8;
            rest /= 128;
            if rest > 0 {
                byte |= 0x80;
            }
            prefix.push(byte);
            if rest == 0 {
                break;
            }
        }
        prefix.extend_from_slice(&topic_len.to_be_bytes());
        prefix.extend_from_slice(topic.as_bytes());
        Ok(Self {
            prefix,
            qos,
            v5,
            tag,
            json,
            filler: vec![b'x'; payload_len - stamp_len],
        })
    }

    /// Appends one PUBLISH sent at `sent_nanos` (since the run's start).
    pub fn put(&self, buf: &mut BytesMut, packet_id: u16, sent_nanos: u64) {
        buf.put_slice(&self.prefix);
        if self.qos > 0 {
            buf.put_u16(packet_id);
        }
        if self.v5 {
            buf.put_u8(0);
        }
        if self.json {
            let mut digits = [0u8; 28];
            write_digits(&mut digits[..20], sent_nanos, 10);
            write_digits(&mut digits[20..], u64::from(self.tag), 16);
            buf.put_slice(JSON_SENT);
            buf.put_slice(&digits[..20]);
            buf.put_slice(JSON_RUN);
            buf.put_slice(&digits[20..]);
            buf.put_slice(JSON_PAD);
            buf.put_slice(&self.filler);
            buf.put_slice(b"\"}");
        } else {
            buf.put_u64(sent_nanos);
            buf.put_u32(self.tag);
            buf.put_slice(&self.filler);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.prefix.len()
            + if self.qos > 0 { 2 } else { 0 }
            + usize::from(self.v5)
            + if self.json { JSON_MIN_LEN } else { HEADER_LEN }
            + self.filler.len()
    }
}

/// Writes `value` in `radix` (10 or 16, lower case) into all of `out`, zero-padded on the
/// left; digits that do not fit are cut off on the left.
fn write_digits(out: &mut [u8], mut value: u64, radix: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789abcdef"[(value % radix) as usize];
        value /= radix;
    }
}

/// Appends a CONNECT with a clean session.
pub fn put_connect(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
    keep_alive: u16,
) -> Result<(), WireError> {
    let connect = Connect {
        protocol: version,
        clean_start: true,
        keep_alive,
        client_id: client_id.to_owned(),
        will: None,
        username: username.map(str::to_owned),
        password: password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
        properties: Properties::default(),
    };
    Packet::Connect(connect)
        .encode(version, buf)
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Appends a SUBSCRIBE to one filter.
pub fn put_subscribe(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    filter: &str,
    qos: QoS,
) -> Result<(), WireError> {
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![(
            filter.to_owned(),
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
        )],
        properties: Properties::default(),
    };
    Packet::Subscribe(subscribe)
        .encode(version, buf)
        .map_err(|e| WireError::Encode(e.to_string()))
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn read_varint(buf: &[u8]) -> Result<(usize, usize), WireError> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = *buf.get(i).ok_or(WireError::Truncated("properties"))?;
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(WireError::RemainingLength)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotcore_codec::decode;

    #[test]
    fn template_publish_decodes_with_the_codec_and_reads_back_in_place() {
        for (qos, v5) in [(0, false), (1, false), (2, true), (1, true)] {
            let template = PublishTemplate::new("$devices/d1/events/x", qos, 300, v5, 9).unwrap();
            let mut buf = BytesMut::new();
            template.put(&mut buf, 7, 123_456);
            assert_eq!(buf.len(), template.len());
            let (header, total) = frame(&buf).unwrap().unwrap();
            let incoming = parse_publish(buf[0], &buf[header..total], v5).unwrap();
            assert_eq!(incoming.qos, qos);
            assert_eq!(incoming.payload.len(), 300);
            assert_eq!(stamp(incoming.payload), Some((123_456, 9)));
            let version = if v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            };
            let Some(Packet::Publish(p)) = decode(&mut buf, version, MAX_PACKET).unwrap() else {
                panic!("not a PUBLISH");
            };
            assert_eq!(p.topic, "$devices/d1/events/x");
            assert_eq!(p.packet_id, (qos > 0).then_some(7));
            assert_eq!(p.payload.len(), 300);
        }
    }

    #[test]
    fn json_template_payload_is_json_with_the_stamp() {
        let template = PublishTemplate::json("t/1", 1, 80, false, 0x00ab_cdef).unwrap();
        let mut buf = BytesMut::new();
        template.put(&mut buf, 3, 1_234_567_890_123);
        assert_eq!(buf.len(), template.len());
        let (header, total) = frame(&buf).unwrap().unwrap();
        let incoming = parse_publish(buf[0], &buf[header..total], false).unwrap();
        assert_eq!(incoming.payload.len(), 80);
        let value: serde_json::Value = serde_json::from_slice(incoming.payload).unwrap();
        assert_eq!(value["sent_ns"], "00000001234567890123");
        assert_eq!(value["run"], "00abcdef");
        let stamp = json_stamp(
            value["sent_ns"].as_str().unwrap(),
            value["run"].as_str().unwrap(),
        );
        assert_eq!(stamp, Some((1_234_567_890_123, 0x00ab_cdef)));
        // Too small a size still carries the whole stamp.
        let small = PublishTemplate::json("t/1", 0, 12, true, 1).unwrap();
        let mut buf = BytesMut::new();
        small.put(&mut buf, 0, u64::MAX);
        let (header, total) = frame(&buf).unwrap().unwrap();
        let incoming = parse_publish(buf[0], &buf[header..total], true).unwrap();
        assert_eq!(incoming.payload.len(), JSON_MIN_LEN);
        let value: serde_json::Value = serde_json::from_slice(incoming.payload).unwrap();
        assert_eq!(value["sent_ns"], u64::MAX.to_string());
        assert_eq!(json_stamp("12x", "1"), None);
    }

    #[test]
    fn frame_waits_for_the_whole_packet_and_refuses_oversize_ones() {
        assert_eq!(frame(&[0x30]).unwrap(), None);
        assert_eq!(frame(&[0x30, 3, 0, 1]).unwrap(), None);
        assert_eq!(frame(&[0x40, 2, 0, 1]).unwrap(), Some((2, 4)));
        assert_eq!(
            frame(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(WireError::TooLarge(268_435_460))
        );
        assert_eq!(
            frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(WireError::RemainingLength)
        );
    }

    #[test]
    fn truncated_publish_is_an_error_not_a_panic() {
        assert!(parse_publish(0x32, &[0, 5, b'a'], false).is_err());
        assert!(parse_publish(0x30, &[0, 1, b'a', 0x80], true).is_err());
        assert_eq!(stamp(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), None);
    }
}
