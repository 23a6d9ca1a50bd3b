//! MQTT topic names, topic filters and the per-namespace subscription trie.
//!
//! - [`TopicName`] and [`TopicFilter`] are parsed once at the edge (PUBLISH, SUBSCRIBE, the
//!   control plane) against [`TopicLimits`], and are valid by construction afterwards.
//!   [`TopicFilter::parse_subscription`] also recognises shared subscriptions.
//! - [`matches`], [`contains`] and [`overlaps`] are the MQTT matching rules and the filter
//!   algebra that policies need (SPEC §4.2), on plain strings.
//! - [`TopicTrie`] indexes a namespace's subscriptions to find a topic's subscribers in time
//!   proportional to the topic's depth.
//!
//! Statement ids (MQTT-4.7.x-y) refer to the MQTT 5.0 specification unless noted.

mod error;
mod filter;
mod limits;
mod matching;
mod name;
mod small_map;
mod syntax;
mod trie;

pub use error::TopicError;
pub use filter::{Subscription, TopicFilter};
pub use limits::TopicLimits;
pub use matching::{
    contains, is_valid_filter, is_valid_topic_name, matches, matches_valid, overlaps,
};
pub use name::TopicName;
pub use trie::TopicTrie;
