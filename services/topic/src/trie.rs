//! The subscription index of one topic namespace.

use std::hash::Hash;
use std::str::Split;

use crate::small_map::SmallMap;
use crate::syntax::{check_name_syntax, is_dollar};
use crate::TopicFilter;

/// Subscriptions of one namespace (a tenant's, or a virtual broker's), indexed by filter, to
/// find every subscriber of a published topic.
///
/// `K` identifies a subscriber (a session id, a rule id) and `V` holds its options. Each
/// `(filter, key)` pair holds one value: subscribing again with the same filter replaces it.
///
/// Guarantees:
/// - [`for_each_match`](Self::for_each_match) costs O(levels × matching branches), walking
///   the topic's levels through the exact child plus the `+` and `#` branches, independent
///   of the number of subscriptions.
/// - Removing a subscription prunes the nodes it alone needed, so memory follows the live
///   subscriptions and does not grow with churn.
/// - Recursion depth is bounded by the levels of the deepest filter inserted, which
///   [`TopicLimits`](crate::TopicLimits) caps.
///
/// The trie holds no tenant information: keep one per namespace so that matching in one can
/// never reach another's subscribers (SPEC §3.2).
#[derive(Debug, Clone)]
pub struct TopicTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

/// One level of the filters. The `#` level is always last, so it needs no node of its own:
/// its subscribers sit in the `multi` map of the node before it.
#[derive(Debug, Clone)]
struct Node<K, V> {
    /// Children for literal levels.
    children: SmallMap<Box<str>, Node<K, V>>,
    /// Child for a `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// Boxed because most nodes are interior ones without subscribers, and a million-device
    /// trie has millions of nodes: this keeps a node at five words.
    subscribers: Option<Box<Subscribers<K, V>>>,
}

/// The subscriptions whose filter ends at a node.
#[derive(Debug, Clone)]
struct Subscribers<K, V> {
    /// Filters ending with this node's level.
    exact: SmallMap<K, V>,
    /// Filters continuing with `/#` after this node's level.
    multi: SmallMap<K, V>,
}

/// Where a filter ends relative to its last non-`#` node.
#[derive(Clone, Copy)]
enum End {
    Exact,
    Multi,
}

impl<K, V> Node<K, V> {
    const fn new() -> Self {
        Self {
            children: SmallMap::new(),
            plus: None,
            subscribers: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.subscribers.is_none()
    }

    fn visit_subscribers<'a, F: FnMut(&'a K, &'a V)>(&'a self, end: End, f: &mut F) {
        if let Some(subscribers) = &self.subscribers {
            let map = match end {
                End::Exact => &subscribers.exact,
                End::Multi => &subscribers.multi,
            };
            for (k, v) in map.iter() {
                f(k, v);
            }
        }
    }
}

impl<K: Eq + Hash, V> Node<K, V> {
    fn insert_subscriber(&mut self, end: End, key: K, value: V) -> Option<V> {
        let subscribers = self.subscribers.get_or_insert_with(|| {
            Box::new(Subscribers {
                exact: SmallMap::new(),
                multi: SmallMap::new(),
            })
        });
        match end {
            End::Exact => subscribers.exact.insert(key, value),
            End::Multi => subscribers.multi.insert(key, value),
        }
    }

    fn remove_subscriber(&mut self, end: End, key: &K) -> Option<V> {
        let subscribers = self.subscribers.as_deref_mut()?;
        let removed = match end {
            End::Exact => subscribers.exact.remove(key),
            End::Multi => subscribers.multi.remove(key),
        }?;
        if subscribers.exact.is_empty() && subscribers.multi.is_empty() {
            self.subscribers = None;
        }
        Some(removed)
    }

    fn get_subscriber(&self, end: End, key: &K) -> Option<&V> {
        let subscribers = self.subscribers.as_deref()?;
        match end {
            End::Exact => subscribers.exact.get(key),
            End::Multi => subscribers.multi.get(key),
        }
    }

    /// Visits the subscribers under this node that match the remaining topic levels `rest`.
    /// Never called for the root, so the `$` rule does not apply here.
    fn visit<'a, F: FnMut(&'a K, &'a V)>(&'a self, mut rest: Split<'_, char>, f: &mut F) {
        // `#` matches whatever remains, including nothing: `a/#` matches `a`
        // (MQTT-4.7.1-1).
        self.visit_subscribers(End::Multi, f);
        match rest.next() {
            None => self.visit_subscribers(End::Exact, f),
            Some(level) => {
                if let Some(plus) = &self.plus {
                    plus.visit(rest.clone(), f);
                }
                if let Some(child) = self.children.get(level) {
                    child.visit(rest, f);
                }
            }
        }
    }

    fn remove(&mut self, mut levels: Split<'_, char>, key: &K) -> Option<V> {
        match levels.next() {
            None => self.remove_subscriber(End::Exact, key),
            Some("#") => {
                if levels.next().is_some() {
                    return None; // not a valid filter, so never inserted
                }
                self.remove_subscriber(End::Multi, key)
            }
            Some("+") => {
                let child = self.plus.as_deref_mut()?;
                let removed = child.remove(levels, key)?;
                if child.is_empty() {
                    self.plus = None;
                }
                Some(removed)
            }
            Some(level) => {
                let child = self.children.get_mut(level)?;
                let removed = child.remove(levels, key)?;
                if child.is_empty() {
                    self.children.remove(level);
                }
                Some(removed)
            }
        }
    }

    #[cfg(test)]
    fn node_count(&self) -> usize {
        1 + self.plus.as_ref().map_or(0, |p| p.node_count())
            + self
                .children
                .iter()
                .map(|(_, c)| c.node_count())
                .sum::<usize>()
    }
}

impl<K, V> TopicTrie<K, V> {
    /// An empty trie; allocates nothing.
    pub const fn new() -> Self {
        Self {
            root: Node::new(),
            len: 0,
        }
    }

    /// Number of `(filter, key)` subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<K: Eq + Hash, V> TopicTrie<K, V> {
    /// Subscribes `key` with `filter`. Returns the value it replaced when `key` was already
    /// subscribed with this same filter (the subscription's options change, MQTT-3.8.4-3).
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = filter.levels();
        let replaced = loop {
            match levels.next() {
                None => break node.insert_subscriber(End::Exact, key, value),
                // A parsed filter has `#` only as its last level.
                Some("#") => break node.insert_subscriber(End::Multi, key, value),
                Some("+") => node = node.plus.get_or_insert_with(|| Box::new(Node::new())),
                Some(level) => {
                    node = node
                        .children
                        .get_or_insert_with(level, || Box::from(level), Node::new)
                }
            }
        };
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// Unsubscribes `key` from `filter` (as written when subscribing), returning its value,
    /// or `None` when there was no such subscription.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let removed = self.root.remove(filter.split('/'), key)?;
        self.len -= 1;
        Some(removed)
    }

    /// The value of `key`'s subscription with `filter`, if any.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let mut node = &self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            match level {
                "#" if levels.peek().is_none() => return node.get_subscriber(End::Multi, key),
                "+" => node = node.plus.as_deref()?,
                _ => node = node.children.get(level)?,
            }
        }
        node.get_subscriber(End::Exact, key)
    }

    /// Calls `f` with every subscription whose filter matches the topic name `topic`.
    ///
    /// A key subscribed with several filters that match is visited once per filter (MQTT
    /// leaves it to the server whether to deliver once or per subscription; the caller
    /// decides, e.g. taking the highest QoS, or one delivery per subscription identifier).
    /// The order of visits is unspecified. Filters starting with `+` or `#` do not match
    /// `$`-topics (MQTT-4.7.2-1). Nothing is visited when `topic` is not a valid topic name.
    /// The references passed to `f` live as long as the borrow of the trie, so `f` may keep
    /// them (to use the values in place rather than clone them).
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a K, &'a V)) {
        if check_name_syntax(topic).is_err() {
            return;
        }
        let mut levels = topic.split('/');
        let Some(first) = levels.next() else {
            return;
        };
        let root = &self.root;
        // MQTT-4.7.2-1: the wildcard branches of the first level are skipped for `$`-topics.
        if !is_dollar(first) {
            root.visit_subscribers(End::Multi, &mut f);
            if let Some(plus) = &root.plus {
                plus.visit(levels.clone(), &mut f);
            }
        }
        if let Some(child) = root.children.get(first) {
            child.visit(levels, &mut f);
        }
    }
}

impl<K, V> Default for TopicTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopicLimits;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s, TopicLimits::default()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn matched(trie: &TopicTrie<u32, &'static str>, topic: &str) -> Vec<(u32, &'static str)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, v| out.push((*k, *v)));
        out.sort_unstable();
        out
    }

    fn trie_of(filters: &[(&'static str, u32)]) -> TopicTrie<u32, &'static str> {
        let mut trie = TopicTrie::new();
        for (f, k) in filters {
            assert_eq!(trie.insert(&filter(f), *k, *f), None);
        }
        trie
    }

    #[test]
    fn exact_plus_and_hash_subscribers_are_found() {
        let trie = trie_of(&[
            ("sport/tennis/player1", 1),
            ("sport/tennis/+", 2),
            ("sport/#", 3),
            ("#", 4),
            ("+/+/player1", 5),
            ("sport/tennis/player2", 6),
        ]);
        assert_eq!(
            matched(&trie, "sport/tennis/player1"),
            [
                (1, "sport/tennis/player1"),
                (2, "sport/tennis/+"),
                (3, "sport/#"),
                (4, "#"),
                (5, "+/+/player1")
            ]
        );
    }

    #[test]
    fn hash_matches_parent_level_mqtt_4_7_1_1() {
        let trie = trie_of(&[("sport/#", 1), ("sport/tennis/#", 2)]);
        assert_eq!(matched(&trie, "sport"), [(1, "sport/#")]);
        assert_eq!(
            matched(&trie, "sport/tennis"),
            [(1, "sport/#"), (2, "sport/tennis/#")]
        );
    }

    #[test]
    fn plus_matches_one_possibly_empty_level_mqtt_4_7_1_2() {
        let trie = trie_of(&[("sport/+", 1), ("+/+", 2)]);
        assert_eq!(matched(&trie, "sport"), []);
        assert_eq!(matched(&trie, "sport/"), [(1, "sport/+"), (2, "+/+")]);
        assert_eq!(matched(&trie, "/finance"), [(2, "+/+")]);
        assert_eq!(matched(&trie, "sport/tennis/x"), []);
    }

    #[test]
    fn dollar_topics_skip_first_level_wildcards_mqtt_4_7_2_1() {
        let trie = trie_of(&[
            ("#", 1),
            ("+/monitor/Clients", 2),
            ("$SYS/#", 3),
            ("$SYS/monitor/+", 4),
            ("a/+", 5),
        ]);
        assert_eq!(
            matched(&trie, "$SYS/monitor/Clients"),
            [(3, "$SYS/#"), (4, "$SYS/monitor/+")]
        );
        // Deeper `$` levels are ordinary.
        assert_eq!(matched(&trie, "a/$x"), [(1, "#"), (5, "a/+")]);
    }

    #[test]
    fn invalid_topics_match_nothing() {
        let trie = trie_of(&[("#", 1), ("+", 2)]);
        for topic in ["", "+", "#", "a/+", "a\0"] {
            assert_eq!(matched(&trie, topic), [], "{topic:?}");
        }
    }

    #[test]
    fn same_key_and_filter_replaces_value_mqtt_3_8_4_3() {
        let mut trie = TopicTrie::new();
        let f = filter("a/+");
        assert_eq!(trie.insert(&f, 1u32, "old"), None);
        assert_eq!(trie.insert(&f, 1u32, "new"), Some("old"));
        assert_eq!(trie.len(), 1);
        assert_eq!(matched(&trie, "a/b"), [(1, "new")]);
        assert_eq!(trie.get("a/+", &1), Some(&"new"));
        assert_eq!(trie.get("a/#", &1), None);
    }

    #[test]
    fn overlapping_filters_of_one_key_are_visited_once_each() {
        let trie = trie_of(&[("a/#", 1), ("a/+", 1), ("a/b", 1)]);
        assert_eq!(trie.len(), 3);
        assert_eq!(matched(&trie, "a/b"), [(1, "a/#"), (1, "a/+"), (1, "a/b")]);
    }

    #[test]
    fn remove_returns_the_value_and_only_that_subscription() {
        let mut trie = trie_of(&[("a/#", 1), ("a/#", 2), ("a/+", 1)]);
        assert_eq!(trie.remove("a/#", &1), Some("a/#"));
        assert_eq!(trie.remove("a/#", &1), None);
        assert_eq!(trie.remove("a/b", &2), None);
        assert_eq!(trie.remove("a/#/b", &2), None);
        assert_eq!(trie.len(), 2);
        assert_eq!(matched(&trie, "a/b"), [(1, "a/+"), (2, "a/#")]);
    }

    #[test]
    fn removing_everything_prunes_every_node() {
        let filters = [
            "a/b/c",
            "a/+/c",
            "a/#",
            "+/+/#",
            "#",
            "$devices/d1/commands/#",
            "/",
            "a//",
        ];
        let mut trie = TopicTrie::new();
        for (i, f) in filters.iter().enumerate() {
            for key in 0..20u32 {
                trie.insert(&filter(f), key, i);
            }
        }
        assert!(trie.root.node_count() > 5);
        for f in filters.iter().rev() {
            for key in 0..20u32 {
                assert!(trie.remove(f, &key).is_some(), "{f} {key}");
            }
        }
        assert!(trie.is_empty());
        assert_eq!(trie.root.node_count(), 1);
        assert!(trie.root.is_empty());
    }

    #[test]
    fn removing_a_branch_keeps_its_siblings() {
        let mut trie = trie_of(&[("a/b/c", 1), ("a/b", 2), ("a/x/y", 3)]);
        let before = trie.root.node_count();
        assert_eq!(trie.remove("a/x/y", &3), Some("a/x/y"));
        assert_eq!(trie.root.node_count(), before - 2);
        assert_eq!(matched(&trie, "a/b/c"), [(1, "a/b/c")]);
        assert_eq!(matched(&trie, "a/b"), [(2, "a/b")]);
    }

    proptest::proptest! {
        #[test]
        fn unsubscribing_everything_leaves_only_the_root(
            subs in proptest::collection::vec(
                (proptest::sample::select(vec![
                    "a", "a/b", "a/+", "a/#", "+/b/#", "#", "$x/+", "/", "a//b", "+/+/+",
                ]), 0..3u8),
                0..40,
            ),
            order in proptest::collection::vec(proptest::num::usize::ANY, 40),
        ) {
            let mut trie = TopicTrie::new();
            for (f, key) in &subs {
                trie.insert(&filter(f), *key, ());
            }
            let mut live: Vec<(&str, u8)> = subs.clone();
            live.sort_unstable();
            live.dedup();
            // Remove in a random order.
            for (i, n) in order.iter().enumerate().take(live.len()) {
                let j = i + n % (live.len() - i);
                live.swap(i, j);
            }
            for (f, key) in &live {
                proptest::prop_assert_eq!(trie.remove(f, key), Some(()));
            }
            proptest::prop_assert!(trie.is_empty());
            proptest::prop_assert_eq!(trie.root.node_count(), 1);
        }
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn nodes_stay_small() {
        // A trie of a million subscriptions holds over a million nodes; keep each one to a
        // few words.
        assert!(std::mem::size_of::<Node<u64, u64>>() <= 40);
    }
}
