//! Why a topic name, topic filter or subscription was refused.

/// Why a string is not an acceptable topic name, topic filter or subscription.
///
/// Each variant names one rule so that the broker can map it to the right MQTT reason code
/// (0x90 Topic Name invalid, 0x8F Topic Filter invalid, 0x9E Shared Subscriptions not
/// supported...) and the control plane to a field error, without parsing messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// MQTT-4.7.3-1: topic names and topic filters are at least one character long.
    #[error("topic is empty")]
    Empty,
    /// MQTT-4.7.3-2: topic names and topic filters must not contain U+0000.
    #[error("topic contains the null character U+0000")]
    NullCharacter,
    /// MQTT-4.7.0-1 (3.1.1: MQTT-4.7.1-1): wildcards are not allowed in a topic name.
    #[error("topic name contains a wildcard ('+' or '#')")]
    WildcardInName,
    /// MQTT-4.7.1-1 (3.1.1: MQTT-4.7.1-2): `#` must be a whole level and the last one.
    #[error("'#' must be the last level of a topic filter and occupy it entirely")]
    MisplacedMultiLevelWildcard,
    /// MQTT-4.7.1-2 (3.1.1: MQTT-4.7.1-3): `+` must occupy a whole level.
    #[error("'+' must occupy an entire level of a topic filter")]
    MisplacedSingleLevelWildcard,
    /// Longer than the configured maximum (or MQTT-4.7.3-3's 65,535 bytes).
    #[error("topic is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// Length of the refused string in bytes.
        len: usize,
        /// The effective maximum in bytes.
        max: usize,
    },
    /// More levels than the configured maximum.
    #[error("topic has {levels} levels, the maximum is {max}")]
    TooManyLevels {
        /// Number of `/`-separated levels of the refused string.
        levels: usize,
        /// The effective maximum number of levels.
        max: usize,
    },
    /// `$share/{group}/...` with an empty group (MQTT 5 §4.8.2).
    #[error("shared subscription has an empty share name")]
    EmptyShareGroup,
    /// `$share/{group}/...` where the group contains `+` or `#` (MQTT 5 §4.8.2).
    #[error("share name of a shared subscription must not contain '+' or '#'")]
    InvalidShareGroup,
    /// `$share/{group}` with no filter after the group (MQTT 5 §4.8.2).
    #[error("shared subscription has no topic filter after the share name")]
    MissingSharedFilter,
}
