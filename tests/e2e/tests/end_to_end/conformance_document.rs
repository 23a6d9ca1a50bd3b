//! `tests/e2e/CONFORMANCE.md` names, for each MQTT statement, the test that checks it. This
//! keeps it true: every `file.rs::test_name` it names is a test function of that file, so a
//! test renamed or removed cannot leave the document pointing at nothing.

use std::path::{Path, PathBuf};

/// Where the document's file names are looked up: the end-to-end tests, then the crates
/// whose unit and property tests it cites (`codec: …`, `topic: …`, `broker: …`).
fn roots(e2e: &Path) -> Vec<PathBuf> {
    let services = e2e.join("../../services");
    vec![
        e2e.join("tests"),
        services.join("codec/tests"),
        services.join("topic/src"),
        services.join("topic/tests"),
        services.join("broker/src"),
    ]
}

#[test]
fn every_test_the_conformance_document_names_exists() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
    let document = std::fs::read_to_string(e2e.join("CONFORMANCE.md")).expect("CONFORMANCE.md");
    let roots = roots(e2e);
    let mut named = 0;
    let mut missing = Vec::new();
    // Code spans are the odd pieces between backticks.
    for span in document.split('`').skip(1).step_by(2) {
        let Some((file, name)) = span.split_once("::") else {
            continue;
        };
        if !file.ends_with(".rs") {
            continue;
        }
        named += 1;
        // `malformed.rs::connect_…` stands for every test whose name starts so.
        let wanted = match name.strip_suffix('…') {
            Some(prefix) => format!("fn {prefix}"),
            None => format!("fn {name}("),
        };
        let found = roots
            .iter()
            .filter_map(|root| std::fs::read_to_string(root.join(file)).ok())
            .any(|source| source.contains(&wanted));
        if !found {
            missing.push(span.to_owned());
        }
    }
    assert!(
        named > 100,
        "only {named} tests named; is the format still `file.rs::name`?"
    );
    assert!(
        missing.is_empty(),
        "CONFORMANCE.md names tests that do not exist: {missing:#?}"
    );
}
