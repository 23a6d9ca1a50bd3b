//! Role × endpoint (SPEC §6.1): every operation answers 401 without a valid token, 403 to
//! a role that may not use it, succeeds for every role that may, and answers 404 (never
//! 403) to any caller of another tenant that names this tenant's resources.

use crate::helpers::{Caller, TestApp};
use axum::http::{Method, StatusCode};
use iotcore_api::auth::Role;
use serde_json::{json, Value};

/// The least a caller must be to use an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Any member of the tenant.
    Read,
    /// Admins and editors.
    Write,
    /// Admins: tenant settings.
    Admin,
    Operator,
}

impl Need {
    fn allows(self, role: Role) -> bool {
        match self {
            Need::Read => true,
            Need::Write => role != Role::Viewer,
            Need::Admin => matches!(role, Role::Admin | Role::Operator),
            Need::Operator => role == Role::Operator,
        }
    }
}

struct Case {
    method: Method,
    /// `{tenant}`, `{registry}`, `{device}`, `{broker}` and `{rule}` name the fixtures;
    /// `{fresh_…}` a resource created for this one call, because the call deletes it.
    path: &'static str,
    /// `{n}` is replaced by a number unique to the call, to keep names unique.
    body: Option<Value>,
    need: Need,
}

fn case(method: Method, path: &'static str, body: Option<Value>, need: Need) -> Case {
    Case {
        method,
        path,
        body,
        need,
    }
}

fn cases() -> Vec<Case> {
    use Need::*;
    let get = |path, need| case(Method::GET, path, None, need);
    let post = |path, body: Value, need| case(Method::POST, path, Some(body), need);
    let patch = |path, body: Value, need| case(Method::PATCH, path, Some(body), need);
    let delete = |path, need| case(Method::DELETE, path, None, need);
    let rule = json!({ "name": "rule-{n}", "topic_filter": "$devices/+/events/#",
                       "webhook": { "url": "https://hooks.example.com/iot" } });
    vec![
        get("/v1/tenants", Operator),
        post("/v1/tenants", json!({ "name": "t-{n}" }), Operator),
        get("/v1/tenants/{tenant}", Read),
        patch("/v1/tenants/{tenant}", json!({ "name": "acme-{n}" }), Admin),
        delete("/v1/tenants/{fresh_tenant}", Operator),
        get("/v1/registries", Read),
        post("/v1/registries", json!({ "name": "r-{n}" }), Write),
        get("/v1/registries/{registry}", Read),
        patch(
            "/v1/registries/{registry}",
            json!({ "description": "d-{n}" }),
            Write,
        ),
        delete("/v1/registries/{fresh_registry}", Write),
        get("/v1/registries/{registry}/devices", Read),
        post(
            "/v1/registries/{registry}/devices",
            json!({ "name": "d-{n}" }),
            Write,
        ),
        get("/v1/devices/{device}", Read),
        patch(
            "/v1/devices/{device}",
            json!({ "description": "d-{n}" }),
            Write,
        ),
        delete("/v1/devices/{fresh_device}", Write),
        get("/v1/devices/{device}/passwords", Read),
        post("/v1/devices/{device}/passwords", json!({}), Write),
        delete("/v1/devices/{fresh_device_password}", Write),
        get("/v1/registries/{registry}/passwords", Read),
        post("/v1/registries/{registry}/passwords", json!({}), Write),
        delete("/v1/registries/{fresh_registry_password}", Write),
        get("/v1/brokers", Read),
        post("/v1/brokers", json!({ "name": "b-{n}" }), Write),
        get("/v1/brokers/{broker}", Read),
        patch(
            "/v1/brokers/{broker}",
            json!({ "description": "d-{n}" }),
            Write,
        ),
        delete("/v1/brokers/{fresh_broker}", Write),
        get("/v1/brokers/{broker}/passwords", Read),
        post("/v1/brokers/{broker}/passwords", json!({}), Write),
        delete("/v1/brokers/{fresh_broker_password}", Write),
        get("/v1/rules", Read),
        post("/v1/rules", rule, Write),
        get("/v1/rules/{rule}", Read),
        patch("/v1/rules/{rule}", json!({ "enabled": false }), Write),
        delete("/v1/rules/{fresh_rule}", Write),
        post("/v1/devices/{device}/commands", json!({ "qos": 0 }), Write),
        post(
            "/v1/registries/{registry}/commands",
            json!({ "qos": 1 }),
            Write,
        ),
        post(
            "/v1/publish",
            json!({ "topic": "plant/{n}", "qos": 0 }),
            Write,
        ),
    ]
}

/// One tenant's resources, created by its operator.
struct Fixtures<'a> {
    app: &'a TestApp,
    tenant: String,
    owner: Caller,
    registry: String,
    device: String,
    broker: String,
    rule: String,
    counter: std::cell::Cell<u32>,
}

fn id(body: &Value) -> String {
    body["id"].as_str().unwrap().to_owned()
}

impl<'a> Fixtures<'a> {
    async fn new(app: &'a TestApp) -> Fixtures<'a> {
        let tenant = app.create_tenant("acme").await;
        let owner = app.operator_in(&tenant);
        let registry = app.create_registry(&owner, "fixture").await;
        let device = id(&app.create_device(&owner, &registry, "fixture").await);
        let broker = app
            .post(&owner, "/v1/brokers", json!({ "name": "fixture" }))
            .await;
        let rule = id(&app.create_rule(&owner, "fixture").await);
        Fixtures {
            app,
            tenant,
            owner,
            registry: id(&registry),
            device,
            broker: id(&broker.body),
            rule,
            counter: std::cell::Cell::new(0),
        }
    }

    fn next(&self) -> u32 {
        self.counter.set(self.counter.get() + 1);
        self.counter.get()
    }

    async fn created(&self, uri: &str, body: Value) -> String {
        let response = self.app.post(&self.owner, uri, body).await;
        assert_eq!(response.status, StatusCode::CREATED, "{:#?}", response.body);
        id(&response.body)
    }

    /// `path` with its placeholders filled, creating what `{fresh_…}` asks for.
    async fn fill(&self, path: &str) -> String {
        let n = self.next();
        let fresh = if path.contains("{fresh_tenant}") {
            self.app.create_tenant(&format!("fresh-{n}")).await
        } else if path.contains("{fresh_registry}") {
            self.created("/v1/registries", json!({ "name": format!("fresh-{n}") }))
                .await
        } else if path.contains("{fresh_device}") {
            let uri = format!("/v1/registries/{}/devices", self.registry);
            self.created(&uri, json!({ "name": format!("fresh-{n}") }))
                .await
        } else if path.contains("{fresh_broker}") {
            self.created("/v1/brokers", json!({ "name": format!("fresh-{n}") }))
                .await
        } else if path.contains("{fresh_rule}") {
            self.created(
                "/v1/rules",
                json!({ "name": format!("fresh-{n}"), "topic_filter": "a/#",
                        "webhook": { "url": "https://hooks.example.com/iot" } }),
            )
            .await
        } else if path.contains("{fresh_device_password}") {
            let uri = format!("/v1/registries/{}/devices", self.registry);
            let device = self
                .created(&uri, json!({ "name": format!("fresh-{n}") }))
                .await;
            let uri = format!("/v1/devices/{device}/passwords");
            let password = self.created(&uri, json!({})).await;
            format!("{device}/passwords/{password}")
        } else if path.contains("{fresh_registry_password}") {
            let uri = format!("/v1/registries/{}/passwords", self.registry);
            let password = self.created(&uri, json!({})).await;
            format!("{}/passwords/{password}", self.registry)
        } else if path.contains("{fresh_broker_password}") {
            let broker = self
                .created("/v1/brokers", json!({ "name": format!("fresh-{n}") }))
                .await;
            let uri = format!("/v1/brokers/{broker}/passwords");
            let password = self.created(&uri, json!({})).await;
            format!("{broker}/passwords/{password}")
        } else {
            String::new()
        };
        let mut filled = path
            .replace("{tenant}", &self.tenant)
            .replace("{registry}", &self.registry)
            .replace("{device}", &self.device)
            .replace("{broker}", &self.broker)
            .replace("{rule}", &self.rule);
        if let (Some(start), Some(end)) = (filled.find("{fresh_"), filled.find('}')) {
            filled.replace_range(start..=end, &fresh);
        }
        filled
    }

    fn body(&self, body: &Option<Value>) -> Option<Value> {
        let n = self.next().to_string();
        body.as_ref()
            .map(|b| serde_json::from_str(&b.to_string().replace("{n}", &n)).unwrap())
    }
}

fn names_a_resource(path: &str) -> bool {
    [
        "{tenant}",
        "{registry}",
        "{device}",
        "{broker}",
        "{rule}",
        "{fresh_",
    ]
    .iter()
    .any(|p| path.contains(p))
}

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn every_operation_checks_token_role_and_tenant(pool: sqlx::PgPool) {
    let app = TestApp::new(pool);
    let ours = Fixtures::new(&app).await;
    let theirs = app.create_tenant("other").await;
    let anonymous = Caller {
        token: None,
        tenant_header: None,
    };
    let forged = Caller {
        token: Some("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl".into()),
        tenant_header: None,
    };

    for case in cases() {
        let what = format!("{} {}", case.method, case.path);
        for caller in [&anonymous, &forged] {
            let path = ours.fill(case.path).await;
            app.call(caller, case.method.clone(), &path, ours.body(&case.body))
                .await
                .assert_problem(StatusCode::UNAUTHORIZED);
        }

        for role in [Role::Operator, Role::Admin, Role::Editor, Role::Viewer] {
            let caller = match role {
                Role::Operator => app.operator_in(&ours.tenant),
                role => app.member(role, &ours.tenant),
            };
            let path = ours.fill(case.path).await;
            let response = app
                .call(&caller, case.method.clone(), &path, ours.body(&case.body))
                .await;
            if case.need.allows(role) {
                assert!(
                    response.status.is_success(),
                    "{what} as {role}: {} {:#?}",
                    response.status,
                    response.body
                );
            } else {
                assert_eq!(response.status, StatusCode::FORBIDDEN, "{what} as {role}");
                response.assert_problem(StatusCode::FORBIDDEN);
            }
        }

        // Callers of another tenant that could use the operation in their own tenant
        // learn nothing about ours. (Operators manage every tenant: `/v1/tenants/{id}`
        // is theirs whatever tenant they act in.)
        if names_a_resource(case.path) && case.need != Need::Operator {
            let mut callers = vec![app.member(Role::Admin, &theirs)];
            if !case.path.starts_with("/v1/tenants/") {
                callers.push(app.operator_in(&theirs));
            }
            for caller in callers {
                let path = ours.fill(case.path).await;
                let response = app
                    .call(&caller, case.method.clone(), &path, ours.body(&case.body))
                    .await;
                assert_eq!(
                    response.status,
                    StatusCode::NOT_FOUND,
                    "{what} from another tenant: {:#?}",
                    response.body
                );
                response.assert_problem(StatusCode::NOT_FOUND);
            }
        }
    }
}
