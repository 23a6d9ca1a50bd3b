//! Role × endpoint (SPEC §6.1): every operation answers 401 without a valid token, 403 to
//! a role that may not use it, succeeds for every role that may, and answers 404 (never
//! 403) to any caller of another tenant that names this tenant's resources.

use crate::helpers::{Caller, TestApp};
use axum::http::{Method, StatusCode};
use iotcore_api::auth::Role;
use serde_json::{json, Value};

/// The least a caller must be to use an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Anyone, without a token: health, metrics and the OpenAPI document.
    Nothing,
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
            Need::Nothing | Need::Read => true,
            Need::Write => role != Role::Viewer,
            Need::Admin => matches!(role, Role::Admin | Role::Operator),
            Need::Operator => role == Role::Operator,
        }
    }
}

/// One operation of the API, called the way it succeeds and the way it fails. This is THE
/// table of the API's tests: the role test walks it role by role, and the walk
/// (`walk.rs`) checks that every operation of `openapi/openapi.json` has a case here that
/// succeeds and one that fails with a documented status. A new endpoint gets its line here.
pub(crate) struct Case {
    pub method: Method,
    /// `{tenant}`, `{registry}`, `{device}`, `{broker}` and `{rule}` name the fixtures;
    /// `{fresh_…}` a resource created for this one call, because the call deletes it.
    pub path: &'static str,
    /// `{n}` is replaced by a number unique to the call, to keep names unique.
    pub body: Option<Value>,
    pub need: Need,
    /// How the operation fails; `None` only for operations that document no error.
    pub fails: Option<Failure>,
}

/// A call of an operation that fails, by an operator acting in the fixtures' tenant.
pub(crate) enum Failure {
    /// This request (placeholders as in [`Case::path`]) answers a problem with `status`.
    Request {
        status: StatusCode,
        path: &'static str,
        body: Option<Value>,
        headers: &'static [(&'static str, &'static str)],
    },
    /// The operation answers a problem with `status` while the database is down.
    DatabaseDown { status: StatusCode },
}

impl Case {
    /// Fails with `status` when called on `path` with `body`.
    fn fails(self, status: u16, path: &'static str, body: Option<Value>) -> Case {
        self.fails_with(status, path, body, &[])
    }

    /// [`Case::fails`] with extra request headers.
    fn fails_with(
        mut self,
        status: u16,
        path: &'static str,
        body: Option<Value>,
        headers: &'static [(&'static str, &'static str)],
    ) -> Case {
        self.fails = Some(Failure::Request {
            status: StatusCode::from_u16(status).unwrap(),
            path,
            body,
            headers,
        });
        self
    }

    /// Fails with `status` while the database is down.
    fn fails_without_database(mut self, status: u16) -> Case {
        self.fails = Some(Failure::DatabaseDown {
            status: StatusCode::from_u16(status).unwrap(),
        });
        self
    }
}

fn case(method: Method, path: &'static str, body: Option<Value>, need: Need) -> Case {
    Case {
        method,
        path,
        body,
        need,
        fails: None,
    }
}

pub(crate) fn cases() -> Vec<Case> {
    use Need::*;
    let get = |path, need| case(Method::GET, path, None, need);
    let post = |path, body: Value, need| case(Method::POST, path, Some(body), need);
    let patch = |path, body: Value, need| case(Method::PATCH, path, Some(body), need);
    let delete = |path, need| case(Method::DELETE, path, None, need);
    let put = |path, need| case(Method::PUT, path, None, need);
    let policy = |name: &str| {
        json!({ "name": name, "statements": [
            { "effect": "allow", "actions": ["publish"], "topics": ["fleet/#"] }
        ] })
    };
    let rule = json!({ "name": "rule-{n}", "topic_filter": "$devices/+/events/#",
                       "webhook": { "url": "https://hooks.example.com/iot" } });
    let empty_name = || Some(json!({ "name": "" }));
    vec![
        get("/v1/tenants", Operator).fails(400, "/v1/tenants?page_size=0", None),
        post("/v1/tenants", json!({ "name": "t-{n}" }), Operator).fails(
            422,
            "/v1/tenants",
            empty_name(),
        ),
        get("/v1/tenants/{tenant}", Read).fails(404, "/v1/tenants/tnt_00000000000000000000", None),
        patch("/v1/tenants/{tenant}", json!({ "name": "acme-{n}" }), Admin).fails(
            422,
            "/v1/tenants/{tenant}",
            empty_name(),
        ),
        delete("/v1/tenants/{fresh_tenant}", Operator).fails(
            404,
            "/v1/tenants/tnt_00000000000000000000",
            None,
        ),
        get("/v1/tenants/{tenant}/quotas", Read).fails(400, "/v1/tenants/acme/quotas", None),
        patch(
            "/v1/tenants/{tenant}/quotas",
            json!({ "max_devices": 100 }),
            Operator,
        )
        .fails_with(
            412,
            "/v1/tenants/{tenant}/quotas",
            Some(json!({ "max_devices": 50 })),
            &[("if-match", "\"1\"")],
        ),
        get("/v1/registries", Read).fails(422, "/v1/registries?label=nocolon", None),
        post("/v1/registries", json!({ "name": "r-{n}" }), Write).fails(
            409,
            "/v1/registries",
            Some(json!({ "name": "fixture" })),
        ),
        get("/v1/registries/{registry}", Read).fails(
            404,
            "/v1/registries/reg_00000000000000000000",
            None,
        ),
        patch(
            "/v1/registries/{registry}",
            json!({ "description": "d-{n}" }),
            Write,
        )
        .fails(
            422,
            "/v1/registries/{registry}",
            Some(json!({ "labels": { "bad key": "v" } })),
        ),
        // The fixture registry has a device: deleting it needs `force`.
        delete("/v1/registries/{fresh_registry}", Write).fails(
            409,
            "/v1/registries/{registry}",
            None,
        ),
        get("/v1/registries/{registry}/devices", Read).fails(
            404,
            "/v1/registries/reg_00000000000000000000/devices",
            None,
        ),
        post(
            "/v1/registries/{registry}/devices",
            json!({ "name": "d-{n}" }),
            Write,
        )
        .fails(422, "/v1/registries/{registry}/devices", empty_name()),
        get("/v1/devices/{device}", Read).fails(404, "/v1/devices/dev_00000000000000000000", None),
        patch(
            "/v1/devices/{device}",
            json!({ "description": "d-{n}" }),
            Write,
        )
        .fails(
            422,
            "/v1/devices/{device}",
            Some(json!({ "status": "broken" })),
        ),
        delete("/v1/devices/{fresh_device}", Write).fails(
            404,
            "/v1/devices/dev_00000000000000000000",
            None,
        ),
        get("/v1/devices/{device}/passwords", Read).fails(
            400,
            "/v1/devices/thermometer/passwords",
            None,
        ),
        post("/v1/devices/{device}/passwords", json!({}), Write).fails(
            422,
            "/v1/devices/{device}/passwords",
            Some(json!({ "password": "too short" })),
        ),
        delete("/v1/devices/{fresh_device_password}", Write).fails(
            404,
            "/v1/devices/{device}/passwords/pwd_00000000000000000000",
            None,
        ),
        get("/v1/registries/{registry}/passwords", Read).fails(
            404,
            "/v1/registries/reg_00000000000000000000/passwords",
            None,
        ),
        post("/v1/registries/{registry}/passwords", json!({}), Write).fails(
            422,
            "/v1/registries/{registry}/passwords",
            Some(json!({ "expires_at": "2001-01-01T00:00:00Z" })),
        ),
        delete("/v1/registries/{fresh_registry_password}", Write).fails(
            404,
            "/v1/registries/{registry}/passwords/pwd_00000000000000000000",
            None,
        ),
        get("/v1/brokers", Read).fails(400, "/v1/brokers?page_token=!!!", None),
        post("/v1/brokers", json!({ "name": "b-{n}" }), Write).fails(
            422,
            "/v1/brokers",
            empty_name(),
        ),
        get("/v1/brokers/{broker}", Read).fails(404, "/v1/brokers/brk_00000000000000000000", None),
        patch(
            "/v1/brokers/{broker}",
            json!({ "description": "d-{n}" }),
            Write,
        )
        .fails(422, "/v1/brokers/{broker}", empty_name()),
        delete("/v1/brokers/{fresh_broker}", Write).fails(
            404,
            "/v1/brokers/brk_00000000000000000000",
            None,
        ),
        get("/v1/brokers/{broker}/passwords", Read).fails(
            400,
            "/v1/brokers/{broker}/passwords?page_size=1001",
            None,
        ),
        post("/v1/brokers/{broker}/passwords", json!({}), Write).fails(
            404,
            "/v1/brokers/brk_00000000000000000000/passwords",
            Some(json!({})),
        ),
        delete("/v1/brokers/{fresh_broker_password}", Write).fails(
            400,
            "/v1/brokers/{broker}/passwords/lobby",
            None,
        ),
        get("/v1/rules", Read).fails(400, "/v1/rules?page_size=1001", None),
        post("/v1/rules", rule, Write).fails(
            422,
            "/v1/rules",
            Some(json!({ "name": "r", "topic_filter": "a/#",
                         "webhook": { "url": "ftp://hooks.example.com/iot" } })),
        ),
        get("/v1/rules/{rule}", Read).fails(404, "/v1/rules/rul_00000000000000000000", None),
        patch("/v1/rules/{rule}", json!({ "enabled": false }), Write).fails(
            422,
            "/v1/rules/{rule}",
            Some(json!({ "condition": "payload.celsius >" })),
        ),
        delete("/v1/rules/{fresh_rule}", Write).fails(
            404,
            "/v1/rules/rul_00000000000000000000",
            None,
        ),
        get("/v1/rules/{rule}/stats", Read).fails(
            404,
            "/v1/rules/rul_00000000000000000000/stats",
            None,
        ),
        get("/v1/rules/{rule}/dead-letters", Read).fails(
            400,
            "/v1/rules/{rule}/dead-letters?page_size=0",
            None,
        ),
        post("/v1/rules/{rule}/dead-letters/replay", json!({}), Write).fails(
            422,
            "/v1/rules/{rule}/dead-letters/replay",
            Some(json!({ "ids": ["not-a-message"] })),
        ),
        post("/v1/devices/{device}/commands", json!({ "qos": 0 }), Write).fails(
            422,
            "/v1/devices/{device}/commands",
            Some(json!({ "qos": 3 })),
        ),
        post(
            "/v1/registries/{registry}/commands",
            json!({ "qos": 1 }),
            Write,
        )
        .fails(
            404,
            "/v1/registries/reg_00000000000000000000/commands",
            Some(json!({ "qos": 1 })),
        ),
        post(
            "/v1/publish",
            json!({ "topic": "plant/{n}", "qos": 0 }),
            Write,
        )
        .fails(
            422,
            "/v1/publish",
            Some(json!({ "topic": "plant/+", "qos": 0 })),
        ),
        get("/v1/policies", Read).fails(400, "/v1/policies?page_size=0", None),
        post("/v1/policies", policy("p-{n}"), Write).fails(
            422,
            "/v1/policies",
            Some(json!({ "name": "", "statements": [] })),
        ),
        get("/v1/policies/{policy}", Read).fails(
            404,
            "/v1/policies/pol_00000000000000000000",
            None,
        ),
        case(
            Method::PUT,
            "/v1/policies/{policy}",
            Some(policy("fixture")),
            Write,
        )
        .fails_with(
            412,
            "/v1/policies/{policy}",
            Some(policy("fixture")),
            &[("if-match", "\"1\"")],
        ),
        delete("/v1/policies/{fresh_policy}", Write).fails(
            404,
            "/v1/policies/pol_00000000000000000000",
            None,
        ),
        get("/v1/tenant/policies", Read).fails(400, "/v1/tenant/policies?page_size=0", None),
        put("/v1/tenant/policies/{policy}", Write).fails(
            404,
            "/v1/tenant/policies/pol_00000000000000000000",
            None,
        ),
        delete("/v1/tenant/policies/{fresh_tenant_policy}", Write).fails(
            404,
            "/v1/tenant/policies/pol_00000000000000000000",
            None,
        ),
        get("/v1/registries/{registry}/policies", Read).fails(
            404,
            "/v1/registries/reg_00000000000000000000/policies",
            None,
        ),
        put("/v1/registries/{registry}/policies/{policy}", Write).fails(
            404,
            "/v1/registries/{registry}/policies/pol_00000000000000000000",
            None,
        ),
        delete("/v1/registries/{fresh_registry_policy}", Write).fails(
            404,
            "/v1/registries/{registry}/policies/pol_00000000000000000000",
            None,
        ),
        get("/v1/devices/{device}/policies", Read).fails(
            400,
            "/v1/devices/thermometer/policies",
            None,
        ),
        put("/v1/devices/{device}/policies/{policy}", Write).fails(
            404,
            "/v1/devices/dev_00000000000000000000/policies/{policy}",
            None,
        ),
        delete("/v1/devices/{fresh_device_policy}", Write).fails(
            404,
            "/v1/devices/{device}/policies/pol_00000000000000000000",
            None,
        ),
        get("/v1/brokers/{broker}/policies", Read).fails(
            404,
            "/v1/brokers/brk_00000000000000000000/policies",
            None,
        ),
        put("/v1/brokers/{broker}/policies/{policy}", Write).fails(
            400,
            "/v1/brokers/{broker}/policies/fleet",
            None,
        ),
        delete("/v1/brokers/{fresh_broker_policy}", Write).fails(
            404,
            "/v1/brokers/{broker}/policies/pol_00000000000000000000",
            None,
        ),
        get("/v1/devices/{device}/certificates", Read).fails(
            404,
            "/v1/devices/dev_00000000000000000000/certificates",
            None,
        ),
        post(
            "/v1/devices/{device}/certificates",
            json!({ "generate": true }),
            Write,
        )
        .fails(422, "/v1/devices/{device}/certificates", Some(json!({}))),
        delete("/v1/devices/{fresh_device_certificate}", Write).fails(
            404,
            "/v1/devices/dev_00000000000000000000/certificates/{fingerprint}",
            None,
        ),
        get("/v1/registries/{registry}/certificates", Read).fails(
            404,
            "/v1/registries/reg_00000000000000000000/certificates",
            None,
        ),
        post(
            "/v1/registries/{registry}/certificates",
            json!({ "generate": true }),
            Write,
        )
        .fails(
            422,
            "/v1/registries/{registry}/certificates",
            Some(json!({ "certificate_pem": "not a certificate" })),
        ),
        delete("/v1/registries/{fresh_registry_certificate}", Write).fails(
            404,
            "/v1/registries/reg_00000000000000000000/certificates/{fingerprint}",
            None,
        ),
        get("/v1/brokers/{broker}/certificates", Read).fails(
            404,
            "/v1/brokers/brk_00000000000000000000/certificates",
            None,
        ),
        post(
            "/v1/brokers/{broker}/certificates",
            json!({ "generate": true }),
            Write,
        )
        .fails(
            422,
            "/v1/brokers/{broker}/certificates",
            Some(json!({ "generate": true, "validity_days": 0 })),
        ),
        delete("/v1/brokers/{fresh_broker_certificate}", Write).fails(
            404,
            "/v1/brokers/brk_00000000000000000000/certificates/{fingerprint}",
            None,
        ),
        get("/v1/registries/{registry}/ca-certificates", Read).fails(
            404,
            "/v1/registries/reg_00000000000000000000/ca-certificates",
            None,
        ),
        post(
            "/v1/registries/{registry}/ca-certificates",
            json!({ "generate": true }),
            Write,
        )
        .fails(
            422,
            "/v1/registries/{registry}/ca-certificates",
            Some(json!({})),
        ),
        delete("/v1/registries/{fresh_registry_ca}", Write).fails(
            404,
            "/v1/registries/{registry}/ca-certificates/cac_00000000000000000000",
            None,
        ),
        get("/healthz", Nothing),
        get("/readyz", Nothing).fails_without_database(503),
        get("/metrics", Nothing),
        get("/openapi.json", Nothing),
    ]
}

/// One tenant's resources, created by its operator.
pub(crate) struct Fixtures<'a> {
    app: &'a TestApp,
    pub tenant: String,
    owner: Caller,
    registry: String,
    device: String,
    broker: String,
    rule: String,
    policy: String,
    /// A certificate of the fixture device, for paths that name `{fingerprint}`.
    fingerprint: String,
    counter: std::cell::Cell<u32>,
}

fn id(body: &Value) -> String {
    body["id"].as_str().unwrap().to_owned()
}

impl<'a> Fixtures<'a> {
    pub async fn new(app: &'a TestApp) -> Fixtures<'a> {
        let tenant = app.create_tenant("acme").await;
        let owner = app.operator_in(&tenant);
        let registry = app.create_registry(&owner, "fixture").await;
        let device = id(&app.create_device(&owner, &registry, "fixture").await);
        let broker = app
            .post(&owner, "/v1/brokers", json!({ "name": "fixture" }))
            .await;
        let rule = id(&app.create_rule(&owner, "fixture").await);
        let policy = app
            .post(
                &owner,
                "/v1/policies",
                json!({ "name": "fixture", "statements": [
                    { "effect": "allow", "actions": ["publish"], "topics": ["fleet/#"] }
                ] }),
            )
            .await;
        assert_eq!(policy.status, StatusCode::CREATED, "{:#?}", policy.body);
        // The registry's own CA, so that device certificates can be generated.
        let ca = app
            .post(
                &owner,
                &format!("/v1/registries/{}/ca-certificates", id(&registry)),
                json!({ "generate": true }),
            )
            .await;
        assert_eq!(ca.status, StatusCode::CREATED, "{:#?}", ca.body);
        let certificate = app
            .post(
                &owner,
                &format!("/v1/devices/{device}/certificates"),
                json!({ "generate": true }),
            )
            .await;
        assert_eq!(
            certificate.status,
            StatusCode::CREATED,
            "{:#?}",
            certificate.body
        );
        let fingerprint = certificate.body["fingerprint"].as_str().unwrap().to_owned();
        Fixtures {
            app,
            tenant,
            owner,
            registry: id(&registry),
            device,
            broker: id(&broker.body),
            rule,
            policy: id(&policy.body),
            fingerprint,
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
    pub async fn fill(&self, path: &str) -> String {
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
        } else if path.contains("{fresh_policy}") {
            self.created(
                "/v1/policies",
                json!({ "name": format!("fresh-{n}"), "statements": [
                    { "effect": "allow", "actions": ["publish"], "topics": ["fleet/#"] }
                ] }),
            )
            .await
        } else if let Some(target) = ["tenant", "registry", "device", "broker"]
            .into_iter()
            .find(|t| path.contains(&format!("{{fresh_{t}_policy}}")))
        {
            // A policy attached for this one call, which detaches it.
            let policy = self
                .created(
                    "/v1/policies",
                    json!({ "name": format!("fresh-{n}"), "statements": [
                        { "effect": "allow", "actions": ["publish"], "topics": ["fleet/#"] }
                    ] }),
                )
                .await;
            let owner = match target {
                "tenant" => String::new(),
                "registry" => self.registry.clone(),
                "device" => self.device.clone(),
                _ => self.broker.clone(),
            };
            let collection = match target {
                "tenant" => "/v1/tenant/policies".to_owned(),
                "registry" => format!("/v1/registries/{owner}/policies"),
                "device" => format!("/v1/devices/{owner}/policies"),
                _ => format!("/v1/brokers/{owner}/policies"),
            };
            let attached = self
                .app
                .call(
                    &self.owner,
                    Method::PUT,
                    &format!("{collection}/{policy}"),
                    None,
                )
                .await;
            assert_eq!(
                attached.status,
                StatusCode::NO_CONTENT,
                "{:#?}",
                attached.body
            );
            if target == "tenant" {
                policy
            } else {
                format!("{owner}/policies/{policy}")
            }
        } else if let Some(target) = ["device", "registry", "broker"]
            .into_iter()
            .find(|t| path.contains(&format!("{{fresh_{t}_certificate}}")))
        {
            // A certificate registered for this one call, which revokes it.
            let owner = match target {
                "device" => self.device.clone(),
                "registry" => self.registry.clone(),
                _ => self.broker.clone(),
            };
            let collection = match target {
                "device" => format!("/v1/devices/{owner}/certificates"),
                "registry" => format!("/v1/registries/{owner}/certificates"),
                _ => format!("/v1/brokers/{owner}/certificates"),
            };
            let response = self
                .app
                .post(&self.owner, &collection, json!({ "generate": true }))
                .await;
            assert_eq!(response.status, StatusCode::CREATED, "{:#?}", response.body);
            let fingerprint = response.body["fingerprint"].as_str().unwrap();
            format!("{owner}/certificates/{fingerprint}")
        } else if path.contains("{fresh_registry_ca}") {
            let uri = format!("/v1/registries/{}/ca-certificates", self.registry);
            let ca = self.created(&uri, json!({ "generate": true })).await;
            format!("{}/ca-certificates/{ca}", self.registry)
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
            .replace("{rule}", &self.rule)
            .replace("{policy}", &self.policy)
            .replace("{fingerprint}", &self.fingerprint);
        if let (Some(start), Some(end)) = (filled.find("{fresh_"), filled.find('}')) {
            filled.replace_range(start..=end, &fresh);
        }
        filled
    }

    pub fn body(&self, body: &Option<Value>) -> Option<Value> {
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
        "{policy}",
        "{fingerprint}",
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
        // Public operations take no token at all (and ignore a bad one).
        let callers: &[&Caller] = if case.need == Need::Nothing {
            &[]
        } else {
            &[&anonymous, &forged]
        };
        for caller in callers {
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
