//! `contains` and `overlaps` (SPEC §4.2) against a brute-force reference: over a small
//! alphabet, every topic name up to one level deeper than the filters is enumerated, and
//! containment (every topic the inner filter matches, the outer one matches too) and
//! overlap (some topic both match) are decided by `matches` on each of them.

use iotcore_topic::{contains, matches, overlaps};
use proptest::prelude::*;

/// Level values of topics: those filters use, plus one they never name (`c`), the empty
/// level and a `$` level (special only at the start, MQTT-4.7.2-1).
const TOPIC_LEVELS: &[&str] = &["a", "b", "c", "", "$s"];
/// Filters are at most this deep; topics one level deeper tell `x/#` from `x/+`.
const MAX_FILTER_LEVELS: usize = 3;

fn all_topics() -> Vec<String> {
    let mut topics: Vec<Vec<&str>> = vec![vec![]];
    let mut out = Vec::new();
    for _ in 0..=MAX_FILTER_LEVELS {
        let mut next = Vec::new();
        for prefix in &topics {
            for level in TOPIC_LEVELS {
                let mut t = prefix.clone();
                t.push(level);
                let name = t.join("/");
                // The empty string is not a topic name (MQTT-4.7.3-1).
                if !name.is_empty() {
                    out.push(name);
                }
                next.push(t);
            }
        }
        topics = next;
    }
    out
}

fn filter() -> impl Strategy<Value = String> {
    let level = prop::sample::select(vec!["a", "b", "", "$s", "+"]);
    (
        prop::collection::vec(level, 1..=MAX_FILTER_LEVELS),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash {
                // `#` is only ever the last level (MQTT-4.7.1-2).
                let last = levels.len() - 1;
                levels[last] = "#";
            }
            levels.join("/")
        })
        // One empty level is the empty string, which is no filter at all.
        .prop_filter("a valid filter", |f| !f.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn containment_agrees_with_brute_force(outer in filter(), inner in filter()) {
        let topics = all_topics();
        let expected = topics
            .iter()
            .all(|t| !matches(&inner, t) || matches(&outer, t));
        prop_assert_eq!(contains(&outer, &inner), expected, "{} ⊇ {}", outer, inner);
    }

    #[test]
    fn overlap_agrees_with_brute_force(a in filter(), b in filter()) {
        let topics = all_topics();
        let expected = topics.iter().any(|t| matches(&a, t) && matches(&b, t));
        prop_assert_eq!(overlaps(&a, &b), expected, "{} ∩ {}", a, b);
    }

    #[test]
    fn every_filter_contains_itself(f in filter()) {
        prop_assert!(contains(&f, &f));
    }
}
