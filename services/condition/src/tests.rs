use super::*;
use proptest::prelude::*;

fn message(payload: &str) -> MessageContext<'_> {
    MessageContext::new(
        "$devices/dev_1/events/temperature",
        1,
        Some("dev_1"),
        Some("reg_1"),
        payload.as_bytes(),
    )
}

fn holds(condition: &str, payload: &str) -> bool {
    let parsed = Condition::parse(condition);
    assert!(parsed.is_ok(), "{condition}: {parsed:?}");
    parsed.is_ok_and(|c| c.matches(&message(payload)))
}

fn error_at(condition: &str) -> usize {
    match Condition::parse(condition) {
        Ok(c) => panic!("{condition} parsed as {c}"),
        Err(e) => e.position,
    }
}

#[test]
fn spec_example_compares_a_payload_number() {
    assert!(holds("payload.celsius > 30", r#"{"celsius": 31.5}"#));
    assert!(!holds("payload.celsius > 30", r#"{"celsius": 30}"#));
    assert!(!holds("payload.celsius > 30", r#"{"celsius": "hot"}"#));
    assert!(!holds("payload.celsius > 30", "not json"));
    assert!(!holds("payload.celsius > 30", "{}"));
}

#[test]
fn message_attributes_are_readable() {
    let payload = "{}";
    assert!(holds(
        r#"topic == "$devices/dev_1/events/temperature""#,
        payload
    ));
    assert!(holds("qos == 1 and qos in [1, 2]", payload));
    assert!(holds(
        r#"device_id == "dev_1" and registry_id == "reg_1""#,
        payload
    ));
    let anonymous = MessageContext::new("t", 0, None, None, b"");
    let condition = Condition::parse("device_id == null and registry_id == null");
    assert!(condition.is_ok_and(|c| c.matches(&anonymous)));
}

#[test]
fn string_functions_and_prefixes() {
    assert!(holds(r#"startswith(topic, "$devices/")"#, "{}"));
    assert!(holds(r#"endswith(topic, "/temperature")"#, "{}"));
    assert!(holds(r#"contains(topic, "events")"#, "{}"));
    assert!(!holds(r#"startswith(topic, "$registries/")"#, "{}"));
    // A function over a non-string is null, and null is not true.
    assert!(!holds(r#"startswith(qos, "1")"#, "{}"));
}

#[test]
fn payload_paths_reach_nested_keys_and_indexes() {
    let payload = r#"{"a": {"b c": [10, {"d": true}]}, "s": "x"}"#;
    assert!(holds(r#"payload.a["b c"][0] == 10"#, payload));
    assert!(holds(r#"payload.a["b c"][1].d"#, payload));
    assert!(holds(r#"payload.a["b c"][7] == null"#, payload));
    assert!(holds(r#"payload.s in ["y", "x"]"#, payload));
    assert!(holds(r#"payload.missing.deeper == null"#, payload));
}

#[test]
fn boolean_logic_and_precedence() {
    let payload = r#"{"t": 5, "h": 80}"#;
    assert!(holds("payload.t > 1 and payload.h > 50 or false", payload));
    assert!(holds("false or payload.t == 5 and true", payload));
    assert!(holds("not payload.t > 10", payload));
    assert!(holds("not (payload.t > 1 and payload.h < 50)", payload));
    assert!(!holds("not payload.t == 5", payload));
}

#[test]
fn arithmetic_is_numeric_and_never_fails() {
    let payload = r#"{"f": 212, "n": "3"}"#;
    assert!(holds("(payload.f - 32) * 5 / 9 == 100", payload));
    assert!(holds("payload.f % 10 == 2 and -payload.f < 0", payload));
    assert!(holds("payload.f / 0 == null", payload));
    assert!(holds("payload.n + 1 == null", payload));
    assert!(holds("1 + 2 * 3 == 7", payload));
}

#[test]
fn mismatched_types_compare_false() {
    assert!(!holds(r#"payload.x == "1""#, r#"{"x": 1}"#));
    assert!(holds(r#"payload.x != "1""#, r#"{"x": 1}"#));
    assert!(!holds(r#"payload.x < "2""#, r#"{"x": 1}"#));
    assert!(holds(r#""abc" < "abd""#, "{}"));
}

#[test]
fn errors_point_at_the_problem() {
    assert_eq!(error_at("payload.celsius >"), 17);
    assert_eq!(error_at("payload.celsius > 30 and"), 24);
    assert_eq!(error_at("temperature > 3"), 0);
    assert_eq!(error_at("qos = 1"), 4);
    assert_eq!(error_at("qos == 1 @"), 9);
    assert_eq!(error_at(r#"topic == "open"#), 9);
    assert_eq!(error_at("1 < 2 < 3"), 6);
    assert_eq!(error_at("qos in [1, 2"), 12);
    assert_eq!(error_at("startswith(topic)"), 16);
    // Positions count characters, not bytes.
    assert_eq!(error_at(r#""é" == "é" and ?"#), 15);
    assert_eq!(error_at(""), 0);
}

#[test]
fn conditions_are_bounded() {
    let long = format!("{}1", "1 + ".repeat(MAX_LENGTH / 4));
    assert!(Condition::parse(&long).is_err());
    let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
    assert!(Condition::parse(&deep).is_err());
    let deep_not = format!("{}true", "not ".repeat(100));
    assert!(Condition::parse(&deep_not).is_err());
    // A long flat chain is deep as a tree: refused too, without overflowing anything.
    let chain = vec!["true"; 500].join(" and ");
    assert!(Condition::parse(&chain).is_err());
    let fine = vec!["true"; 20].join(" and ");
    assert!(Condition::parse(&fine).is_ok());
    let list = format!("qos in [{}]", vec!["1"; MAX_LIST_ITEMS + 1].join(","));
    assert!(Condition::parse(&list).is_err());
}

#[test]
fn payload_is_not_parsed_when_not_read() {
    let context = message("{not json");
    let condition = Condition::parse("qos == 1");
    assert!(condition.is_ok_and(|c| c.matches(&context)));
    assert!(!context.payload_parsed());
}

#[test]
fn printing_is_canonical() {
    let condition =
        Condition::parse(r#"payload["a b"].c[2] > 1 and not qos == 0 or topic in ["x\"y"]"#);
    let printed = condition
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    assert_eq!(
        printed,
        r#"(((payload["a b"].c[2] > 1) and (not (qos == 0))) or (topic in ["x\"y"]))"#
    );
    assert_eq!(Condition::parse(&printed), condition);
}

/// Pieces that make syntactically interesting strings more likely than random bytes do.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("payload.a".to_owned()),
        Just("payload[\"k\"]".to_owned()),
        Just("payload.x[0]".to_owned()),
        Just("topic".to_owned()),
        Just("qos".to_owned()),
        Just("device_id".to_owned()),
        Just(" and ".to_owned()),
        Just(" or ".to_owned()),
        Just("not ".to_owned()),
        Just(" in ".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just(",".to_owned()),
        Just("startswith(".to_owned()),
        Just(" == ".to_owned()),
        Just(" < ".to_owned()),
        Just(" + ".to_owned()),
        Just("-".to_owned()),
        Just(" * ".to_owned()),
        Just(" % ".to_owned()),
        (0u32..1000).prop_map(|n| n.to_string()),
        Just("1.5".to_owned()),
        "\"[a-z\\\\\"]{0,4}\"",
        Just("null".to_owned()),
        Just("true".to_owned()),
        ".{0,3}",
    ]
}

proptest! {
    #[test]
    fn parsing_arbitrary_text_never_panics(source in ".{0,200}") {
        let _ = Condition::parse(&source);
    }

    #[test]
    fn printed_conditions_parse_back_to_themselves(parts in proptest::collection::vec(fragment(), 1..24)) {
        let source = parts.concat();
        if let Ok(condition) = Condition::parse(&source) {
            let printed = condition.to_string();
            let reparsed = Condition::parse(&printed);
            prop_assert_eq!(reparsed, Ok(condition), "printed as {}", printed);
        }
    }

    #[test]
    fn evaluation_never_panics(parts in proptest::collection::vec(fragment(), 1..24), payload in ".{0,64}") {
        if let Ok(condition) = Condition::parse(&parts.concat()) {
            let _ = condition.matches(&message(&payload));
            let _ = condition.matches(&message(r#"{"a": 1, "k": "v", "x": [true]}"#));
        }
    }
}
