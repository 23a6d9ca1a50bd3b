//! The `iotcore` binary as an operator uses it: exit codes, messages, printed
//! configuration and tokens, and a real start, migration and graceful stop against
//! PostgreSQL (`DATABASE_URL`, a server the tests may create databases in).

use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const DEV_SECRET: &str = "iotcore-dev-secret-do-not-use-in-production";
const TENANT: &str = "tnt_0123456789abcdefghij";
/// Only guards against a hung process; nothing asserts how fast anything is.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The binary with none of the caller's `IOTCORE_*` variables, so the developer's shell
/// cannot change what a test sees.
fn iotcore(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iotcore"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IOTCORE_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn output(args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = iotcore(args, env).output();
    tokio::time::timeout(HANG_GUARD, run)
        .await
        .expect("iotcore hung")
        .expect("iotcore did not run")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh, randomly named database, dropped when the test ends.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create() -> TestDatabase {
        let admin_url =
            std::env::var("DATABASE_URL").expect("DATABASE_URL must point at a PostgreSQL server");
        let name = format!("iotcore_cli_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connecting to DATABASE_URL");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("creating the test database");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }

    async fn drop_now(self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
        }
    }
}

#[tokio::test]
async fn print_config_shows_effective_values_with_secrets_redacted() {
    let out = output(
        &[
            "serve",
            "--print-config",
            "--database-url",
            "postgres://app:hunter2@db.internal/iotcore",
        ],
        &[
            ("IOTCORE_PROFILE", "dev"),
            ("IOTCORE_API_AUTH_HS256_SECRET", "topsecretvalue"),
            ("IOTCORE_MQTT_MAX_TOPIC_LEVELS", "9"),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        !printed.contains("hunter2") && !printed.contains("topsecretvalue"),
        "{printed}"
    );
    let config: toml::Table = toml::from_str(&printed).expect("printed configuration is TOML");
    assert_eq!(
        config["database"]["url"].as_str(),
        Some("postgres://app:<redacted>@db.internal/iotcore")
    );
    assert_eq!(
        config["api"]["auth"]["hs256_secret"].as_str(),
        Some("<redacted>")
    );
    assert_eq!(config["mqtt"]["max_topic_levels"].as_integer(), Some(9));
    assert_eq!(
        config["rules"]["allow_private_destinations"].as_bool(),
        Some(true)
    );
}

#[tokio::test]
async fn invalid_values_exit_2_naming_the_key() {
    let out = output(
        &["serve", "--print-config"],
        &[
            ("IOTCORE_PROFILE", "dev"),
            ("IOTCORE_MQTT_CONNECT_TIMEOUT_SECS", "x"),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("mqtt.connect_timeout_secs: invalid type: string \"x\", expected u64"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn unknown_environment_variables_exit_2_naming_them() {
    let out = output(
        &["migrate"],
        &[
            ("IOTCORE_PROFILE", "dev"),
            ("IOTCORE_DATABASE_ULR", "postgres://x/y"),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("IOTCORE_DATABASE_ULR"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn production_without_a_token_secret_refuses_to_start() {
    let out = output(&["serve"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("api.auth.hs256_secret"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn dev_token_is_signed_with_the_dev_secret_and_carries_the_claims() {
    let out = output(
        &[
            "token",
            "--role",
            "viewer",
            "--tenant",
            TENANT,
            "--subject",
            "alice",
            "--ttl-secs",
            "60",
        ],
        &[("IOTCORE_PROFILE", "dev")],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["iotcore"]);
    validation.set_issuer(&["iotcore"]);
    let claims = jsonwebtoken::decode::<Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(DEV_SECRET.as_bytes()),
        &validation,
    )
    .expect("a token the dev server accepts")
    .claims;
    assert_eq!(claims["role"], "viewer");
    assert_eq!(claims["tenant_id"], TENANT);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["exp"]
            .as_u64()
            .zip(claims["iat"].as_u64())
            .map(|(exp, iat)| exp - iat),
        Some(60)
    );
}

#[tokio::test]
async fn token_usage_errors_exit_2() {
    for args in [
        &["token", "--role", "admin"][..],
        &["token", "--role", "admin", "--tenant", "acme"],
        &["token", "--role", "operator", "--tenant", TENANT],
        &["token", "--role", "root"],
    ] {
        let out = output(args, &[("IOTCORE_PROFILE", "dev")]).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// `url` with a password in it (when it has none), to check that messages hide it.
fn with_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if !userinfo.contains(':') => {
            format!("{scheme}://{userinfo}:hunter2@{host}")
        }
        Some(_) => url.to_owned(),
        None => format!("{scheme}://postgres:hunter2@{rest}"),
    }
}

#[tokio::test]
async fn missing_database_exits_1_naming_database_url_without_password() {
    let admin_url =
        std::env::var("DATABASE_URL").expect("DATABASE_URL must point at a PostgreSQL server");
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    // A server that answers but has no such database: an error not worth waiting out.
    let url = with_password(&format!(
        "{base}/iotcore_missing_{:016x}",
        rand::random::<u64>()
    ));
    let out = output(
        &["migrate", "--database-url", &url],
        &[("IOTCORE_PROFILE", "dev")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("database.url"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn serve_migrates_then_stops_cleanly_on_sigterm() {
    let db = TestDatabase::create().await;
    let probes = free_loopback_addr();
    let mut child = iotcore(
        &["serve", "--only", "rules"],
        &[
            ("IOTCORE_PROFILE", "dev"),
            ("IOTCORE_DATABASE_URL", &db.url),
            ("IOTCORE_TELEMETRY_LISTEN", &probes),
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .expect("iotcore starts");
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let mut log = String::new();
    let started = tokio::time::timeout(HANG_GUARD, async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if line.contains("iotcore is running") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started.ok(), Some(true), "iotcore did not start:\n{log}");

    // Without the API, the rules process answers probes and scrapes on telemetry.listen.
    let health = http_get(&probes, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    let ready = http_get(&probes, "/readyz").await;
    assert!(
        ready.contains(" 200 ") && ready.contains(r#""status":"ok""#),
        "{ready}"
    );
    let metrics = http_get(&probes, "/metrics").await;
    assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
    assert!(
        metrics.contains("# TYPE iotcore_rules_deliveries_total counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("iotcore_db_pool_connections{state=\"idle\"}"),
        "{metrics}"
    );

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(HANG_GUARD, child.wait())
        .await
        .expect("iotcore stops")
        .expect("wait");
    while let Ok(Some(line)) = lines.next_line().await {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("SIGTERM received") && log.contains("iotcore stopped"),
        "{log}"
    );

    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("connect to the test database");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .expect("migrations table exists");
    assert!(applied >= 1);
    conn.close().await.ok();
    db.drop_now().await;
}

#[tokio::test]
async fn a_service_that_cannot_bind_makes_serve_exit_1() {
    let db = TestDatabase::create().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = output(
        &["serve", "--only", "broker", "--mqtt-listen", &addr],
        &[
            ("IOTCORE_PROFILE", "dev"),
            ("IOTCORE_DATABASE_URL", &db.url),
            ("IOTCORE_TELEMETRY_LISTEN", ""),
        ],
    )
    .await;
    db.drop_now().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("broker failed"),
        "{}",
        text(&out.stderr)
    );
}

/// A loopback address that was free a moment ago.
fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// The whole response to `GET path` over HTTP/1.0 (the server closes the connection).
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        String::from_utf8_lossy(&response).into_owned()
    };
    tokio::time::timeout(HANG_GUARD, exchange)
        .await
        .expect("no answer")
}
