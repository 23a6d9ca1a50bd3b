//! Topic filters and subscriptions (plain or shared).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::syntax::{check_filter_syntax, check_limits, is_dollar};
use crate::{matching, TopicError, TopicLimits, TopicName};

/// The prefix of an MQTT 5 shared subscription (`$share/{group}/{filter}`).
const SHARE_PREFIX: &str = "$share/";

/// A valid MQTT topic filter: non-empty, no U+0000, `+` only as a whole level, `#` only as the
/// whole last level, within the limits it was parsed with.
///
/// Only [`TopicFilter::parse`] (or [`TopicFilter::parse_subscription`]) builds one. A filter
/// starting with `$share/` is, for `parse`, an ordinary filter matching `$share/...` topics;
/// use `parse_subscription` where the client's SUBSCRIBE is meant.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Arc<str>);

/// One entry of a SUBSCRIBE: a filter and, for a shared subscription, its share group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// The `{group}` of `$share/{group}/{filter}`: non-empty, without `/`, `+` or `#`.
    /// `None` for an ordinary subscription.
    pub share_group: Option<String>,
    /// The filter messages are matched against (without the `$share/{group}/` prefix).
    pub filter: TopicFilter,
}

impl TopicFilter {
    /// Parses a topic filter from untrusted input.
    pub fn parse(s: &str, limits: TopicLimits) -> Result<Self, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        check_limits(s, limits)?;
        check_filter_syntax(s)?;
        Ok(Self(Arc::from(s)))
    }

    /// Parses the topic filter of a SUBSCRIBE, recognising shared subscriptions
    /// `$share/{group}/{filter}` (MQTT 5 §4.8.2).
    ///
    /// The length limit applies to the whole string as sent, the level limit to the filter
    /// that messages are matched against.
    pub fn parse_subscription(s: &str, limits: TopicLimits) -> Result<Subscription, TopicError> {
        let Some(rest) = s.strip_prefix(SHARE_PREFIX) else {
            return Self::parse(s, limits).map(|filter| Subscription {
                share_group: None,
                filter,
            });
        };
        let max = limits.effective_max_length();
        if s.len() > max {
            return Err(TopicError::TooLong { len: s.len(), max });
        }
        let Some((group, filter)) = rest.split_once('/') else {
            return Err(if rest.is_empty() {
                TopicError::EmptyShareGroup
            } else {
                TopicError::MissingSharedFilter
            });
        };
        if group.is_empty() {
            return Err(TopicError::EmptyShareGroup);
        }
        if group.contains(['+', '#']) {
            return Err(TopicError::InvalidShareGroup);
        }
        if group.contains('\0') {
            return Err(TopicError::NullCharacter);
        }
        if filter.is_empty() {
            return Err(TopicError::MissingSharedFilter);
        }
        let filter = Self::parse(filter, limits)?;
        Ok(Subscription {
            share_group: Some(group.to_owned()),
            filter,
        })
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated levels, wildcards and empty levels included.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether the filter has a `+` or `#` level (and so can match more than one topic).
    pub fn has_wildcards(&self) -> bool {
        self.0.contains(['+', '#'])
    }

    /// Whether the filter can only match `$`-topics (its first level is a literal starting
    /// with `$`). Every other filter can only match topics that do not start with `$`
    /// (MQTT-4.7.2-1).
    pub fn is_dollar_filter(&self) -> bool {
        is_dollar(&self.0)
    }

    /// Whether this filter matches `topic` (see [`matching::matches`]).
    pub fn matches(&self, topic: &TopicName) -> bool {
        matching::matches(&self.0, topic.as_str())
    }

    /// Whether every topic `inner` matches is also matched by `self` (see
    /// [`matching::contains`]).
    pub fn contains(&self, inner: &TopicFilter) -> bool {
        matching::contains(&self.0, &inner.0)
    }

    /// Whether some topic is matched by both filters (see [`matching::overlaps`]).
    pub fn overlaps(&self, other: &TopicFilter) -> bool {
        matching::overlaps(&self.0, &other.0)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Hash and Eq are those of the underlying str, so lookups by &str are consistent.
impl Borrow<str> for TopicFilter {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for TopicFilter {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for TopicFilter {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl Subscription {
    /// Whether this is a shared subscription.
    pub fn is_shared(&self) -> bool {
        self.share_group.is_some()
    }
}

impl fmt::Display for Subscription {
    /// The subscription as the client wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.share_group {
            Some(group) => write!(f, "{SHARE_PREFIX}{group}/{}", self.filter),
            None => fmt::Display::fmt(&self.filter, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TopicFilter, TopicError> {
        TopicFilter::parse(s, TopicLimits::default())
    }

    fn sub(s: &str) -> Result<Subscription, TopicError> {
        TopicFilter::parse_subscription(s, TopicLimits::default())
    }

    #[test]
    fn valid_filters_from_the_mqtt_specification() {
        // MQTT 5 §4.7.1.2 and §4.7.1.3 examples, plus empty levels.
        for s in [
            "#",
            "sport/tennis/#",
            "sport/#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "/",
            "/+",
            "+/+",
            "a//b",
            "$SYS/#",
            "$share",
        ] {
            let filter = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(filter.as_str(), s);
            assert_eq!(filter.to_string(), s);
        }
    }

    #[test]
    fn empty_filter_is_refused_mqtt_4_7_3_1() {
        assert_eq!(parse(""), Err(TopicError::Empty));
    }

    #[test]
    fn null_character_is_refused_mqtt_4_7_3_2() {
        assert_eq!(parse("a/\0"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn hash_only_as_whole_last_level_mqtt_4_7_1_1() {
        for s in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/",
            "##",
            "a/#b",
            "#/#",
        ] {
            assert_eq!(
                parse(s),
                Err(TopicError::MisplacedMultiLevelWildcard),
                "{s}"
            );
        }
    }

    #[test]
    fn plus_only_as_whole_level_mqtt_4_7_1_2() {
        for s in ["sport+", "sport/+tennis", "++", "a/b+/c"] {
            assert_eq!(
                parse(s),
                Err(TopicError::MisplacedSingleLevelWildcard),
                "{s}"
            );
        }
    }

    #[test]
    fn limits_apply_to_filters() {
        let limits = TopicLimits {
            max_length: 5,
            max_levels: 2,
        };
        assert!(TopicFilter::parse("a/#", limits).is_ok());
        assert_eq!(
            TopicFilter::parse("a/b/#", limits),
            Err(TopicError::TooManyLevels { levels: 3, max: 2 })
        );
        assert_eq!(
            TopicFilter::parse("abcdef", limits),
            Err(TopicError::TooLong { len: 6, max: 5 })
        );
    }

    #[test]
    fn wildcards_and_dollar_are_reported() {
        let f = parse("a/+/c").unwrap_or_else(|e| panic!("{e}"));
        assert!(f.has_wildcards());
        assert!(!f.is_dollar_filter());
        let f = parse("$devices/d1/commands").unwrap_or_else(|e| panic!("{e}"));
        assert!(!f.has_wildcards());
        assert!(f.is_dollar_filter());
    }

    #[test]
    fn plain_subscription_has_no_group() {
        let s = sub("a/+/c").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.share_group, None);
        assert_eq!(s.filter, "a/+/c");
        assert!(!s.is_shared());
        assert_eq!(s.to_string(), "a/+/c");
    }

    #[test]
    fn shared_subscription_is_split_into_group_and_filter() {
        let s = sub("$share/workers/$devices/+/events/#").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.share_group.as_deref(), Some("workers"));
        assert_eq!(s.filter, "$devices/+/events/#");
        assert!(s.is_shared());
        assert_eq!(s.to_string(), "$share/workers/$devices/+/events/#");
        // The filter after the group may itself start with a wildcard.
        let s = sub("$share/g/#").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.filter, "#");
    }

    #[test]
    fn shared_subscription_group_must_be_a_plain_non_empty_level() {
        assert_eq!(sub("$share//a"), Err(TopicError::EmptyShareGroup));
        assert_eq!(sub("$share/"), Err(TopicError::EmptyShareGroup));
        assert_eq!(sub("$share/+/a"), Err(TopicError::InvalidShareGroup));
        assert_eq!(sub("$share/g#/a"), Err(TopicError::InvalidShareGroup));
        assert_eq!(sub("$share/g\0/a"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn shared_subscription_needs_a_valid_filter() {
        assert_eq!(sub("$share/g"), Err(TopicError::MissingSharedFilter));
        assert_eq!(sub("$share/g/"), Err(TopicError::MissingSharedFilter));
        assert_eq!(
            sub("$share/g/a#"),
            Err(TopicError::MisplacedMultiLevelWildcard)
        );
    }

    #[test]
    fn share_lookalikes_are_plain_filters() {
        for s in ["$share", "$sharex/g/a", "$SHARE/g/a"] {
            let parsed = sub(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(parsed.share_group, None, "{s}");
            assert_eq!(parsed.filter, s);
        }
    }

    #[test]
    fn shared_subscription_limits() {
        let limits = TopicLimits {
            max_length: 12,
            max_levels: 2,
        };
        // Levels count the filter only: "$share/g/a/b" has two filter levels.
        assert!(TopicFilter::parse_subscription("$share/g/a/b", limits).is_ok());
        assert_eq!(
            TopicFilter::parse_subscription("$share/g/a/b/c", limits),
            Err(TopicError::TooLong { len: 14, max: 12 })
        );
        let limits = TopicLimits {
            max_length: 100,
            max_levels: 2,
        };
        assert_eq!(
            TopicFilter::parse_subscription("$share/g/a/b/c", limits),
            Err(TopicError::TooManyLevels { levels: 3, max: 2 })
        );
    }
}
