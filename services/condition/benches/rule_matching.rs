//! Rule matching as the broker does it per message (SPEC §5): the tenant's rule filters in a
//! `TopicTrie`, then the conditions of the matched rules over one lazily parsed payload.
//! With 10 and with 10,000 rules, the cost per message should stay about the same, because
//! only the few rules whose filter matches are visited.
//!
//! Run with `cargo bench -p iotcore-condition --bench rule_matching`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use iotcore_condition::{Condition, MessageContext};
use iotcore_topic::{TopicFilter, TopicLimits, TopicTrie};
use std::sync::Arc;

/// A tenant's rules: most are for one device each, as fleets usually have them; a few use
/// wildcards and conditions.
fn index(rules: usize) -> TopicTrie<usize, Option<Arc<Condition>>> {
    let mut trie = TopicTrie::default();
    let condition = Condition::parse("payload.celsius > 30 and qos >= 1")
        .ok()
        .map(Arc::new);
    for i in 0..rules {
        let (filter, condition) = match i % 10 {
            0 => (format!("$devices/dev_{i}/events/+"), condition.clone()),
            _ => (format!("$devices/dev_{i}/events/temperature"), None),
        };
        if let Ok(filter) = TopicFilter::parse(&filter, TopicLimits::default()) {
            trie.insert(&filter, i, condition);
        }
    }
    // Rules every message of the fleet matches.
    for (i, filter) in ["$devices/+/events/#", "$devices/+/events/temperature"]
        .into_iter()
        .enumerate()
    {
        if let Ok(filter) = TopicFilter::parse(filter, TopicLimits::default()) {
            trie.insert(&filter, rules + i, condition.clone());
        }
    }
    trie
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("rule_matching");
    let payload = br#"{"celsius": 31.5, "humidity": 40}"#;
    for rules in [10, 10_000] {
        let trie = index(rules);
        let topic = "$devices/dev_0/events/temperature";
        group.bench_with_input(BenchmarkId::from_parameter(rules), &trie, |b, trie| {
            b.iter(|| {
                let message = MessageContext::new(topic, 1, Some("dev_0"), None, payload);
                let mut matched = 0usize;
                trie.for_each_match(black_box(topic), |_, condition| {
                    if condition.as_ref().is_none_or(|c| c.matches(&message)) {
                        matched += 1;
                    }
                });
                black_box(matched)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
