//! Topic names: the topic of a PUBLISH, a will or a retained message.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::syntax::{check_limits, check_name_syntax, is_dollar};
use crate::{TopicError, TopicLimits};

/// A valid MQTT topic name: non-empty, no wildcards, no U+0000, within the limits it was
/// parsed with.
///
/// Only [`TopicName::parse`] builds one, so code that holds a `TopicName` never checks again.
/// Cloning is cheap (a reference count), because one message is routed to many subscribers.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Parses a topic name from untrusted input.
    pub fn parse(s: &str, limits: TopicLimits) -> Result<Self, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        check_limits(s, limits)?;
        check_name_syntax(s)?;
        Ok(Self(Arc::from(s)))
    }

    /// Checks untrusted input as [`TopicName::parse`] does, without keeping a copy of it.
    pub fn check(s: &str, limits: TopicLimits) -> Result<(), TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        check_limits(s, limits)?;
        check_name_syntax(s)
    }

    /// The topic as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated levels, empty ones included (`/a` yields `""`, `"a"`).
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether this is a `$`-topic (`$devices/...`, `$SYS/...`), which filters starting with
    /// `+` or `#` never match (MQTT-4.7.2-1).
    pub fn is_dollar_topic(&self) -> bool {
        is_dollar(&self.0)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Hash and Eq are those of the underlying str, so lookups by &str are consistent.
impl Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for TopicName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for TopicName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TopicName, TopicError> {
        TopicName::parse(s, TopicLimits::default())
    }

    #[test]
    fn empty_name_is_refused_mqtt_4_7_3_1() {
        assert_eq!(parse(""), Err(TopicError::Empty));
    }

    #[test]
    fn null_character_is_refused_mqtt_4_7_3_2() {
        assert_eq!(parse("a/\0/b"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn wildcards_are_refused_in_names_mqtt_4_7_0_1() {
        for s in ["#", "+", "a/+", "a/#", "a+b", "sport/tennis#", "+/x"] {
            assert_eq!(parse(s), Err(TopicError::WildcardInName), "{s}");
        }
    }

    #[test]
    fn spaces_empty_levels_dollar_and_unicode_are_valid_names() {
        // MQTT 5 §4.7.3 examples: "/" is two empty levels, spaces are allowed.
        for s in [
            "/",
            "/finance",
            "Accounts payable",
            "$SYS/x",
            "a//b",
            "dévice/温度",
        ] {
            let name = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(name.as_str(), s);
            assert_eq!(name.to_string(), s);
        }
    }

    #[test]
    fn names_are_compared_without_normalisation_mqtt_4_7_3_4() {
        assert_ne!(parse("ACCOUNTS"), parse("Accounts"));
        assert_ne!(parse("/finance"), parse("finance"));
    }

    #[test]
    fn length_limit_is_in_bytes() {
        let limits = TopicLimits {
            max_length: 4,
            max_levels: 16,
        };
        assert!(TopicName::parse("abcd", limits).is_ok());
        // "é" is two bytes in UTF-8.
        assert_eq!(
            TopicName::parse("abcé", limits),
            Err(TopicError::TooLong { len: 5, max: 4 })
        );
    }

    #[test]
    fn configured_length_cannot_exceed_mqtt_4_7_3_3() {
        let limits = TopicLimits {
            max_length: usize::MAX,
            max_levels: 16,
        };
        let long = "a".repeat(65_536);
        assert_eq!(
            TopicName::parse(&long, limits),
            Err(TopicError::TooLong {
                len: 65_536,
                max: 65_535
            })
        );
        assert!(TopicName::parse(&long[1..], limits).is_ok());
    }

    #[test]
    fn level_limit_counts_empty_levels() {
        let limits = TopicLimits {
            max_length: 1024,
            max_levels: 3,
        };
        assert!(TopicName::parse("a/b/c", limits).is_ok());
        assert!(TopicName::parse("//", limits).is_ok());
        assert_eq!(
            TopicName::parse("///", limits),
            Err(TopicError::TooManyLevels { levels: 4, max: 3 })
        );
    }

    #[test]
    fn configured_levels_are_capped() {
        let limits = TopicLimits {
            max_length: 65_535,
            max_levels: usize::MAX,
        };
        let deep = "a/".repeat(TopicLimits::MAX_LEVELS_CAP) + "a";
        assert_eq!(
            TopicName::parse(&deep, limits),
            Err(TopicError::TooManyLevels {
                levels: TopicLimits::MAX_LEVELS_CAP + 1,
                max: TopicLimits::MAX_LEVELS_CAP
            })
        );
    }

    #[test]
    fn dollar_topics_are_recognised() {
        assert!(parse("$devices/d/events").is_ok_and(|t| t.is_dollar_topic()));
        assert!(parse("devices/$x").is_ok_and(|t| !t.is_dollar_topic()));
    }

    #[test]
    fn levels_include_empty_ones() {
        let name = parse("/a//b/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(name.levels().collect::<Vec<_>>(), ["", "a", "", "b", ""]);
    }
}
