use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use iotcore_api::auth::{mint_token, Role};
use iotcore_api::{router, ApiConfig, ApiState, AuthConfig};
use iotcore_store::Store;
use serde_json::{json, Value};
use std::time::Duration;
use tower::ServiceExt;

/// The API over a fresh database, with helpers that read like the quickstart.
pub struct TestApp {
    pub router: Router,
    pub config: ApiConfig,
    pub store: Store,
}

/// A response with its body parsed as JSON (`Value::Null` when empty, a string when it is
/// not JSON).
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl TestResponse {
    /// Asserts an RFC 9457 problem with `status`, and returns its body.
    #[track_caller]
    pub fn assert_problem(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "{:#?}", self.body);
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(self.body["status"], status.as_u16());
        assert!(self.body["type"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(self.body["title"].is_string());
        assert!(self.body["detail"].is_string());
        &self.body
    }

    /// The fields named by a validation problem.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An authenticated caller: a token and, for operators, the tenant they act in.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token: Option<String>,
    pub tenant_header: Option<String>,
}

impl TestApp {
    pub fn new(pool: sqlx::PgPool) -> TestApp {
        Self::with_config(pool, |_| {})
    }

    pub fn with_config(pool: sqlx::PgPool, change: impl FnOnce(&mut ApiConfig)) -> TestApp {
        let mut config = ApiConfig {
            auth: AuthConfig {
                hs256_secret: Some("test-secret-for-the-api".into()),
                ..AuthConfig::default()
            },
            // The tests' webhooks are on 127.0.0.1.
            allow_private_destinations: true,
            ..ApiConfig::default()
        };
        change(&mut config);
        let store = Store::from_pool(pool);
        let router = router(ApiState::new(&config, store.clone()).unwrap());
        TestApp {
            router,
            config,
            store,
        }
    }

    pub fn operator(&self) -> Caller {
        let token = mint_token(
            &self.config.auth,
            Role::Operator,
            None,
            "ops",
            Duration::from_secs(600),
        )
        .unwrap();
        Caller {
            token: Some(token),
            tenant_header: None,
        }
    }

    pub fn operator_in(&self, tenant: &str) -> Caller {
        Caller {
            tenant_header: Some(tenant.to_owned()),
            ..self.operator()
        }
    }

    pub fn member(&self, role: Role, tenant: &str) -> Caller {
        let token = mint_token(
            &self.config.auth,
            role,
            Some(tenant),
            "someone",
            Duration::from_secs(600),
        )
        .unwrap();
        Caller {
            token: Some(token),
            tenant_header: None,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            // Text bodies (`/metrics`) are kept as a JSON string.
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        TestResponse {
            status,
            content_type,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        caller: &Caller,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> TestResponse {
        self.call_with(caller, method, uri, body, &[]).await
    }

    /// [`TestApp::call`] with extra request headers.
    pub async fn call_with(
        &self,
        caller: &Caller,
        method: Method,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = &caller.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(tenant) = &caller.tenant_header {
            request = request.header("X-Iotcore-Tenant", tenant);
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap())),
            None => request.body(Body::empty()),
        };
        self.send(request.unwrap()).await
    }

    pub async fn get(&self, caller: &Caller, uri: &str) -> TestResponse {
        self.call(caller, Method::GET, uri, None).await
    }

    pub async fn post(&self, caller: &Caller, uri: &str, body: Value) -> TestResponse {
        self.call(caller, Method::POST, uri, Some(body)).await
    }

    pub async fn patch(&self, caller: &Caller, uri: &str, body: Value) -> TestResponse {
        self.call(caller, Method::PATCH, uri, Some(body)).await
    }

    pub async fn delete(&self, caller: &Caller, uri: &str) -> TestResponse {
        self.call(caller, Method::DELETE, uri, None).await
    }

    /// Creates a tenant and returns its id.
    pub async fn create_tenant(&self, name: &str) -> String {
        self.create_tenant_named(&self.operator(), name).await
    }

    /// Creates a tenant as the operator `caller` and returns its id.
    pub async fn create_tenant_with(&self, caller: &Caller) -> String {
        self.create_tenant_named(caller, "acme").await
    }

    async fn create_tenant_named(&self, caller: &Caller, name: &str) -> String {
        let response = self
            .post(caller, "/v1/tenants", json!({ "name": name }))
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{:#?}", response.body);
        response.body["id"].as_str().unwrap().to_owned()
    }

    /// Creates a registry as `caller` and returns it.
    pub async fn create_registry(&self, caller: &Caller, name: &str) -> Value {
        let response = self
            .post(caller, "/v1/registries", json!({ "name": name }))
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{:#?}", response.body);
        response.body
    }

    /// Creates a device in `registry` as `caller` and returns it.
    pub async fn create_device(&self, caller: &Caller, registry: &Value, name: &str) -> Value {
        let uri = format!(
            "/v1/registries/{}/devices",
            registry["id"].as_str().unwrap()
        );
        let response = self.post(caller, &uri, json!({ "name": name })).await;
        assert_eq!(response.status, StatusCode::CREATED, "{:#?}", response.body);
        response.body
    }

    /// Creates a rule as `caller` and returns it.
    pub async fn create_rule(&self, caller: &Caller, name: &str) -> Value {
        let body = json!({
            "name": name,
            "topic_filter": "$devices/+/events/#",
            "webhook": { "url": "http://127.0.0.1:9/hook" },
        });
        let response = self.post(caller, "/v1/rules", body).await;
        assert_eq!(response.status, StatusCode::CREATED, "{:#?}", response.body);
        response.body
    }
}
