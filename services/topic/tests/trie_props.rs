//! `TopicTrie` against brute-force `matches` over random subscription churn.

use std::collections::HashMap;

use iotcore_topic::{matches, TopicFilter, TopicLimits, TopicTrie};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        filter: String,
        key: u8,
        value: u16,
    },
    Remove {
        filter: String,
        key: u8,
    },
    /// Removes the n-th live subscription (modulo their number), so removals hit.
    RemoveLive {
        n: usize,
    },
    Match {
        topic: String,
    },
}

fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "$x", ""])
}

fn filter() -> impl Strategy<Value = String> {
    let level_or_plus = prop::sample::select(vec!["a", "b", "$x", "", "+"]);
    (prop::collection::vec(level_or_plus, 0..4), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("valid filter", |f| !f.is_empty())
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..6)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("valid topic", |t| !t.is_empty())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (filter(), 0..4u8, any::<u16>())
            .prop_map(|(filter, key, value)| Op::Insert { filter, key, value }),
        1 => (filter(), 0..4u8).prop_map(|(filter, key)| Op::Remove { filter, key }),
        2 => any::<usize>().prop_map(|n| Op::RemoveLive { n }),
        3 => topic().prop_map(|topic| Op::Match { topic }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trie_agrees_with_brute_force(ops in prop::collection::vec(op(), 1..80)) {
        // The trie's value carries the filter so a visit says which subscription it was.
        let mut trie: TopicTrie<u8, (String, u16)> = TopicTrie::new();
        let mut reference: HashMap<(String, u8), u16> = HashMap::new();
        for op in ops {
            match op {
                Op::Insert { filter, key, value } => {
                    let parsed = TopicFilter::parse(&filter, TopicLimits::default());
                    prop_assert!(parsed.is_ok(), "{}", filter);
                    let Ok(parsed) = parsed else { continue };
                    let old = trie.insert(&parsed, key, (filter.clone(), value));
                    let expected = reference.insert((filter.clone(), key), value);
                    prop_assert_eq!(old.map(|(_, v)| v), expected);
                }
                Op::Remove { filter, key } => {
                    let removed = trie.remove(&filter, &key);
                    let expected = reference.remove(&(filter.clone(), key));
                    prop_assert_eq!(removed.map(|(_, v)| v), expected);
                }
                Op::RemoveLive { n } => {
                    let mut live: Vec<(String, u8)> = reference.keys().cloned().collect();
                    live.sort();
                    let Some((filter, key)) = live.get(n % live.len().max(1)).cloned() else {
                        continue;
                    };
                    let removed = trie.remove(&filter, &key);
                    let expected = reference.remove(&(filter, key));
                    prop_assert!(expected.is_some());
                    prop_assert_eq!(removed.map(|(_, v)| v), expected);
                }
                Op::Match { topic } => {
                    let mut visited = Vec::new();
                    trie.for_each_match(&topic, |key, (filter, value)| {
                        visited.push((*key, filter.clone(), *value));
                    });
                    let mut expected: Vec<(u8, String, u16)> = reference
                        .iter()
                        .filter(|((filter, _), _)| matches(filter, &topic))
                        .map(|((filter, key), value)| (*key, filter.clone(), *value))
                        .collect();
                    visited.sort();
                    expected.sort();
                    prop_assert_eq!(visited, expected, "topic {:?}", topic);
                }
            }
            prop_assert_eq!(trie.len(), reference.len());
            prop_assert_eq!(trie.is_empty(), reference.is_empty());
        }
        for ((filter, key), value) in &reference {
            prop_assert_eq!(trie.get(filter, key).map(|(_, v)| *v), Some(*value));
        }
        // Unsubscribing everything leaves nothing to match.
        for (filter, key) in reference.keys() {
            prop_assert!(trie.remove(filter, key).is_some());
        }
        prop_assert!(trie.is_empty());
        let mut any = false;
        trie.for_each_match("a", |_, _| any = true);
        prop_assert!(!any);
    }

    #[test]
    fn many_subscribers_on_one_filter(keys in prop::collection::hash_set(any::<u16>(), 0..200)) {
        // Crosses the small-vector / hash-map threshold in both directions.
        let f = TopicFilter::parse("$devices/+/events/#", TopicLimits::default());
        prop_assert!(f.is_ok());
        let Ok(f) = f else { return Ok(()) };
        let mut trie = TopicTrie::new();
        for key in &keys {
            prop_assert_eq!(trie.insert(&f, *key, ()), None);
        }
        let mut seen = Vec::new();
        trie.for_each_match("$devices/d1/events", |k, _| seen.push(*k));
        seen.sort_unstable();
        let mut expected: Vec<u16> = keys.iter().copied().collect();
        expected.sort_unstable();
        prop_assert_eq!(&seen, &expected);
        for key in &keys {
            prop_assert_eq!(trie.remove(f.as_str(), key), Some(()));
        }
        prop_assert!(trie.is_empty());
    }
}
