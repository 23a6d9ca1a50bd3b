//! Brute-force references for the property tests, written straight from the MQTT 5 text
//! (§4.7) with slices and recursion, independently of the crate's iterator-based code.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::OnceLock;

/// Whether `levels` form a valid topic filter (MQTT-4.7.1-1/2, MQTT-4.7.3-1/2).
pub fn valid_filter(levels: &[&str]) -> bool {
    let joined = levels.join("/");
    !joined.is_empty()
        && !joined.contains('\0')
        && levels.iter().enumerate().all(|(i, level)| {
            if level.contains('#') {
                *level == "#" && i + 1 == levels.len()
            } else {
                !level.contains('+') || *level == "+"
            }
        })
}

/// Whether `levels` form a valid topic name (MQTT-4.7.0-1, MQTT-4.7.3-1/2).
pub fn valid_name(levels: &[&str]) -> bool {
    let joined = levels.join("/");
    !joined.is_empty() && !joined.contains(['\0', '+', '#'])
}

/// MQTT matching of a valid filter against a valid topic, both split into levels.
pub fn reference_matches(filter: &[&str], topic: &[&str]) -> bool {
    // MQTT-4.7.2-1
    let wildcard_first = matches!(filter.first(), Some(&"+") | Some(&"#"));
    let dollar_topic = topic.first().is_some_and(|l| l.starts_with('$'));
    if wildcard_first && dollar_topic {
        return false;
    }
    matches_from(filter, topic)
}

fn matches_from(filter: &[&str], topic: &[&str]) -> bool {
    match (filter.split_first(), topic.split_first()) {
        // `#` matches any number of remaining levels, zero included (the parent).
        (Some((&"#", _)), _) => true,
        (Some((&"+", f_rest)), Some((_, t_rest))) => matches_from(f_rest, t_rest),
        (Some((f, f_rest)), Some((t, t_rest))) => f == t && matches_from(f_rest, t_rest),
        (None, None) => true,
        _ => false,
    }
}

/// Literal levels that model filters may use.
pub const FILTER_LITERALS: [&str; 3] = ["a", "$x", ""];
/// Levels of model topics: the filter literals plus `"b"`, which no filter names.
pub const TOPIC_LEVELS: [&str; 4] = ["a", "$x", "", "b"];

/// Every valid topic of 1 to `max_levels` levels over [`TOPIC_LEVELS`] (all but the
/// single empty level, which is the empty string).
///
/// Why this finite set decides `contains` and `overlaps` exactly for filters of at most
/// `max_levels - 1` levels whose literals come from [`FILTER_LITERALS`]: take any topic T
/// (a witness that the inner filter matches T and the outer does not, or that both match
/// T) and map it to a model topic T' that every such filter matches exactly when it
/// matches T:
/// - A level of T that is not a filter literal can only be matched by `+` or `#`. At levels
///   after the first, replacing it by `"b"` (also matched by wildcards and by no literal)
///   changes no result. At the first level, a non-literal starting with `$` is matched by no
///   filter at all (no literal equals it, and MQTT-4.7.2-1 excludes wildcards), so T is no
///   witness; any other non-literal is replaced by `"b"`, which is not a `$` level either.
/// - A topic longer than `max_levels` is cut to `max_levels` levels: a filter of fewer
///   levels without `#` matches neither (it needs exactly its own number of levels), and
///   one ending in `#` at level j < `max_levels` looks only at the first j levels, which
///   the cut keeps.
///
/// So a witness exists among all topics if and only if one exists in the model.
pub fn model_topics(max_levels: usize) -> Vec<Vec<&'static str>> {
    sequences(&TOPIC_LEVELS, max_levels)
        .into_iter()
        .filter(|t| valid_name(t))
        .collect()
}

/// Every sequence of 1 to `max_levels` items of `alphabet`.
fn sequences(alphabet: &[&'static str], max_levels: usize) -> Vec<Vec<&'static str>> {
    let mut all = Vec::new();
    let mut layer: Vec<Vec<&'static str>> = vec![Vec::new()];
    for _ in 0..max_levels {
        layer = layer
            .iter()
            .flat_map(|prefix| {
                alphabet.iter().map(move |level| {
                    let mut sequence = prefix.clone();
                    sequence.push(level);
                    sequence
                })
            })
            .collect();
        all.extend(layer.iter().cloned());
    }
    all
}

/// [`model_topics`] for filters of up to 3 levels, built once per test binary.
pub fn small_model() -> &'static [Vec<&'static str>] {
    static MODEL: OnceLock<Vec<Vec<&'static str>>> = OnceLock::new();
    MODEL.get_or_init(|| model_topics(4))
}

/// [`model_topics`] for filters of up to 5 levels, built once per test binary.
pub fn deep_model() -> &'static [Vec<&'static str>] {
    static MODEL: OnceLock<Vec<Vec<&'static str>>> = OnceLock::new();
    MODEL.get_or_init(|| model_topics(6))
}

/// Every valid filter of 1 to `max_levels` levels over [`FILTER_LITERALS`], `+` and `#`.
pub fn model_filters(max_levels: usize) -> Vec<Vec<&'static str>> {
    let alphabet = [
        FILTER_LITERALS[0],
        FILTER_LITERALS[1],
        FILTER_LITERALS[2],
        "+",
        "#",
    ];
    sequences(&alphabet, max_levels)
        .into_iter()
        .filter(|f| valid_filter(f))
        .collect()
}

/// Brute-force containment over a model that is exact for the given filters.
pub fn reference_contains(outer: &[&str], inner: &[&str], model: &[Vec<&str>]) -> bool {
    model
        .iter()
        .all(|t| !reference_matches(inner, t) || reference_matches(outer, t))
}

/// Brute-force overlap over a model that is exact for the given filters.
pub fn reference_overlaps(a: &[&str], b: &[&str], model: &[Vec<&str>]) -> bool {
    model
        .iter()
        .any(|t| reference_matches(a, t) && reference_matches(b, t))
}
