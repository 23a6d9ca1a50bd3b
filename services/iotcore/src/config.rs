//! iotcore's configuration: one typed document covering every service, built from
//! built-in defaults, then a TOML file, then `IOTCORE_*` environment variables, then flags.
//!
//! Every key has exactly one environment variable, `IOTCORE_` followed by its path with `.`
//! as `_`, uppercased (`mqtt.tcp_listen` → `IOTCORE_MQTT_TCP_LISTEN`). Invalid input fails
//! the load with an error that names the key and where the bad value came from. The profile
//! (`dev` or `production`) then fills in what the operator left unset.

mod layers;

pub use layers::Source;

use iotcore_api::ApiConfig;
use iotcore_broker::BrokerConfig;
use iotcore_rules::RulesConfig;
use layers::{KnownKeys, Overrides};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// The HS256 secret the dev profile signs tokens with when none is configured. It is
/// public (it is in this file), so the production profile never falls back to it.
pub const DEV_HS256_SECRET: &str = "iotcore-dev-secret-do-not-use-in-production";

/// Shortest HS256 secret the production profile accepts: RFC 7518 §3.2 asks for a key at
/// least as long as the hash output.
pub const MIN_PRODUCTION_SECRET_BYTES: usize = 32;

/// Where the dev profile listens for plain MQTT over TCP unless told otherwise.
pub const DEV_MQTT_TCP_LISTEN: &str = "0.0.0.0:1883";

/// What secrets are replaced with wherever the configuration is shown.
pub const REDACTED: &str = "<redacted>";

/// The whole configuration of an iotcore process. Its `Debug` output redacts secrets.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub profile: Profile,
    pub database: DatabaseConfig,
    pub api: ApiConfig,
    pub mqtt: BrokerConfig,
    pub rules: RulesConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
}

/// Which set of defaults applies to what the operator left unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A laptop: a well-known token secret, plain MQTT/TCP, webhooks to private addresses.
    Dev,
    /// Anything reachable by others: a token secret must be given, and plain MQTT/TCP and
    /// private webhook destinations stay off unless enabled explicitly.
    #[default]
    Production,
}

/// The `[database]` section. Its `Debug` output hides the URL's password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A `postgres://` URL; the default is the private cluster `deploy/local/run.sh` starts.
    pub url: String,
    pub max_connections: u32,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5433/iotcore".into(),
            max_connections: 20,
            migrate_on_start: true,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

/// Where a process without the API serves its probes and metrics unless told otherwise.
pub const DEFAULT_TELEMETRY_LISTEN: &str = "0.0.0.0:9090";

/// The `[telemetry]` section: metrics and traces (SPEC §7.1).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where a process that runs without the API (`serve --only broker`, `--only rules`)
    /// serves `/healthz`, `/readyz` and `/metrics`; empty turns it off. With the API they
    /// are on `api.listen`.
    pub listen: String,
    /// The OTLP/HTTP endpoint traces and metrics are exported to, such as
    /// `http://otel-collector:4318`; unset (or empty) exports nothing.
    pub otlp_endpoint: Option<String>,
    /// How often metrics are exported over OTLP, in seconds (and once more at shutdown).
    pub otlp_interval_secs: u64,
}

/// Metrics go out over OTLP this often unless told otherwise: the OpenTelemetry SDKs'
/// default export interval.
pub const DEFAULT_OTLP_INTERVAL_SECS: u64 = 60;

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: DEFAULT_TELEMETRY_LISTEN.into(),
            otlp_endpoint: None,
            otlp_interval_secs: DEFAULT_OTLP_INTERVAL_SECS,
        }
    }
}

/// PostgreSQL's notices (such as "relation already exists, skipping" on every migration
/// run) are noise at `info`.
pub const DEFAULT_LOG_LEVEL: &str = "info,sqlx::postgres::notice=warn";

/// The `[log]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive, such as `info,iotcore_broker=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: DEFAULT_LOG_LEVEL.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.redacted();
        f.debug_struct("Config")
            .field("profile", &shown.profile)
            .field("database", &shown.database)
            .field("api", &shown.api)
            .field("mqtt", &shown.mqtt)
            .field("rules", &shown.rules)
            .field("log", &shown.log)
            .field("telemetry", &shown.telemetry)
            .finish()
    }
}

/// The parts of the command line that override the configuration (the last layer).
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// The TOML file (`--config`, or `IOTCORE_CONFIG`).
    pub file: Option<PathBuf>,
    /// `--set key.path=value`, in order.
    pub set: Vec<String>,
    pub database_url: Option<String>,
    pub api_listen: Option<String>,
    pub mqtt_listen: Option<String>,
}

/// A loaded configuration, and what the operator should be told about it once logging is up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Why the configuration could not be loaded. Messages name the key at fault and never
/// repeat a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error(
        "{names}: no configuration key has this name (a key's variable is IOTCORE_ + its path \
         with `.` as `_`, uppercased; `iotcore serve --print-config` shows the keys)"
    )]
    UnknownEnv { names: String },
    #[error(
        "environment variable {name} is ambiguous: it could mean {paths}; use the file or --set"
    )]
    AmbiguousEnv { name: String, paths: String },
    #[error("--set {arg}: expected KEY.PATH=VALUE")]
    BadSet { arg: String },
    #[error("{key}: {message}{}", origin_suffix(.origin))]
    Invalid {
        key: String,
        message: String,
        origin: Option<Source>,
    },
}

fn origin_suffix(origin: &Option<Source>) -> String {
    origin
        .as_ref()
        .map(|source| format!(" ({source})"))
        .unwrap_or_default()
}

impl Config {
    /// Loads the configuration from `flags` and the process environment.
    pub fn load(flags: &Flags) -> Result<Loaded, ConfigError> {
        Config::load_from(flags, std::env::vars_os())
    }

    /// Loads the configuration from `flags` and the given environment variables.
    pub fn load_from(
        flags: &Flags,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Loaded, ConfigError> {
        let keys = Config::known_keys();
        let mut overrides = Overrides::default();
        if let Some(path) = &flags.file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            overrides.merge_file(path, &text)?;
        }
        overrides.merge_env(&keys, vars)?;
        for arg in &flags.set {
            let Some((key, text)) = arg.split_once('=') else {
                return Err(ConfigError::BadSet { arg: arg.clone() });
            };
            let key = key.trim();
            if key.is_empty() || key.split('.').any(str::is_empty) {
                return Err(ConfigError::BadSet { arg: arg.clone() });
            }
            overrides.set(&keys, key, text, Source::Flag(format!("--set {key}")));
        }
        let shortcuts = [
            ("database.url", "--database-url", &flags.database_url),
            ("api.listen", "--api-listen", &flags.api_listen),
            ("mqtt.tcp_listen", "--mqtt-listen", &flags.mqtt_listen),
        ];
        for (key, flag, value) in shortcuts {
            if let Some(text) = value {
                overrides.set(&keys, key, text, Source::Flag(flag.into()));
            }
        }

        let mut config = deserialize(&mut overrides)?;
        let warnings = config.apply_profile(&overrides)?;
        config.validate()?;
        Ok(Loaded { config, warnings })
    }

    /// Every key, derived from the serialized defaults.
    fn known_keys() -> KnownKeys {
        KnownKeys::from_defaults(&serde_json::to_value(Config::default()).unwrap_or(Value::Null))
    }

    /// Fills in what the profile decides and the operator left unset.
    fn apply_profile(&mut self, overrides: &Overrides) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        // An empty listen address is how a file or variable says "off".
        if self
            .mqtt
            .tcp_listen
            .as_deref()
            .is_some_and(|listen| listen.trim().is_empty())
        {
            self.mqtt.tcp_listen = None;
        }
        if self
            .telemetry
            .otlp_endpoint
            .as_deref()
            .is_some_and(|endpoint| endpoint.trim().is_empty())
        {
            self.telemetry.otlp_endpoint = None;
        }
        let secret_len = self.api.auth.hs256_secret.as_deref().map_or(0, str::len);
        match self.profile {
            Profile::Dev => {
                if secret_len == 0 {
                    self.api.auth.hs256_secret = Some(DEV_HS256_SECRET.into());
                    warnings.push(
                        "api.auth.hs256_secret is not set: the dev profile signs tokens with a \
                         well-known secret, so anyone can mint them; never expose this instance"
                            .into(),
                    );
                }
                if !overrides.is_set("rules.allow_private_destinations") {
                    self.rules.allow_private_destinations = true;
                }
                if !overrides.is_set("mqtt.tcp_listen") {
                    self.mqtt.tcp_listen = Some(DEV_MQTT_TCP_LISTEN.into());
                }
            }
            Profile::Production => {
                if secret_len == 0 {
                    return Err(ConfigError::Invalid {
                        key: "api.auth.hs256_secret".into(),
                        message: "required in the production profile (set IOTCORE_API_AUTH_HS256_SECRET, \
                                  or profile = \"dev\" on a development machine)"
                            .into(),
                        origin: None,
                    });
                }
                if secret_len < MIN_PRODUCTION_SECRET_BYTES {
                    return Err(ConfigError::Invalid {
                        key: "api.auth.hs256_secret".into(),
                        message: format!(
                            "must be at least {MIN_PRODUCTION_SECRET_BYTES} bytes in the production profile"
                        ),
                        origin: overrides.source_of("api.auth.hs256_secret").cloned(),
                    });
                }
                if !overrides.is_set("mqtt.tcp_listen") {
                    self.mqtt.tcp_listen = None;
                } else if self.mqtt.tcp_listen.is_some() {
                    warnings.push(
                        "mqtt.tcp_listen: plain MQTT over TCP is enabled in production".into(),
                    );
                }
                if !overrides.is_set("rules.allow_private_destinations") {
                    self.rules.allow_private_destinations = false;
                } else if self.rules.allow_private_destinations {
                    warnings.push(
                        "rules.allow_private_destinations: webhooks may reach private addresses"
                            .into(),
                    );
                }
            }
        }
        Ok(warnings)
    }

    /// Checks what types alone cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
            origin: None,
        };
        let url = self.database.url.as_str();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            // The URL itself is not repeated: it may carry a password.
            return Err(invalid("database.url", "expected a postgres:// URL".into()));
        }
        if self.database.max_connections == 0 {
            return Err(invalid(
                "database.max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.mqtt.write_timeout_secs == 0 {
            return Err(invalid(
                "mqtt.write_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    "expected an http:// or https:// URL (OTLP over HTTP)".into(),
                ));
            }
        }
        if self.telemetry.otlp_interval_secs == 0 {
            return Err(invalid(
                "telemetry.otlp_interval_secs",
                "must be at least 1".into(),
            ));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!("not a valid filter directive: {err}"),
            ));
        }
        Ok(())
    }

    /// A copy with every secret replaced by [`REDACTED`], safe to print or log.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        shown.database.url = redact_url(&self.database.url);
        // A collector's URL may carry credentials in its user info.
        shown.telemetry.otlp_endpoint = self.telemetry.otlp_endpoint.as_deref().map(redact_url);
        if shown.api.auth.hs256_secret.is_some() {
            shown.api.auth.hs256_secret = Some(REDACTED.into());
        }
        shown
    }

    /// The effective configuration as TOML, secrets redacted, with the keys that are unset
    /// listed as comments (TOML has no null).
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        let shown = self.redacted();
        let mut out = String::from("# Effective iotcore configuration (secrets redacted).\n");
        if let Ok(value) = serde_json::to_value(&shown) {
            let keys = KnownKeys::from_defaults(&value);
            for path in keys
                .paths()
                .filter(|path| keys.default_of(path).is_some_and(Value::is_null))
            {
                out.push_str(&format!("# {path} is unset\n"));
            }
        }
        out.push('\n');
        out.push_str(&toml::to_string_pretty(&shown)?);
        Ok(out)
    }
}

/// Turns the operator's overrides into a [`Config`]. A value written as text that TOML
/// read as a number or boolean is retried as a string when its key wants one, so
/// `IOTCORE_API_AUTH_HS256_SECRET=12345` works although `12345` looks like an integer.
fn deserialize(overrides: &mut Overrides) -> Result<Config, ConfigError> {
    loop {
        match serde_path_to_error::deserialize::<_, Config>(overrides.document()) {
            Ok(config) => return Ok(config),
            Err(err) => {
                let key = err.path().to_string();
                if overrides.fall_back_to_string(&key) {
                    continue;
                }
                let origin = overrides.source_of(&key).cloned();
                return Err(ConfigError::Invalid {
                    key,
                    message: err.into_inner().to_string(),
                    origin,
                });
            }
        }
    }
}

/// A database URL with its password (in the user info or a `password` parameter)
/// replaced by [`REDACTED`]. Text that is not a URL is redacted whole, since there is no
/// telling which part is secret.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.into();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}={REDACTED}")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests;
