//! Configurable size limits for topic names and filters (SPEC §3.5).

/// Maximum size of a topic name or topic filter, usually per tenant.
///
/// The effective limits are clamped to [`TopicLimits::PROTOCOL_MAX_LENGTH`] and
/// [`TopicLimits::MAX_LEVELS_CAP`] whatever is configured, so a misconfiguration cannot lift
/// the protocol's own bound or let a topic force deep recursion in the trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicLimits {
    /// Maximum length in bytes of the UTF-8 encoded string.
    pub max_length: usize,
    /// Maximum number of `/`-separated levels (`a/b` has two, `/` has two empty ones).
    pub max_levels: usize,
}

impl TopicLimits {
    /// MQTT-4.7.3-3: a topic is an MQTT UTF-8 string, so never longer than 65,535 bytes.
    pub const PROTOCOL_MAX_LENGTH: usize = 65_535;
    /// Hard ceiling on levels: trie operations recurse once per level, so this bounds stack
    /// use regardless of configuration. No real topic scheme comes near it.
    pub const MAX_LEVELS_CAP: usize = 256;

    /// The length limit actually enforced.
    pub fn effective_max_length(&self) -> usize {
        self.max_length.min(Self::PROTOCOL_MAX_LENGTH)
    }

    /// The level limit actually enforced.
    pub fn effective_max_levels(&self) -> usize {
        self.max_levels.min(Self::MAX_LEVELS_CAP)
    }
}

impl Default for TopicLimits {
    /// SPEC §3.5 defaults: 1024 bytes, 16 levels.
    fn default() -> Self {
        Self {
            max_length: 1024,
            max_levels: 16,
        }
    }
}
