//! The API walk: every operation of the committed `openapi/openapi.json` is called the way
//! it succeeds and the way it fails, from the one table of cases in `roles.rs`, and every
//! status it answers is one the document lists for it. A documented operation without a
//! case fails this test, and so does a case that matches no documented operation.

use crate::helpers::TestApp;
use crate::roles::{cases, Failure, Fixtures};
use axum::http::{Method, StatusCode};
use iotcore_api::{router, ApiState};
use iotcore_store::Store;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One operation of the document.
struct Operation {
    method: Method,
    template: String,
    /// The statuses the document lists for it.
    statuses: Vec<u16>,
}

impl Operation {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }

    /// Whether `path` (without its query) is an instance of this operation's template.
    fn matches(&self, method: &Method, path: &str) -> bool {
        let path = path.split('?').next().unwrap_or(path);
        let ours: Vec<&str> = self.template.split('/').collect();
        let theirs: Vec<&str> = path.split('/').collect();
        *method == self.method
            && ours.len() == theirs.len()
            && ours
                .iter()
                .zip(&theirs)
                .all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty()))
    }

    /// Literal segments: of two templates a path matches, the more literal one wins
    /// (`/v1/rules/{id}/dead-letters/replay` over a hypothetical `…/{letter}/replay`).
    fn literal_segments(&self) -> usize {
        self.template
            .split('/')
            .filter(|s| !s.starts_with('{'))
            .count()
    }

    fn documents(&self, status: StatusCode) -> bool {
        self.statuses.contains(&status.as_u16())
    }
}

fn committed_operations() -> Vec<Operation> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/openapi.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut operations = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let statuses = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .filter_map(|s| s.parse().ok())
                .collect();
            operations.push(Operation {
                method,
                template: template.clone(),
                statuses,
            });
        }
    }
    assert!(operations.len() > 40, "the document has its operations");
    operations
}

/// The API over a database nobody answers at: what a database outage looks like.
fn app_without_database(app: &TestApp) -> axum::Router {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    router(ApiState::new(&app.config, Store::from_pool(pool)).unwrap())
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn every_documented_operation_succeeds_and_fails_as_documented(pool: sqlx::PgPool) {
    let operations = committed_operations();
    let app = TestApp::new(pool);
    let fixtures = Fixtures::new(&app).await;
    let operator = app.operator_in(&fixtures.tenant);
    // Per operation: whether a case succeeded, and whether one failed.
    let mut walked: BTreeMap<String, (bool, bool)> = BTreeMap::new();

    for case in cases() {
        let what = format!("{} {}", case.method, case.path);
        let path = fixtures.fill(case.path).await;
        let operation = operations
            .iter()
            .filter(|o| o.matches(&case.method, &path))
            .max_by_key(|o| o.literal_segments())
            .unwrap_or_else(|| panic!("{what}: no documented operation has this path"));
        let name = operation.name();

        let response = app
            .call(
                &operator,
                case.method.clone(),
                &path,
                fixtures.body(&case.body),
            )
            .await;
        assert!(
            response.status.is_success(),
            "{name}: {} {:#?}",
            response.status,
            response.body
        );
        assert!(
            operation.documents(response.status),
            "{name} answers {}, which the document does not list",
            response.status
        );
        walked.entry(name.clone()).or_default().0 = true;

        let Some(failure) = &case.fails else { continue };
        let (expected, response) = match failure {
            Failure::Request {
                status,
                path,
                body,
                headers,
            } => {
                let path = fixtures.fill(path).await;
                assert!(
                    operation.matches(&case.method, &path),
                    "{name}: the failing call {path} is another operation"
                );
                let response = app
                    .call_with(
                        &operator,
                        case.method.clone(),
                        &path,
                        fixtures.body(body),
                        headers,
                    )
                    .await;
                (*status, response)
            }
            Failure::DatabaseDown { status } => {
                let down = TestApp {
                    router: app_without_database(&app),
                    config: app.config.clone(),
                    store: app.store.clone(),
                };
                (*status, down.get(&operator, &path).await)
            }
        };
        assert_eq!(response.status, expected, "{name}: {:#?}", response.body);
        response.assert_problem(expected);
        assert!(
            operation.documents(expected),
            "{name} fails with {expected}, which the document does not list"
        );
        walked.entry(name).or_default().1 = true;
    }

    let mut missing = Vec::new();
    for operation in &operations {
        let name = operation.name();
        let (succeeded, failed) = walked.get(&name).copied().unwrap_or_default();
        if !succeeded {
            missing.push(format!("{name}: no case succeeds"));
        }
        let documents_errors = operation.statuses.iter().any(|s| *s >= 400);
        if documents_errors && !failed {
            missing.push(format!("{name}: no case fails"));
        }
    }
    assert!(
        missing.is_empty(),
        "add these to the table in services/api/tests/api/roles.rs:\n{}",
        missing.join("\n")
    );
}
