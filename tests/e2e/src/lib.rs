//! End-to-end test harness: the real `iotcore` binary on ephemeral ports, a fresh
//! PostgreSQL database per test, the REST API over HTTP, and real MQTT clients.
//!
//! Every test starts like the quickstart: `let app = TestApp::spawn().await;`, then creates
//! what it needs through the API (`app.create_device(&registry)`), and connects devices
//! with `app.mqtt_v311(&device)` or `app.mqtt_v5(&device)`.

pub mod mosquitto;
pub mod mqtt;
pub mod otlp;
pub mod raw;
pub mod tls;
pub mod webhook;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The PostgreSQL server tests create their databases in.
pub fn admin_database_url() -> String {
    std::env::var("IOTCORE_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/postgres".into())
}

/// The `iotcore` binary under test: `IOTCORE_BIN`, or the one built beside the tests.
pub fn binary() -> PathBuf {
    if let Ok(bin) = std::env::var("IOTCORE_BIN") {
        return PathBuf::from(bin);
    }
    // target/debug/deps/<test> → target/debug/iotcore
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("iotcore"))
        .unwrap_or_default()
}

/// A loopback port that was free a moment ago, for iotcore to listen on.
///
/// Chosen at random below Linux's ephemeral range (32768 and up): ports from that range
/// are also handed to outgoing connections (to PostgreSQL, say) of tests running in
/// parallel, which could take the port before iotcore binds it.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let port = 20_000 + (rand_u64() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    0
}

/// A running iotcore process with its own database.
pub struct TestApp {
    pub api: String,
    pub mqtt: SocketAddr,
    pub database_url: String,
    pub http: reqwest::Client,
    /// An operator token.
    pub operator_token: String,
    /// The tenant created by [`TestApp::spawn`] and an admin token for it.
    pub tenant_id: String,
    pub token: String,
    /// Where the process writes its log (standard output and error).
    pub log: PathBuf,
    child: Child,
    env: Vec<(String, String)>,
}

/// A device with its password, as the quickstart creates it.
#[derive(Clone, Debug)]
pub struct Device {
    pub id: String,
    pub registry_id: String,
    pub password: String,
}

impl TestApp {
    /// Starts iotcore with a fresh database and creates one tenant.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[]).await
    }

    /// Starts iotcore with extra `IOTCORE_*` environment variables.
    pub async fn spawn_with(extra_env: &[(&str, &str)]) -> TestApp {
        match Self::try_spawn(extra_env).await {
            Ok(app) => app,
            Err(e) => panic!("starting iotcore failed: {e:#}"),
        }
    }

    async fn try_spawn(extra_env: &[(&str, &str)]) -> Result<TestApp> {
        let database_url = create_database().await?;
        let running = Running::start(&database_url, extra_env).await?;
        let Running {
            child,
            api,
            mqtt,
            env,
            log,
        } = running;
        let http = reqwest::Client::new();
        let operator_token = mint_token(&env, &["--role", "operator"]).await?;
        let mut app = TestApp {
            api,
            mqtt,
            database_url,
            http,
            operator_token,
            tenant_id: String::new(),
            token: String::new(),
            log,
            child,
            env,
        };
        let tenant = app.create_tenant("acme").await;
        app.tenant_id = tenant["id"].as_str().unwrap_or_default().to_owned();
        app.token = app.tenant_token(&app.tenant_id.clone()).await;
        Ok(app)
    }

    /// An admin token for `tenant_id`, minted by `iotcore token`.
    pub async fn tenant_token(&self, tenant_id: &str) -> String {
        match mint_token(&self.env, &["--role", "admin", "--tenant", tenant_id]).await {
            Ok(token) => token,
            Err(e) => panic!("iotcore token failed: {e:#}"),
        }
    }

    /// Sends a request with a bearer token and returns the status and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut request = self
            .http
            .request(method, format!("{}{}", self.api, path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Like [`TestApp::call`] with the tenant's token, and asserts a 2xx status.
    pub async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, body) = self.call(method, path, &self.token, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {body}"
        );
        body
    }

    pub async fn create_tenant(&self, name: &str) -> Value {
        let (status, body) = self
            .call(
                "POST",
                "/v1/tenants",
                &self.operator_token,
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "create tenant: {body}");
        body
    }

    /// A second tenant with its own admin token: `(tenant_id, token)`.
    pub async fn other_tenant(&self, name: &str) -> (String, String) {
        let tenant = self.create_tenant(name).await;
        let id = tenant["id"].as_str().unwrap_or_default().to_owned();
        let token = self.tenant_token(&id).await;
        (id, token)
    }

    pub async fn create_registry(&self, token: &str, name: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/v1/registries",
                token,
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "create registry: {body}");
        body["id"].as_str().unwrap_or_default().to_owned()
    }

    /// Creates a device in `registry_id` and gives it a generated password.
    pub async fn create_device(&self, token: &str, registry_id: &str, name: &str) -> Device {
        let path = format!("/v1/registries/{registry_id}/devices");
        let (status, device) = self
            .call("POST", &path, token, Some(json!({ "name": name })))
            .await;
        assert_eq!(status, 201, "create device: {device}");
        let id = device["id"].as_str().unwrap_or_default().to_owned();
        let (status, password) = self
            .call(
                "POST",
                &format!("/v1/devices/{id}/passwords"),
                token,
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 201, "create password: {password}");
        let password = password["password"].as_str().unwrap_or_default().to_owned();
        assert!(
            !password.is_empty(),
            "a generated password is returned once"
        );
        Device {
            id,
            registry_id: registry_id.to_owned(),
            password,
        }
    }

    /// Connects `device` with MQTT 3.1.1 as itself (client id and username its id);
    /// `Err` carries the CONNACK return code of a refusal.
    pub async fn mqtt_v311(
        &self,
        device: &Device,
    ) -> std::result::Result<mqtt::V311, rumqttc::ConnectReturnCode> {
        mqtt::connect_v311(self.mqtt, &device.id, &device.id, &device.password).await
    }

    /// Connects `device` with MQTT 5 as itself (client id and username its id); `Err`
    /// carries the CONNACK reason code of a refusal.
    pub async fn mqtt_v5(
        &self,
        device: &Device,
    ) -> std::result::Result<mqtt::V5, mqtt::v5packets::ConnectReturnCode> {
        mqtt::connect_v5(self.mqtt, &device.id, &device.id, &device.password).await
    }

    /// A registry client credential: `(username, password)`.
    pub async fn create_registry_password(
        &self,
        token: &str,
        registry_id: &str,
    ) -> (String, String) {
        let path = format!("/v1/registries/{registry_id}/passwords");
        let (status, password) = self.call("POST", &path, token, Some(json!({}))).await;
        assert_eq!(status, 201, "create registry password: {password}");
        (
            registry_id.to_owned(),
            password["password"].as_str().unwrap_or_default().to_owned(),
        )
    }

    pub async fn create_rule(
        &self,
        token: &str,
        name: &str,
        topic_filter: &str,
        webhook_url: &str,
    ) -> String {
        let body = json!({ "name": name, "topic_filter": topic_filter, "webhook": { "url": webhook_url } });
        let (status, rule) = self.call("POST", "/v1/rules", token, Some(body)).await;
        assert_eq!(status, 201, "create rule: {rule}");
        rule["id"].as_str().unwrap_or_default().to_owned()
    }

    /// Polls `GET /v1/rules/{rule_id}/stats` with the tenant's token until `done` holds
    /// for the statistics, and returns them; panics with the last ones after a minute.
    pub async fn wait_for_rule_stats(&self, rule_id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let stats = self
                .ok("GET", &format!("/v1/rules/{rule_id}/stats"), Value::Null)
                .await;
            if done(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "statistics never got there: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The resident memory of the iotcore process, in KiB (from `/proc`).
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Stops the process with SIGTERM (a graceful shutdown that writes what it holds) and
    /// starts a new one on the same database.
    pub async fn restart_gracefully(mut self) -> TestApp {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        self.restart_with(&[]).await
    }

    /// Kills the process (SIGKILL: nothing is flushed) and starts a new one on the same
    /// database, with `extra_env` added; tenants, tokens and credentials stay valid.
    pub async fn restart_with(mut self, extra_env: &[(&str, &str)]) -> TestApp {
        let _ = self.child.kill().await;
        let running = match Running::start(&self.database_url, extra_env).await {
            Ok(running) => running,
            Err(e) => panic!("restarting iotcore failed: {e:#}"),
        };
        self.child = running.child;
        self.api = running.api;
        self.mqtt = running.mqtt;
        self.env = running.env;
        self.log = running.log;
        self
    }

    /// Kills the process (SIGKILL) and keeps its database, for tests that go on with
    /// other processes on it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }

    /// Ends the test with a graceful stop (SIGTERM) and returns how the process exited
    /// (`None` if it did not within 30 s); drops the database like [`TestApp::stop`].
    pub async fn terminate(mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let exited = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        self.stop().await;
        exited
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text")
    }

    /// The value of `series` (its name and labels as `/metrics` renders them) on `/metrics`;
    /// 0 while the series does not exist.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Ends the test: stops the process and drops its database (a test that fails before
    /// this leaves its database behind, to look at).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        if let Some(name) = self.database_url.rsplit('/').next() {
            if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
                let _ = admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
            }
        }
    }
}

/// A started `iotcore serve` process.
struct Running {
    child: Child,
    api: String,
    mqtt: SocketAddr,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Running {
    /// Starts `iotcore serve` on `database_url` and fresh loopback ports, and waits until
    /// it is ready: the API answers `/readyz` and the MQTT port accepts.
    async fn start(database_url: &str, extra_env: &[(&str, &str)]) -> Result<Running> {
        // A port found free may be taken by a parallel test before iotcore binds it; such
        // a start fails fast, and a second one picks other ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Running::start_once(database_url, extra_env).await {
                Err(e) if attempt < 3 && e.to_string().contains("exited") => continue,
                result => return result,
            }
        }
    }

    async fn start_once(database_url: &str, extra_env: &[(&str, &str)]) -> Result<Running> {
        let api_port = free_port();
        let mqtt_port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("IOTCORE_PROFILE".into(), "dev".into()),
            ("IOTCORE_DATABASE_URL".into(), database_url.to_owned()),
            ("IOTCORE_API_LISTEN".into(), format!("127.0.0.1:{api_port}")),
            (
                "IOTCORE_MQTT_TCP_LISTEN".into(),
                format!("127.0.0.1:{mqtt_port}"),
            ),
            // Off unless a test asks: the default port would be shared by every test.
            ("IOTCORE_MQTT_WS_LISTEN".into(), String::new()),
            ("IOTCORE_RULES_RETRY_INITIAL_MS".into(), "100".into()),
            ("IOTCORE_RULES_RETRY_MAX_MS".into(), "1000".into()),
            ("IOTCORE_LOG_LEVEL".into(), "info,iotcore=debug".into()),
        ];
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let log = std::env::temp_dir().join(format!("iotcore-e2e-{api_port}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new(binary())
            .arg("serve")
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", binary().display()))?;
        let api = format!("http://127.0.0.1:{api_port}");
        let mqtt: SocketAddr = format!("127.0.0.1:{mqtt_port}").parse()?;
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Some(status) = child.try_wait()? {
                bail!("iotcore exited with {status}; log in {}", log.display());
            }
            let api_ready = matches!(http.get(format!("{api}/readyz")).send().await, Ok(r) if r.status().is_success());
            if api_ready && tokio::net::TcpStream::connect(mqtt).await.is_ok() {
                return Ok(Running {
                    child,
                    api,
                    mqtt,
                    env,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("iotcore did not become ready; log in {}", log.display())
    }
}

async fn mint_token(env: &[(String, String)], args: &[&str]) -> Result<String> {
    let output = Command::new(binary())
        .arg("token")
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .output()
        .await?;
    if !output.status.success() {
        bail!("iotcore token: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// Creates a randomly named database on the test server and returns its URL.
async fn create_database() -> Result<String> {
    let admin = admin_database_url();
    let name = format!("iotcore_e2e_{:016x}", rand_u64());
    let mut connection = PgConnection::connect(&admin)
        .await
        .context("connecting to the test PostgreSQL")?;
    connection
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let base = match admin.rfind('/') {
        Some(slash) => &admin[..slash],
        None => admin.as_str(),
    };
    Ok(format!("{base}/{name}"))
}

pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}
