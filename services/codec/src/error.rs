//! Decoding and encoding errors.

use crate::reason::ReasonCode;

/// Why bytes from the network are not an acceptable MQTT packet.
///
/// Every variant is a reason to close the connection; [`DecodeError::reason_code`] gives the
/// MQTT 5.0 reason code to put in the DISCONNECT (or CONNACK) sent before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("variable byte integer is longer than four bytes")]
    VariableByteIntegerTooLong,
    #[error("variable byte integer is not encoded in the minimum number of bytes")]
    NonMinimalVariableByteInteger,
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidHeaderFlags { packet_type: u8, flags: u8 },
    #[error("packet ends before its declared content")]
    Truncated,
    #[error("{0} unexpected bytes after the end of the packet's content")]
    TrailingBytes(usize),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("string contains the null character U+0000")]
    NullCharacter,
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    #[error("topic name contains a wildcard character")]
    WildcardInTopicName,
    #[error("empty topic name")]
    EmptyTopicName,
    #[error("empty topic filter")]
    EmptyTopicFilter,
    #[error("packet identifier 0")]
    ZeroPacketId,
    #[error("SUBSCRIBE or UNSUBSCRIBE without topic filters")]
    NoTopicFilters,
    #[error("SUBACK or UNSUBACK without reason codes")]
    NoReasonCodes,
    #[error("reserved bits set in subscription options {0:#010b}")]
    InvalidSubscriptionOptions(u8),
    #[error("retain handling 3")]
    InvalidRetainHandling,
    #[error("protocol name does not match the protocol level")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("reserved CONNECT flag set")]
    ConnectReservedFlag,
    #[error("will QoS or will retain set without the will flag")]
    InvalidWillFlags,
    #[error("password flag set without the user name flag")]
    PasswordWithoutUsername,
    #[error("reserved CONNACK flags set {0:#010b}")]
    InvalidConnAckFlags(u8),
    #[error("CONNACK with session present and a failure code")]
    SessionPresentWithError,
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    #[error("authentication data without an authentication method")]
    AuthenticationDataWithoutMethod,
    #[error("property length exceeds the packet")]
    PropertyLengthExceedsPacket,
    #[error("properties do not end where their declared length says")]
    PropertyLengthMismatch,
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode { code: u8, packet: &'static str },
}

impl DecodeError {
    /// The MQTT 5.0 reason code that reports this fault to the peer.
    ///
    /// "Malformed" faults are those where the bytes cannot be parsed as the specification
    /// defines them; "protocol errors" parse but carry values the protocol forbids (§4.13).
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            InvalidProtocolName | UnsupportedProtocolVersion(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            WildcardInTopicName => ReasonCode::TOPIC_NAME_INVALID,
            EmptyTopicFilter => ReasonCode::TOPIC_FILTER_INVALID,
            InvalidPropertyValue(0x23) => ReasonCode::TOPIC_ALIAS_INVALID,
            EmptyTopicName
            | DupWithQoS0
            | ZeroPacketId
            | NoTopicFilters
            | NoReasonCodes
            | InvalidRetainHandling
            | PasswordWithoutUsername
            | SessionPresentWithError
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | AuthenticationDataWithoutMethod
            | InvalidReasonCode { .. } => ReasonCode::PROTOCOL_ERROR,
            VariableByteIntegerTooLong
            | NonMinimalVariableByteInteger
            | ReservedPacketType(_)
            | InvalidHeaderFlags { .. }
            | Truncated
            | TrailingBytes(_)
            | InvalidUtf8
            | NullCharacter
            | InvalidQoS(_)
            | InvalidSubscriptionOptions(_)
            | ConnectReservedFlag
            | InvalidWillFlags
            | InvalidConnAckFlags(_)
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | PropertyLengthExceedsPacket
            | PropertyLengthMismatch => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// Why a packet cannot be put on the wire.
///
/// Encoding checks what is needed for a well-formed frame (lengths, required identifiers,
/// properties allowed in the packet type); the content of strings is the caller's to get right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("remaining length {0} exceeds 268,435,455 bytes")]
    PacketTooLarge(usize),
    #[error("string or binary data of {0} bytes exceeds 65,535 bytes")]
    StringTooLong(usize),
    #[error("QoS {0} PUBLISH without a packet identifier")]
    MissingPacketId(u8),
    #[error("{0} needs at least one entry")]
    EmptyPayload(&'static str),
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    #[error("property {0:#04x} may appear only once in this packet")]
    DuplicateProperty(u8),
    #[error("subscription identifier {0} is outside 1..=268,435,455")]
    InvalidSubscriptionIdentifier(u32),
    #[error("retain handling {0} is not 0, 1 or 2")]
    InvalidRetainHandling(u8),
    #[error("a password requires a user name before MQTT 5")]
    PasswordWithoutUsername,
    #[error("{0} does not exist before MQTT 5")]
    NotInVersion(&'static str),
}
