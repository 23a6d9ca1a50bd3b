//! The MQTT rules for topic names and filters, shared by the parsers (which also apply
//! limits) and by the string-level matching functions (which must agree with the parsers on
//! what is valid).

use crate::{TopicError, TopicLimits};

/// Levels of a topic or filter; `a//b` has three, the middle one empty.
pub(crate) fn level_count(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'/').count() + 1
}

/// Length and level limits. Checked before the character rules so that an oversized input
/// is refused without scanning all of it more than once.
pub(crate) fn check_limits(s: &str, limits: TopicLimits) -> Result<(), TopicError> {
    let max = limits.effective_max_length();
    if s.len() > max {
        return Err(TopicError::TooLong { len: s.len(), max });
    }
    let levels = level_count(s);
    let max = limits.effective_max_levels();
    if levels > max {
        return Err(TopicError::TooManyLevels { levels, max });
    }
    Ok(())
}

/// Character rules of a topic name (what PUBLISH carries), without limits.
pub(crate) fn check_name_syntax(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty); // MQTT-4.7.3-1
    }
    for b in s.bytes() {
        match b {
            0 => return Err(TopicError::NullCharacter), // MQTT-4.7.3-2
            b'+' | b'#' => return Err(TopicError::WildcardInName), // MQTT-4.7.0-1
            _ => {}
        }
    }
    Ok(())
}

/// Character rules of a topic filter (what SUBSCRIBE, policies and rules carry), without
/// limits.
pub(crate) fn check_filter_syntax(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty); // MQTT-4.7.3-1
    }
    if s.bytes().any(|b| b == 0) {
        return Err(TopicError::NullCharacter); // MQTT-4.7.3-2
    }
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            // MQTT-4.7.1-1: `#` alone in its level, and that level is the last.
            if level != "#" || levels.peek().is_some() {
                return Err(TopicError::MisplacedMultiLevelWildcard);
            }
        } else if level.contains('+') && level != "+" {
            // MQTT-4.7.1-2
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Whether a topic whose first level is `level` is a `$`-topic, which filters starting with
/// a wildcard never match (MQTT-4.7.2-1). Wildcard levels never start with `$`, so this is
/// also "a filter level that can only match `$`-levels".
pub(crate) fn is_dollar(level: &str) -> bool {
    level.starts_with('$')
}
