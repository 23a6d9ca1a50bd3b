//! What the delivery tests share: a fresh database per test, tenants and rules inserted
//! with plain SQL, a scripted webhook receiver on 127.0.0.1 and the running service.

#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use iotcore_rules::RulesConfig;
use iotcore_store::deliveries::NewDelivery;
use iotcore_store::{DeviceId, MessageId, RegistryId, RuleId, Store, TenantId};
use rand::Rng;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen; generous, because a loaded
/// machine is slow, and the wait ends as soon as the event happens.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A database of its own, migrated; dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub store: Store,
    admin_url: String,
    name: String,
}

impl TestDb {
    pub async fn new() -> Result<TestDb> {
        let admin_url = std::env::var("DATABASE_URL")
            .context("DATABASE_URL must point at a PostgreSQL server")?;
        let suffix: u64 = rand::thread_rng().gen();
        let name = format!("rules_test_{suffix:016x}");
        let admin = Store::connect(&admin_url, 1).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin.pool())
            .await?;
        admin.pool().close().await;
        let url = with_database(&admin_url, &name)?;
        let store = Store::connect(&url, 4).await?;
        iotcore_store::MIGRATOR.run(store.pool()).await?;
        Ok(TestDb {
            store,
            admin_url,
            name,
        })
    }

    pub async fn drop_db(self) -> Result<()> {
        self.store.pool().close().await;
        let admin = Store::connect(&self.admin_url, 1).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(admin.pool())
        .await?;
        admin.pool().close().await;
        Ok(())
    }
}

/// `url` with its database replaced by `name` (keeping any query string).
fn with_database(url: &str, name: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    Ok(match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    })
}

/// A tenant with one registry.
pub struct Tenant {
    pub id: TenantId,
    pub registry: RegistryId,
}

pub async fn tenant(store: &Store) -> Result<Tenant> {
    let tenant = Tenant {
        id: TenantId::generate(),
        registry: RegistryId::generate(),
    };
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $1)")
        .bind(&tenant.id)
        .execute(store.pool())
        .await?;
    sqlx::query("INSERT INTO registries (id, tenant_id, name) VALUES ($1, $2, $1)")
        .bind(&tenant.registry)
        .bind(&tenant.id)
        .execute(store.pool())
        .await?;
    Ok(tenant)
}

/// The webhook part of a rule.
pub struct RuleSpec<'a> {
    pub url: &'a str,
    pub secret: Option<&'a str>,
    pub headers: serde_json::Value,
    pub enabled: bool,
    pub max_in_flight: i32,
    pub timeout_ms: i32,
}

impl<'a> RuleSpec<'a> {
    pub fn to(url: &'a str) -> RuleSpec<'a> {
        RuleSpec {
            url,
            secret: None,
            headers: serde_json::json!({}),
            enabled: true,
            max_in_flight: 64,
            timeout_ms: 5000,
        }
    }
}

pub async fn rule(store: &Store, tenant: &Tenant, spec: RuleSpec<'_>) -> Result<RuleId> {
    let id = RuleId::generate();
    sqlx::query(
        "INSERT INTO rules (id, tenant_id, name, topic_filter, webhook_url, webhook_headers,
                            webhook_secret, timeout_ms, max_in_flight, enabled)
         VALUES ($1, $2, $1, '#', $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(&tenant.id)
    .bind(spec.url)
    .bind(&spec.headers)
    .bind(spec.secret)
    .bind(spec.timeout_ms)
    .bind(spec.max_in_flight)
    .bind(spec.enabled)
    .execute(store.pool())
    .await?;
    Ok(id)
}

/// A message matched by `rule`, as a broker would enqueue it.
pub fn message(tenant: &Tenant, rule: &RuleId, payload: &[u8]) -> NewDelivery {
    NewDelivery {
        id: MessageId::generate(),
        tenant_id: tenant.id.clone(),
        rule_id: rule.clone(),
        registry_id: Some(tenant.registry.clone()),
        device_id: Some(DeviceId::generate()),
        topic: "$devices/d1/events/temperature".into(),
        qos: 1,
        retain: false,
        payload: payload.to_vec(),
        content_type: Some("application/json".into()),
        user_properties: vec![("unit".into(), "C".into()), ("unit".into(), "K".into())],
        // Whole microseconds, as PostgreSQL stores them, so the envelope can be compared.
        received_at: DateTime::<Utc>::from_timestamp_micros(Utc::now().timestamp_micros())
            .unwrap_or_default(),
    }
}

/// Configuration with short retry delays and shutdown grace, for tests.
pub fn config() -> RulesConfig {
    RulesConfig {
        allow_private_destinations: true,
        retry_initial_ms: 10,
        retry_max_ms: 2000,
        poll_interval_ms: 50,
        shutdown_grace_ms: 100,
        ..RulesConfig::default()
    }
}

/// The rules service running in the background.
pub struct Service {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), iotcore_rules::RulesError>>,
}

pub fn start(store: &Store, config: RulesConfig) -> Service {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(iotcore_rules::run(config, store.clone(), shutdown.clone()));
    Service { shutdown, task }
}

impl Service {
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task).await???;
        Ok(())
    }
}

/// How the scripted webhook answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    StatusWithHeader(u16, &'static str, &'static str),
    /// Never answers.
    Hang,
}

/// One request the webhook received.
#[derive(Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

type Script = dyn Fn(usize) -> Reply + Send + Sync;

#[derive(Clone)]
struct Hook {
    script: Arc<Script>,
    count: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<Received>,
}

/// A webhook receiver on 127.0.0.1 whose answer to the n-th request (0-based) is
/// `script(n)`.
pub struct Webhook {
    pub url: String,
    count: Arc<AtomicUsize>,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Webhook {
    pub async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Result<Webhook> {
        let (tx, rx) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let hook = Hook {
            script: Arc::new(script),
            count: count.clone(),
            tx,
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(hook);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Webhook { url, count, rx })
    }

    /// The next request, waiting for it up to [`PATIENCE`].
    pub async fn next(&mut self) -> Result<Received> {
        match tokio::time::timeout(PATIENCE, self.rx.recv()).await {
            Ok(Some(received)) => Ok(received),
            Ok(None) => bail!("webhook server stopped"),
            Err(_) => bail!("no request arrived at the webhook"),
        }
    }

    /// How many requests have arrived so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

async fn receive(State(hook): State<Hook>, headers: HeaderMap, body: Bytes) -> Response {
    let n = hook.count.fetch_add(1, Ordering::SeqCst);
    let _ = hook.tx.send(Received {
        headers,
        body,
        at: Instant::now(),
    });
    let status = |code| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match (hook.script)(n) {
        Reply::Status(code) => status(code).into_response(),
        Reply::StatusWithHeader(code, name, value) => {
            (status(code), [(name, value)]).into_response()
        }
        Reply::Hang => std::future::pending().await,
    }
}

/// Polls `check` until it yields `Some`, for up to [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The rule's counters: (delivered, retried, dead_lettered, last_error).
pub async fn stats(
    store: &Store,
    rule: &RuleId,
) -> Result<Option<(i64, i64, i64, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT delivered, retried, dead_lettered, last_error FROM rule_stats WHERE rule_id = $1",
    )
    .bind(rule)
    .fetch_optional(store.pool())
    .await?)
}

/// How many deliveries are still queued for `rule`.
pub async fn queued(store: &Store, rule: &RuleId) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE rule_id = $1")
            .bind(rule)
            .fetch_one(store.pool())
            .await?,
    )
}
