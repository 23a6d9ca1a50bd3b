//! `matches`, `contains` and `overlaps` against brute-force references.

mod support;

use iotcore_topic::{contains, matches, overlaps, TopicFilter, TopicLimits, TopicName};
use proptest::prelude::*;
use support::{
    deep_model, model_filters, reference_contains, reference_matches, reference_overlaps,
    small_model, valid_filter, valid_name, FILTER_LITERALS,
};

/// Levels mixing valid ones, wildcards, `$` levels and malformed wildcard use.
fn any_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "$x", "", "+", "#", "a+", "#b", "é", "$SYS", "a\0",
    ])
}

fn levels(max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(any_level(), 1..=max)
}

/// Valid filters over the model alphabet (see `support::model_topics`).
fn model_filter(max_levels: usize) -> impl Strategy<Value = Vec<&'static str>> {
    let literal_or_plus = prop::sample::select(vec![
        FILTER_LITERALS[0],
        FILTER_LITERALS[1],
        FILTER_LITERALS[2],
        "+",
    ]);
    (
        prop::collection::vec(literal_or_plus, 0..max_levels),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels
        })
        // The single empty level is the empty string, which is not a filter.
        .prop_filter("valid filter", |levels| valid_filter(levels))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn matches_agrees_with_reference(filter in levels(5), topic in levels(5)) {
        let expected = valid_filter(&filter)
            && valid_name(&topic)
            && reference_matches(&filter, &topic);
        prop_assert_eq!(matches(&filter.join("/"), &topic.join("/")), expected);
    }

    #[test]
    fn parsed_filters_and_names_agree_with_reference_validity(
        filter in levels(5),
        topic in levels(5),
    ) {
        let limits = TopicLimits::default();
        let filter = filter.join("/");
        let topic = topic.join("/");
        let parsed_filter = TopicFilter::parse(&filter, limits);
        let parsed_name = TopicName::parse(&topic, limits);
        let filter_levels: Vec<&str> = filter.split('/').collect();
        let topic_levels: Vec<&str> = topic.split('/').collect();
        prop_assert_eq!(parsed_filter.is_ok(), valid_filter(&filter_levels));
        prop_assert_eq!(parsed_name.is_ok(), valid_name(&topic_levels));
        if let (Ok(f), Ok(t)) = (parsed_filter, parsed_name) {
            prop_assert_eq!(f.matches(&t), reference_matches(&filter_levels, &topic_levels));
        }
    }

    #[test]
    fn contains_and_overlaps_agree_with_deep_model(
        a in model_filter(5),
        b in model_filter(5),
    ) {
        let model = deep_model();
        let (sa, sb) = (a.join("/"), b.join("/"));
        prop_assert_eq!(contains(&sa, &sb), reference_contains(&a, &b, model), "{} ⊇ {}", sa, sb);
        prop_assert_eq!(contains(&sb, &sa), reference_contains(&b, &a, model), "{} ⊇ {}", sb, sa);
        prop_assert_eq!(overlaps(&sa, &sb), reference_overlaps(&a, &b, model), "{} ∩ {}", sa, sb);
    }

    #[test]
    fn invalid_filters_neither_contain_nor_overlap(a in levels(4), b in levels(4)) {
        prop_assume!(!valid_filter(&a) || !valid_filter(&b));
        let (sa, sb) = (a.join("/"), b.join("/"));
        prop_assert!(!contains(&sa, &sb));
        prop_assert!(!overlaps(&sa, &sb));
    }
}

/// Every pair of filters of up to three levels, against every topic that decides them.
#[test]
fn contains_and_overlaps_agree_with_model_exhaustively() {
    let topics = small_model();
    let filters = model_filters(3);
    // Which model topics each filter matches, computed once.
    let matched: Vec<Vec<bool>> = filters
        .iter()
        .map(|f| topics.iter().map(|t| reference_matches(f, t)).collect())
        .collect();
    let mut checked = 0;
    for (a, ma) in filters.iter().zip(&matched) {
        for (b, mb) in filters.iter().zip(&matched) {
            let (sa, sb) = (a.join("/"), b.join("/"));
            let a_contains_b = ma.iter().zip(mb).all(|(x, y)| *x || !*y);
            let overlap = ma.iter().zip(mb).any(|(x, y)| *x && *y);
            assert_eq!(contains(&sa, &sb), a_contains_b, "{sa} ⊇ {sb}");
            assert_eq!(overlaps(&sa, &sb), overlap, "{sa} ∩ {sb}");
            checked += 1;
        }
    }
    // Every shape is covered: 83 filters without `#` (a single empty level is the empty
    // string, which is not a filter) and 21 with.
    assert_eq!(checked, 104 * 104);
}

/// Also the reference against the model's own brute force, on the examples SPEC §4.2 and the
/// MQTT specification give, so that the model is not trusted blindly.
#[test]
fn model_reproduces_known_answers() {
    let model = small_model();
    let f = |s: &'static str| -> Vec<&'static str> { s.split('/').collect() };
    assert!(reference_contains(&f("a/#"), &f("a/+"), model));
    assert!(!reference_contains(&f("a/+/#"), &f("a/#"), model));
    assert!(reference_contains(&f("#"), &f("+/a"), model));
    assert!(!reference_contains(&f("#"), &f("$x/#"), model));
    assert!(reference_contains(&f("+/#"), &f("#"), model));
    assert!(!reference_overlaps(&f("#"), &f("$x"), model));
    assert!(reference_overlaps(&f("a/+"), &f("+/$x"), model));
}
