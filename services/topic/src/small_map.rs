//! A map that stays a short vector while it is small.
//!
//! Most trie nodes have one child and most filters one or a few subscribers, where a
//! `HashMap` (48 bytes, and a table allocation of several slots) would dominate the memory
//! of a trie with a million subscriptions. A vector of a handful of pairs is smaller and as
//! fast to scan; it turns into a boxed `HashMap` only when it grows past [`PROMOTE_ABOVE`]
//! entries, so a filter with 100,000 subscribers still inserts in O(1).

use std::borrow::Borrow;
use std::collections::hash_map;
use std::collections::HashMap;
use std::hash::Hash;
use std::mem;

/// Entries beyond which the vector becomes a hash map.
const PROMOTE_ABOVE: usize = 16;
/// Entries at which a shrinking hash map goes back to a vector; lower than
/// [`PROMOTE_ABOVE`] so that churn around the threshold does not convert back and forth.
const DEMOTE_AT: usize = 8;

/// A map from `K` to `V`; iteration order is unspecified.
#[derive(Debug, Clone)]
pub(crate) enum SmallMap<K, V> {
    Vec(Vec<(K, V)>),
    // Boxed so that the common empty or small case costs one `Vec` (24 bytes) rather than
    // a `HashMap` (48); the extra indirection is paid only by large maps.
    #[allow(clippy::box_collection)]
    Map(Box<HashMap<K, V>>),
}

impl<K, V> SmallMap<K, V> {
    pub(crate) const fn new() -> Self {
        SmallMap::Vec(Vec::new())
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            SmallMap::Vec(v) => v.len(),
            SmallMap::Map(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn iter(&self) -> Iter<'_, K, V> {
        match self {
            SmallMap::Vec(v) => Iter::Vec(v.iter()),
            SmallMap::Map(m) => Iter::Map(m.iter()),
        }
    }
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Vec(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            SmallMap::Map(m) => m.get(key),
        }
    }

    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Vec(v) => v
                .iter_mut()
                .find(|(k, _)| (*k).borrow() == key)
                .map(|(_, v)| v),
            SmallMap::Map(m) => m.get_mut(key),
        }
    }

    /// Inserts or replaces; returns the replaced value.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            SmallMap::Vec(v) => {
                if let Some((_, old)) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(mem::replace(old, value));
                }
                if v.len() < PROMOTE_ABOVE {
                    push_lean(v, (key, value));
                    return None;
                }
                let mut map: HashMap<K, V> = mem::take(v).into_iter().collect();
                map.insert(key, value);
                *self = SmallMap::Map(Box::new(map));
                None
            }
            SmallMap::Map(m) => m.insert(key, value),
        }
    }

    /// The value for `key`, inserting `(new_key(), new_value())` first when absent.
    /// `new_key()` must equal `key`.
    pub(crate) fn get_or_insert_with<Q>(
        &mut self,
        key: &Q,
        new_key: impl FnOnce() -> K,
        new_value: impl FnOnce() -> V,
    ) -> &mut V
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let promote = match self {
            SmallMap::Vec(v) => {
                v.len() >= PROMOTE_ABOVE && !v.iter().any(|(k, _)| k.borrow() == key)
            }
            SmallMap::Map(_) => false,
        };
        if promote {
            if let SmallMap::Vec(v) = self {
                let map: HashMap<K, V> = mem::take(v).into_iter().collect();
                *self = SmallMap::Map(Box::new(map));
            }
        }
        match self {
            SmallMap::Vec(v) => {
                let index = match v.iter().position(|(k, _)| k.borrow() == key) {
                    Some(index) => index,
                    None => {
                        push_lean(v, (new_key(), new_value()));
                        v.len() - 1
                    }
                };
                &mut v[index].1
            }
            // Allocates the key even when present; std offers no lookup-then-insert by a
            // borrowed key, and inserts are rare next to lookups.
            SmallMap::Map(m) => m.entry(new_key()).or_insert_with(new_value),
        }
    }

    /// Removes `key`, giving memory back so that a map does not stay large after churn.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Vec(v) => {
                let index = v.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, value) = v.swap_remove(index);
                if v.capacity() > 2 * v.len() {
                    v.shrink_to_fit();
                }
                Some(value)
            }
            SmallMap::Map(m) => {
                let value = m.remove(key)?;
                if m.len() <= DEMOTE_AT {
                    let pairs: Vec<(K, V)> = mem::take(&mut **m).into_iter().collect();
                    *self = SmallMap::Vec(pairs);
                } else if m.capacity() > 4 * m.len() {
                    // Amortised: after shrinking, the map must lose three quarters of its
                    // entries before this runs again.
                    m.shrink_to_fit();
                }
                Some(value)
            }
        }
    }
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Grows a small vector one slot at a time instead of doubling (the default first
/// allocation is four slots), because most of these vectors hold exactly one entry.
fn push_lean<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() {
        v.reserve_exact(1);
    }
    v.push(item);
}

/// Iterator over a [`SmallMap`]'s pairs, without boxing.
pub(crate) enum Iter<'a, K, V> {
    Vec(std::slice::Iter<'a, (K, V)>),
    Map(hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Vec(it) => it.next().map(|(k, v)| (k, v)),
            Iter::Map(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_across_promotion_and_demotion() {
        let mut map = SmallMap::new();
        for i in 0..100u32 {
            assert_eq!(map.insert(i, i), None);
        }
        assert!(matches!(map, SmallMap::Map(_)));
        assert_eq!(map.insert(7, 70), Some(7));
        assert_eq!(map.len(), 100);
        for i in 0..100u32 {
            let expected = if i == 7 { 70 } else { i };
            assert_eq!(map.get(&i), Some(&expected));
        }
        for i in 0..95u32 {
            assert!(map.remove(&i).is_some());
        }
        assert!(matches!(map, SmallMap::Vec(_)));
        assert_eq!(map.remove(&3), None);
        let mut rest: Vec<u32> = map.iter().map(|(k, _)| *k).collect();
        rest.sort_unstable();
        assert_eq!(rest, [95, 96, 97, 98, 99]);
    }

    #[test]
    fn get_or_insert_with_inserts_once() {
        let mut map: SmallMap<Box<str>, u32> = SmallMap::new();
        for round in 0..2 {
            for i in 0..40u32 {
                let key = i.to_string();
                *map.get_or_insert_with(key.as_str(), || Box::from(key.as_str()), || 0) += 1;
            }
            assert_eq!(map.len(), 40, "round {round}");
        }
        assert_eq!(map.get("39"), Some(&2));
        assert_eq!(map.get("40"), None);
    }

    #[test]
    fn a_single_entry_occupies_a_single_slot() {
        let mut map = SmallMap::new();
        map.insert(1u64, 1u64);
        match &map {
            SmallMap::Vec(v) => assert_eq!(v.capacity(), 1),
            SmallMap::Map(_) => panic!("one entry must stay a vector"),
        }
        map.remove(&1);
        match &map {
            SmallMap::Vec(v) => assert_eq!(v.capacity(), 0),
            SmallMap::Map(_) => panic!("an empty map must be a vector"),
        }
    }
}
