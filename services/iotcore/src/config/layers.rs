//! The operator's overrides, gathered from a TOML file, `IOTCORE_*` environment variables
//! and flags into one document that is then deserialized over the built-in defaults.
//!
//! Each value remembers where it came from, so an error can name the key *and* the file,
//! variable or flag that set it.

use super::ConfigError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::Path;

/// Prefix of every environment variable that configures iotcore.
pub const ENV_PREFIX: &str = "IOTCORE_";

/// `IOTCORE_*` variables that are not configuration keys: they are read by the binary's
/// argument parser, by the scripts under `deploy/local/` or by the tests, so meeting them
/// in the environment is expected rather than a typo.
const ENV_ALLOW_LIST: &[&str] = &[
    "IOTCORE_CONFIG",
    "IOTCORE_BIN",
    "IOTCORE_DATA_DIR",
    "IOTCORE_PG_PORT",
];

/// Prefixes of variables owned by the test suite.
const ENV_ALLOW_PREFIXES: &[&str] = &["IOTCORE_TEST_"];

/// Where one configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(String),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "from file {path}"),
            Source::Env(name) => write!(f, "from environment variable {name}"),
            Source::Flag(flag) => write!(f, "from flag {flag}"),
        }
    }
}

/// The environment variable name of a key path: `mqtt.tcp_listen` → `IOTCORE_MQTT_TCP_LISTEN`.
pub fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_uppercase())
}

/// Every key the configuration has, with its default, derived from the serialized
/// defaults (where an unset `Option` is `null` rather than absent, so it is a key too).
#[derive(Debug)]
pub struct KnownKeys {
    defaults: BTreeMap<String, Value>,
    by_env: BTreeMap<String, Vec<String>>,
}

impl KnownKeys {
    pub fn from_defaults(defaults: &Value) -> KnownKeys {
        let mut leaves = BTreeMap::new();
        collect_leaves(defaults, String::new(), &mut leaves);
        let mut by_env: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for path in leaves.keys() {
            by_env.entry(env_name(path)).or_default().push(path.clone());
        }
        KnownKeys {
            defaults: leaves,
            by_env,
        }
    }

    /// The key a variable names, or `None` when it names none. Two keys that map to the
    /// same name (`a.b_c` and `a_b.c`) are reported as an error rather than guessed.
    fn path_for_env(&self, name: &str) -> Result<Option<&str>, ConfigError> {
        match self.by_env.get(name).map(Vec::as_slice) {
            None => Ok(None),
            Some([path]) => Ok(Some(path)),
            Some(paths) => Err(ConfigError::AmbiguousEnv {
                name: name.to_owned(),
                paths: paths.join(", "),
            }),
        }
    }

    pub fn default_of(&self, path: &str) -> Option<&Value> {
        self.defaults.get(path)
    }

    /// Every key path, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.defaults.keys().map(String::as_str)
    }

    /// Every environment variable name that configures a key, in order.
    #[cfg(test)]
    pub fn env_names(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.by_env
            .iter()
            .map(|(name, paths)| (name.as_str(), paths.as_slice()))
    }
}

/// Leaves are scalars, arrays, nulls and empty tables (a map whose entries are not known in
/// advance); only non-empty tables are descended into.
fn collect_leaves(value: &Value, prefix: String, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                collect_leaves(child, path, out);
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix, value.clone());
        }
        _ => {}
    }
}

/// Where a value came from, and the text it was written as when that text was read as
/// something other than a string (so a key that turns out to want a string can get it).
#[derive(Clone, Debug)]
struct Origin {
    source: Source,
    raw_text: Option<String>,
}

/// The overrides, merged in layer order (later layers win key by key).
#[derive(Debug, Default)]
pub struct Overrides {
    doc: Map<String, Value>,
    origins: BTreeMap<String, Origin>,
}

impl Overrides {
    /// Merges a TOML configuration file.
    pub fn merge_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let shown = path.display().to_string();
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::File {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let value = serde_json::to_value(table).map_err(|e| ConfigError::File {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let mut leaves = BTreeMap::new();
        collect_leaves(&value, String::new(), &mut leaves);
        for (key, leaf) in leaves {
            self.insert(
                &key,
                leaf,
                Origin {
                    source: Source::File(shown.clone()),
                    raw_text: None,
                },
            );
        }
        Ok(())
    }

    /// Merges the `IOTCORE_*` variables of `vars`. Every such variable must name a key or be
    /// on the allow-list: a misspelt variable would otherwise be silently ignored.
    pub fn merge_env(
        &mut self,
        keys: &KnownKeys,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<(), ConfigError> {
        let mut unknown = Vec::new();
        let mut found = Vec::new();
        for (name, value) in vars {
            // A variable whose name is not Unicode cannot be one of ours.
            let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)) else {
                continue;
            };
            if ENV_ALLOW_LIST.contains(&name)
                || ENV_ALLOW_PREFIXES.iter().any(|p| name.starts_with(p))
            {
                continue;
            }
            match keys.path_for_env(name)? {
                None => unknown.push(name.to_owned()),
                Some(path) => {
                    let Some(value) = value.to_str() else {
                        return Err(ConfigError::Invalid {
                            key: path.to_owned(),
                            message: "value is not valid UTF-8".into(),
                            origin: Some(Source::Env(name.to_owned())),
                        });
                    };
                    found.push((path.to_owned(), name.to_owned(), value.to_owned()));
                }
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            return Err(ConfigError::UnknownEnv {
                names: unknown.join(", "),
            });
        }
        // Sorted so the outcome does not depend on the order of the process environment.
        found.sort();
        for (path, name, value) in found {
            self.set(keys, &path, &value, Source::Env(name));
        }
        Ok(())
    }

    /// Sets one key from text written by the operator (a variable or a flag).
    pub fn set(&mut self, keys: &KnownKeys, path: &str, text: &str, source: Source) {
        let default = keys.default_of(path);
        let value = parse_text(text, default);
        let raw_text = (!value.is_string()).then(|| text.to_owned());
        self.insert(path, value, Origin { source, raw_text });
    }

    /// Whether the operator gave `path` a value (possibly an explicit "unset").
    pub fn is_set(&self, path: &str) -> bool {
        let mut segments = path.split('.');
        let Some(first) = segments.next() else {
            return false;
        };
        let mut node = self.doc.get(first);
        for segment in segments {
            node = node.and_then(|value| value.get(segment));
        }
        node.is_some()
    }

    pub fn document(&self) -> Value {
        Value::Object(self.doc.clone())
    }

    /// Where the value at `path` came from: the key itself, the table it was set as a whole
    /// from, or (for an error about a table, like an unknown field) any key set inside it.
    pub fn source_of(&self, path: &str) -> Option<&Source> {
        if let Some(origin) = self.origins.get(path) {
            return Some(&origin.source);
        }
        self.origins
            .iter()
            .find(|(set, _)| is_prefix(set, path) || is_prefix(path, set))
            .map(|(_, origin)| &origin.source)
    }

    /// Re-reads the value at `path` as the plain string it was written as. Returns false
    /// when there is nothing to fall back to (the value was a string already, or came from
    /// a file, where TOML's own typing is authoritative).
    pub fn fall_back_to_string(&mut self, path: &str) -> bool {
        let Some(origin) = self.origins.get_mut(path) else {
            return false;
        };
        let Some(text) = origin.raw_text.take() else {
            return false;
        };
        let origin = origin.clone();
        self.insert(path, Value::String(text), origin);
        true
    }

    fn insert(&mut self, path: &str, value: Value, origin: Origin) {
        // A key set now replaces whatever an earlier layer set at, above or below it.
        self.origins
            .retain(|set, _| !(set == path || is_prefix(path, set)));
        self.origins.insert(path.to_owned(), origin);
        let mut table = &mut self.doc;
        let mut segments = path.split('.').peekable();
        while let Some(segment) = segments.next() {
            if segments.peek().is_none() {
                table.insert(segment.to_owned(), value);
                return;
            }
            let entry = table
                .entry(segment.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(inner) = entry else { return };
            table = inner;
        }
    }
}

/// Whether `outer` is a table path strictly containing `inner`.
fn is_prefix(outer: &str, inner: &str) -> bool {
    inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'.'
}

/// Reads operator-written text as a TOML value (`5`, `true`, `"quoted"`, `[1, 2]`), falling
/// back to the text itself as a string. Keys whose default is a string take the text as is,
/// so a secret that happens to look like a number stays a string; an empty text unsets a key
/// whose default is unset.
fn parse_text(text: &str, default: Option<&Value>) -> Value {
    match default {
        Some(Value::String(_)) => return Value::String(text.to_owned()),
        Some(Value::Null) if text.is_empty() => return Value::Null,
        _ => {}
    }
    let parsed = toml::from_str::<toml::Table>(&format!("value = {text}"))
        .ok()
        .filter(|table| table.len() == 1)
        .and_then(|mut table| table.remove("value"))
        .and_then(|value| serde_json::to_value(value).ok());
    parsed.unwrap_or_else(|| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> KnownKeys {
        KnownKeys::from_defaults(&json!({
            "profile": "production",
            "database": { "url": "postgres://x", "max_connections": 10 },
            "mqtt": { "tcp_listen": null, "connect_timeout_secs": 10 },
            "rules": { "allow_private_destinations": false },
            "quotas": {},
        }))
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn env_names_are_the_uppercased_key_path() {
        assert_eq!(env_name("mqtt.tcp_listen"), "IOTCORE_MQTT_TCP_LISTEN");
        assert_eq!(
            env_name("api.auth.hs256_secret"),
            "IOTCORE_API_AUTH_HS256_SECRET"
        );
        assert_eq!(env_name("profile"), "IOTCORE_PROFILE");
    }

    #[test]
    fn null_defaults_and_empty_tables_are_keys() {
        let keys = keys();
        let paths: Vec<&str> = keys.paths().collect();
        assert!(paths.contains(&"mqtt.tcp_listen"));
        assert!(paths.contains(&"quotas"));
        assert!(!paths.contains(&"mqtt"));
    }

    #[test]
    fn env_values_are_typed_by_toml_with_string_fallback() {
        let mut overrides = Overrides::default();
        overrides
            .merge_env(
                &keys(),
                env(&[
                    ("IOTCORE_MQTT_CONNECT_TIMEOUT_SECS", "5"),
                    ("IOTCORE_RULES_ALLOW_PRIVATE_DESTINATIONS", "true"),
                    ("IOTCORE_MQTT_TCP_LISTEN", "127.0.0.1:1883"),
                    ("IOTCORE_DATABASE_URL", "42"),
                ]),
            )
            .unwrap();
        assert_eq!(
            overrides.document(),
            json!({
                "mqtt": { "connect_timeout_secs": 5, "tcp_listen": "127.0.0.1:1883" },
                "rules": { "allow_private_destinations": true },
                "database": { "url": "42" },
            })
        );
    }

    #[test]
    fn empty_env_value_unsets_an_optional_key() {
        let mut overrides = Overrides::default();
        overrides
            .merge_env(&keys(), env(&[("IOTCORE_MQTT_TCP_LISTEN", "")]))
            .unwrap();
        assert_eq!(
            overrides.document(),
            json!({ "mqtt": { "tcp_listen": null } })
        );
        assert!(overrides.is_set("mqtt.tcp_listen"));
    }

    #[test]
    fn unknown_env_variables_are_all_named() {
        let mut overrides = Overrides::default();
        let err = overrides
            .merge_env(
                &keys(),
                env(&[
                    ("IOTCORE_MQTT_LISTEN", "x"),
                    ("IOTCORE_DATABSE_URL", "y"),
                    ("HOME", "/"),
                ]),
            )
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("IOTCORE_DATABSE_URL, IOTCORE_MQTT_LISTEN"),
            "{message}"
        );
    }

    #[test]
    fn allow_listed_env_variables_are_ignored() {
        let mut overrides = Overrides::default();
        overrides
            .merge_env(
                &keys(),
                env(&[
                    ("IOTCORE_CONFIG", "x.toml"),
                    ("IOTCORE_TEST_DATABASE_URL", "y"),
                    ("IOTCORE_BIN", "z"),
                ]),
            )
            .unwrap();
        assert_eq!(overrides.document(), json!({}));
    }

    #[test]
    fn ambiguous_env_names_are_rejected() {
        let keys = KnownKeys::from_defaults(&json!({ "a": { "b_c": 1 }, "a_b": { "c": 2 } }));
        let err = Overrides::default()
            .merge_env(&keys, env(&[("IOTCORE_A_B_C", "3")]))
            .unwrap_err();
        assert!(err.to_string().contains("a.b_c, a_b.c"), "{err}");
    }

    #[test]
    fn later_layers_win_and_replace_whole_subtrees() {
        let keys = keys();
        let mut overrides = Overrides::default();
        overrides
            .merge_file(
                Path::new("f.toml"),
                "[mqtt]\nconnect_timeout_secs = 3\ntcp_listen = \"0.0.0.0:1\"\n",
            )
            .unwrap();
        overrides
            .merge_env(&keys, env(&[("IOTCORE_MQTT_CONNECT_TIMEOUT_SECS", "4")]))
            .unwrap();
        assert_eq!(
            overrides.source_of("mqtt.connect_timeout_secs"),
            Some(&Source::Env("IOTCORE_MQTT_CONNECT_TIMEOUT_SECS".into()))
        );
        assert_eq!(
            overrides.source_of("mqtt.tcp_listen"),
            Some(&Source::File("f.toml".into()))
        );
        overrides.set(
            &keys,
            "mqtt",
            "{ connect_timeout_secs = 9 }",
            Source::Flag("--set".into()),
        );
        assert_eq!(
            overrides.document(),
            json!({ "mqtt": { "connect_timeout_secs": 9 } })
        );
        assert_eq!(
            overrides.source_of("mqtt.tcp_listen"),
            Some(&Source::Flag("--set".into()))
        );
    }

    #[test]
    fn a_value_can_fall_back_to_its_text_once() {
        let keys = keys();
        let mut overrides = Overrides::default();
        overrides.set(&keys, "api.token", "12345", Source::Flag("--set".into()));
        assert_eq!(overrides.document(), json!({ "api": { "token": 12345 } }));
        assert!(overrides.fall_back_to_string("api.token"));
        assert_eq!(overrides.document(), json!({ "api": { "token": "12345" } }));
        assert!(!overrides.fall_back_to_string("api.token"));
    }

    #[test]
    fn multi_line_text_is_not_read_as_several_keys() {
        assert_eq!(
            parse_text("1\nother = 2", None),
            Value::String("1\nother = 2".into())
        );
        assert_eq!(
            parse_text("\"quoted\"", None),
            Value::String("quoted".into())
        );
        assert_eq!(parse_text("[1, 2]", None), json!([1, 2]));
    }
}
