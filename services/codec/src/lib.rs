//! MQTT 3.1, 3.1.1 and 5.0 packets: decoding from and encoding into byte buffers, with no
//! I/O.
//!
//! The decoder is strict: anything the specifications call malformed or a protocol error at
//! the packet level is a typed [`DecodeError`] (never a panic), and its
//! [`DecodeError::reason_code`] is what an MQTT 5 peer should be told. The size limit is
//! enforced from the fixed header alone, so an oversize packet is refused before its body is
//! buffered.
//!
//! ```
//! use bytes::BytesMut;
//! use iotcore_codec::{decode, Packet, ProtocolVersion};
//!
//! let mut buf = BytesMut::from(&[0xC0u8, 0x00][..]);
//! let packet = decode(&mut buf, ProtocolVersion::V3_1_1, 1024).unwrap();
//! assert_eq!(packet, Some(Packet::PingReq));
//! assert!(buf.is_empty());
//! ```

mod ack;
mod connect;
mod disconnect;
mod error;
mod fixed_header;
mod packet;
mod primitives;
mod properties;
mod property_context;
mod publish;
mod reason;
mod subscribe;
mod version;

pub use ack::{PubAck, PubComp, PubRec, PubRel};
pub use connect::{ConnAck, Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use error::{DecodeError, EncodeError};
pub use packet::{check, connect_protocol, decode, Packet};
pub use primitives::MAX_VARIABLE_BYTE_INTEGER;
pub use properties::Properties;
pub use publish::{Publish, PublishRef};
pub use reason::{connack_v3, ReasonCode};
pub use subscribe::{SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe};
pub use version::{ProtocolVersion, QoS};

/// The largest remaining length the fixed header can express.
pub const MAX_REMAINING_LENGTH: usize = MAX_VARIABLE_BYTE_INTEGER as usize;

/// Lengths worked out (and validated) before anything is written, so that a failed encode
/// leaves the output buffer untouched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// The fixed header's remaining length.
    pub remaining: usize,
    /// Content length of the packet's properties.
    pub props: usize,
    /// Content length of a second property set (CONNECT's will properties).
    pub extra: usize,
}

impl Plan {
    pub(crate) fn new(remaining: usize, props: usize) -> Self {
        Self {
            remaining,
            props,
            extra: 0,
        }
    }
}
