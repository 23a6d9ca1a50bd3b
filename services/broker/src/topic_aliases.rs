//! Topic aliases the broker assigns to the topics it sends one MQTT 5 client (MQTT 5
//! §3.3.2.3.4): the first PUBLISH of a topic carries the topic and an alias, later ones the
//! alias and an empty topic, which saves the topic's bytes on every message of a busy topic.
//!
//! Bounded by the smaller of the client's Topic Alias Maximum and the broker's
//! (`mqtt.topic_alias_maximum`): when every alias is taken, one not used recently is given
//! to the new topic (the "clock" approximation of least recently used, O(1) amortised).

use std::collections::HashMap;

/// How a PUBLISH names its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasUse {
    /// No alias: the topic is sent in full.
    None,
    /// The client knows this alias: the topic is sent empty.
    Known(u16),
    /// The alias is (re)assigned to the topic: both are sent (MQTT-3.3.2-12 lets the
    /// sender change an alias's mapping by sending it with a topic).
    New(u16),
}

/// The outbound alias table of one network connection: alias mappings end with the
/// connection (MQTT 5 §3.3.2.3.4), so a resumed session starts with none. The table is
/// made by the first alias assigned: most connections never have one.
pub struct OutboundAliases {
    max: u16,
    table: Option<Box<Table>>,
}

#[derive(Default)]
struct Table {
    by_topic: HashMap<String, u16>,
    /// Index `alias - 1`: the topic the alias stands for, and whether it was used since the
    /// clock hand last passed.
    slots: Vec<(String, bool)>,
    hand: usize,
}

impl OutboundAliases {
    /// A table of at most `max` aliases (0 turns aliases off).
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases { max, table: None }
    }

    /// Whether the client accepts aliases.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// The alias to send `topic` with.
    pub fn assign(&mut self, topic: &str) -> AliasUse {
        if self.max == 0 || topic.is_empty() {
            return AliasUse::None;
        }
        self.table
            .get_or_insert_with(Box::default)
            .assign(topic, self.max)
    }

    /// Takes back an alias just assigned whose PUBLISH was not sent, so that the client is
    /// never sent an alias it was not told the topic of.
    pub fn forget(&mut self, alias: u16) {
        if let Some(table) = &mut self.table {
            table.forget(alias);
        }
    }
}

impl Table {
    fn assign(&mut self, topic: &str, max: u16) -> AliasUse {
        if let Some(&alias) = self.by_topic.get(topic) {
            if let Some(slot) = self.slots.get_mut(usize::from(alias) - 1) {
                slot.1 = true;
            }
            return AliasUse::Known(alias);
        }
        if self.slots.len() < usize::from(max) {
            self.slots.push((topic.to_owned(), true));
            let alias = self.slots.len() as u16;
            self.by_topic.insert(topic.to_owned(), alias);
            return AliasUse::New(alias);
        }
        // Every alias is taken: give the first one not used since the hand last passed it.
        loop {
            let index = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let Some(slot) = self.slots.get_mut(index) else {
                return AliasUse::None;
            };
            if slot.1 {
                slot.1 = false;
                continue;
            }
            let old = std::mem::replace(&mut slot.0, topic.to_owned());
            slot.1 = true;
            self.by_topic.remove(&old);
            let alias = (index + 1) as u16;
            self.by_topic.insert(topic.to_owned(), alias);
            return AliasUse::New(alias);
        }
    }

    fn forget(&mut self, alias: u16) {
        if let Some(slot) = self.slots.get_mut(usize::from(alias).wrapping_sub(1)) {
            self.by_topic.remove(&slot.0);
            slot.0.clear();
            slot.1 = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_use_assigns_and_later_uses_are_known() {
        let mut aliases = OutboundAliases::new(2);
        assert_eq!(aliases.assign("a"), AliasUse::New(1));
        assert_eq!(aliases.assign("a"), AliasUse::Known(1));
        assert_eq!(aliases.assign("b"), AliasUse::New(2));
        assert_eq!(aliases.assign("a"), AliasUse::Known(1));
    }

    #[test]
    fn a_full_table_reuses_an_alias_not_used_recently() {
        let mut aliases = OutboundAliases::new(2);
        aliases.assign("a");
        aliases.assign("b");
        // Both were used; the hand clears them, then gives alias 1 to "c".
        assert_eq!(aliases.assign("c"), AliasUse::New(1));
        aliases.assign("c");
        // "b" was passed over without use since: it goes next.
        assert_eq!(aliases.assign("d"), AliasUse::New(2));
        assert_eq!(aliases.assign("c"), AliasUse::Known(1));
        assert!(matches!(aliases.assign("b"), AliasUse::New(_)));
        for n in 0..1000 {
            match aliases.assign(&format!("t{n}")) {
                AliasUse::New(alias) | AliasUse::Known(alias) => assert!((1..=2).contains(&alias)),
                AliasUse::None => panic!("no alias"),
            }
        }
        let table = aliases.table.expect("made by the first alias");
        assert!(table.by_topic.len() <= 2 && table.slots.len() == 2);
    }

    #[test]
    fn zero_turns_aliases_off_and_a_forgotten_alias_is_sent_with_its_topic_again() {
        let mut off = OutboundAliases::new(0);
        assert_eq!(off.assign("a"), AliasUse::None);
        assert!(off.table.is_none());
        let mut aliases = OutboundAliases::new(4);
        let AliasUse::New(alias) = aliases.assign("a") else {
            panic!("new alias");
        };
        aliases.forget(alias);
        assert!(matches!(aliases.assign("a"), AliasUse::New(_)));
    }
}
