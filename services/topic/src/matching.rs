//! Topic matching and filter algebra on plain strings.
//!
//! These functions take `&str` so that they can be used on stored policies and rules
//! without re-parsing; they check syntax themselves (no limits) and answer `false` for
//! anything that is not a valid filter or topic name, which is the safe answer for an
//! authorization check. They never allocate.

use crate::syntax::{check_filter_syntax, check_name_syntax, is_dollar};

/// Whether the topic filter `filter` matches the topic name `topic` (MQTT 5 §4.7).
///
/// - `+` matches exactly one level, including an empty one (`+/+` matches `/finance`).
/// - `#` matches any number of levels, including none: `a/#` matches `a` (MQTT-4.7.1-1
///   "also matches the parent level").
/// - A filter starting with `+` or `#` never matches a topic starting with `$`
///   (MQTT-4.7.2-1).
/// - Levels compare byte for byte, without normalisation (MQTT-4.7.3-4).
///
/// Returns `false` when `filter` is not a valid filter or `topic` not a valid topic name.
pub fn matches(filter: &str, topic: &str) -> bool {
    // The levels first: most filters tried against a topic do not match it, and a miss needs
    // no syntax check (an invalid input could only have turned a match into a miss).
    matches_valid(filter, topic) && is_valid_filter(filter) && is_valid_topic_name(topic)
}

/// Whether `filter` is a valid topic filter (the character rules, without limits).
pub fn is_valid_filter(filter: &str) -> bool {
    check_filter_syntax(filter).is_ok()
}

/// Whether `topic` is a valid topic name (the character rules, without limits).
pub fn is_valid_topic_name(topic: &str) -> bool {
    check_name_syntax(topic).is_ok()
}

/// [`matches`] for a filter and a topic name already known to be valid
/// ([`is_valid_filter`], [`is_valid_topic_name`] or the parsers): the levels are compared
/// without checking the syntax of either again. On invalid input the answer is
/// meaningless (but there is no panic).
pub fn matches_valid(filter: &str, topic: &str) -> bool {
    // MQTT-4.7.2-1
    if is_dollar(topic) && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // Whatever is left of the topic, including nothing.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `outer` contains `inner`: every topic that `inner` matches is also matched by
/// `outer` (SPEC §4.2, used to grant SUBSCRIBE against policy filters).
///
/// For example `a/+/c` ⊂ `a/#`, `a` ⊂ `a/#`, `a/#` ⊂ `a/#`, `+/x` ⊂ `#`, `#` ⊂ `+/#`; but
/// `a/#` ⊄ `a/+/#` (only the former matches `a`) and `$SYS/#` ⊄ `#` (MQTT-4.7.2-1).
///
/// Returns `false` when either is not a valid filter.
pub fn contains(outer: &str, inner: &str) -> bool {
    if check_filter_syntax(outer).is_err() || check_filter_syntax(inner).is_err() {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    let mut first = true;
    // Whether the levels of inner seen so far form a topic name on their own. They do not
    // before the first level, nor after a single empty one (that would be the empty string,
    // MQTT-4.7.3-1), and then an inner `#` cannot match its parent level.
    let mut prefix_is_topic = false;
    loop {
        match (o.next(), i.next()) {
            // Outer accepts any remainder; at the first level it excludes `$`-topics, which
            // inner matches exactly when its first level is a `$` literal.
            (Some("#"), Some(il)) => return !(first && is_dollar(il)),
            // Inner's topics stop at this level: `#` matches the parent too.
            (Some("#"), None) => return true,
            (None, None) => return true,
            // Inner's topics have more levels, or (when the outer has more) fewer than outer
            // needs. An inner `#` here still matches deeper topics, which outer does not.
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(ol), Some("#")) => {
                // Inner matches its parent topic (the levels so far), which `ol` (not `#`)
                // rejects because it needs one more level. Without a parent topic, inner's
                // `#` needs at least one level, like `+/#`.
                return !prefix_is_topic && ol == "+" && o.next() == Some("#");
            }
            (Some("+"), Some(il)) => {
                if first && is_dollar(il) {
                    return false;
                }
            }
            // A literal cannot contain a `+` that ranges over every value.
            (Some(_), Some("+")) => return false,
            (Some(ol), Some(il)) => {
                if ol != il {
                    return false;
                }
            }
        }
        prefix_is_topic = !first || !inner.starts_with('/');
        first = false;
    }
}

/// Whether some topic name is matched by both filters (SPEC §4.2: a subscription that only
/// overlaps a denied filter is granted, and the overlapping messages are filtered out).
///
/// Returns `false` when either is not a valid filter.
pub fn overlaps(a: &str, b: &str) -> bool {
    if check_filter_syntax(a).is_err() || check_filter_syntax(b).is_err() {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    let mut first = true;
    // Whether the common topic can stop after the levels seen so far; see `contains`. Only
    // a single level that one filter fixes to be empty (`/...`) prevents it.
    let mut prefix_is_topic = false;
    loop {
        match (x.next(), y.next()) {
            // Every valid filter suffix matches some continuation, and `#` accepts it; at the
            // first level `#` rejects what only a `$` literal on the other side matches.
            (Some("#"), Some(l)) | (Some(l), Some("#")) => return !(first && is_dollar(l)),
            // The other filter's topics stop here, and `#` matches the parent level.
            (Some("#"), None) | (None, Some("#")) => return prefix_is_topic,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(l)) | (Some(l), Some("+")) => {
                if first && is_dollar(l) {
                    return false;
                }
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return false;
                }
            }
        }
        prefix_is_topic = !first || !(a.starts_with('/') || b.starts_with('/'));
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_parent_and_descendants_mqtt_4_7_1_1() {
        // MQTT 5 §4.7.1.2 example.
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport/tennis"));
        assert!(matches("#", "/"));
        assert!(matches("a/#", "a/"));
    }

    #[test]
    fn plus_matches_exactly_one_level_mqtt_4_7_1_2() {
        // MQTT 5 §4.7.1.3 examples.
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
    }

    #[test]
    fn plus_matches_empty_levels() {
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/b", "/b"));
        assert!(matches("a/+/b", "a//b"));
        assert!(matches("+/+", "/"));
    }

    #[test]
    fn wildcard_first_level_never_matches_dollar_topics_mqtt_4_7_2_1() {
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(!matches("+/#", "$devices/d/events"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("$devices/+/events/#", "$devices/d1/events"));
        // Only the first level is special.
        assert!(matches("a/+", "a/$x"));
        assert!(matches("a/#", "a/$x/y"));
    }

    #[test]
    fn levels_compare_exactly_mqtt_4_7_3_4() {
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(!matches("/finance", "finance"));
        assert!(!matches("finance", "finance/"));
        assert!(matches("Accounts payable", "Accounts payable"));
    }

    #[test]
    fn invalid_input_never_matches() {
        assert!(!matches("", ""));
        assert!(!matches("a", ""));
        assert!(!matches("a/#/b", "a/x/b"));
        assert!(!matches("a+", "a+"));
        assert!(!matches("+", "+"));
        assert!(!matches("#", "#"));
        assert!(!matches("a\0", "a\0"));
    }

    /// On valid input the unchecked matcher answers as the checked one.
    #[test]
    fn matching_valid_input_agrees_with_the_checked_matcher() {
        let filters = [
            "#", "+", "+/#", "a/#", "a/+", "a/+/c", "a/b/c", "/a", "$SYS/#", "$d/+/e/#", "a//b",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "a/x/c", "/a", "$SYS/x", "$d/1/e", "a//b", "b",
        ];
        for filter in filters {
            assert!(is_valid_filter(filter), "{filter}");
            for topic in topics {
                assert!(is_valid_topic_name(topic), "{topic}");
                assert_eq!(
                    matches_valid(filter, topic),
                    matches(filter, topic),
                    "{filter} {topic}"
                );
            }
        }
        assert!(!is_valid_filter("a/#/b") && !is_valid_filter("a+") && !is_valid_filter(""));
        assert!(
            !is_valid_topic_name("a/+") && !is_valid_topic_name("a\0") && !is_valid_topic_name("")
        );
    }

    #[test]
    fn containment_examples_from_spec_4_2() {
        assert!(contains("a/#", "a/+/c"));
        assert!(!contains("a/+/#", "a/#"));
        assert!(contains("a/#", "a/#"));
        assert!(contains("a/#", "a"));
        assert!(contains("#", "+/x"));
        assert!(!contains("#", "$SYS/#"));
        assert!(contains("$SYS/#", "$SYS/+/x"));
        assert!(!contains("+/#", "$SYS/x"));
    }

    #[test]
    fn containment_of_hash_at_first_level() {
        // No topic has zero levels, so `#` and `+/#` match the same topics.
        assert!(contains("+/#", "#"));
        assert!(contains("#", "+/#"));
        assert!(!contains("+", "#"));
        assert!(!contains("+/+/#", "#"));
    }

    #[test]
    fn containment_needs_matching_depth() {
        assert!(!contains("a/+", "a"));
        assert!(!contains("a", "a/+"));
        assert!(!contains("a/+", "a/#"));
        assert!(contains("a/+/#", "a/+"));
        assert!(contains("+/+", "a/b"));
        assert!(!contains("a/b", "+/b"));
        assert!(!contains("a/b", "a/c"));
    }

    #[test]
    fn containment_of_policy_defaults() {
        // SPEC §4.2 built-in registry-client rights.
        assert!(contains("$devices/+/events/#", "$devices/d1/events/temp"));
        assert!(contains("$devices/+/events/#", "$devices/+/events"));
        assert!(!contains("$devices/+/events/#", "$devices/#"));
        assert!(!contains("$devices/+/events/#", "#"));
    }

    #[test]
    fn hash_after_a_lone_empty_level_has_no_parent_mqtt_4_7_3_1() {
        // `/#` would match its parent "" (one empty level), but that is the empty string,
        // which is not a topic name; so `/#` only matches topics of two or more levels.
        assert!(matches("/#", "/"));
        assert!(!matches("/#", ""));
        assert!(contains("/+/#", "/#"));
        assert!(contains("+/+/#", "/#"));
        assert!(!contains("/", "/#"));
        assert!(!overlaps("+", "/#"));
        assert!(!overlaps("/#", "+"));
        assert!(overlaps("/#", "/"));
        assert!(overlaps("+/#", "a"));
        // A non-empty first level is a topic by itself.
        assert!(!contains("a/+/#", "a/#"));
    }

    #[test]
    fn overlap_examples() {
        assert!(overlaps("a/+", "+/b"));
        assert!(overlaps("a/#", "a"));
        assert!(overlaps("a", "a/#"));
        assert!(overlaps("#", "+/+"));
        assert!(overlaps("fleet/+/secret/#", "fleet/r1/#"));
        assert!(!overlaps("a/+", "a"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("+/+", "+"));
    }

    #[test]
    fn overlap_respects_dollar_rule_mqtt_4_7_2_1() {
        assert!(!overlaps("#", "$SYS/#"));
        assert!(!overlaps("+/x", "$SYS/x"));
        assert!(overlaps("$SYS/#", "$SYS/+"));
        assert!(overlaps("a/+", "a/$x"));
    }

    #[test]
    fn invalid_filters_neither_contain_nor_overlap() {
        assert!(!contains("#", "a/#/b"));
        assert!(!contains("a#", "a#"));
        assert!(!contains("", ""));
        assert!(!overlaps("#", "a+"));
        assert!(!overlaps("", "#"));
    }
}
