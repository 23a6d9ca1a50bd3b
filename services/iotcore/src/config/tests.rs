use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-production";

fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    vars.iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

fn load(flags: &Flags, vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    Config::load_from(flags, env(vars))
}

fn dev(vars: &[(&str, &str)]) -> Loaded {
    let mut all = vec![("IOTCORE_PROFILE", "dev")];
    all.extend_from_slice(vars);
    load(&Flags::default(), &all).unwrap()
}

/// A configuration file in the temporary folder, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "iotcore-config-{:016x}.toml",
            rand::random::<u64>()
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn env_names_cover_every_key_without_ambiguity() {
    let keys = Config::known_keys();
    let names: Vec<&str> = keys.env_names().map(|(name, _)| name).collect();
    for expected in [
        "IOTCORE_PROFILE",
        "IOTCORE_DATABASE_URL",
        "IOTCORE_DATABASE_MAX_CONNECTIONS",
        "IOTCORE_MQTT_TCP_LISTEN",
        "IOTCORE_MQTT_CONNECT_TIMEOUT_SECS",
        "IOTCORE_API_LISTEN",
        "IOTCORE_API_AUTH_HS256_SECRET",
        "IOTCORE_RULES_ALLOW_PRIVATE_DESTINATIONS",
        "IOTCORE_LOG_FORMAT",
        "IOTCORE_LOG_LEVEL",
        "IOTCORE_TELEMETRY_LISTEN",
        "IOTCORE_TELEMETRY_OTLP_ENDPOINT",
        "IOTCORE_TELEMETRY_OTLP_INTERVAL_SECS",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for (name, paths) in keys.env_names() {
        assert_eq!(paths.len(), 1, "{name} names several keys: {paths:?}");
    }
}

#[test]
fn production_is_the_default_and_requires_a_token_secret() {
    let err = load(&Flags::default(), &[]).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("api.auth.hs256_secret: required"),
        "{message}"
    );
}

#[test]
fn production_rejects_a_short_secret_and_names_where_it_came_from() {
    let err = load(
        &Flags::default(),
        &[("IOTCORE_API_AUTH_HS256_SECRET", "short")],
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("api.auth.hs256_secret: must be at least 32 bytes"),
        "{message}"
    );
    assert!(
        message.contains("IOTCORE_API_AUTH_HS256_SECRET"),
        "{message}"
    );
    assert!(!message.contains("short"), "the secret leaked: {message}");
}

#[test]
fn production_keeps_plain_tcp_and_private_destinations_off_unless_set() {
    let loaded = load(
        &Flags::default(),
        &[("IOTCORE_API_AUTH_HS256_SECRET", SECRET)],
    )
    .unwrap();
    assert_eq!(loaded.config.profile, Profile::Production);
    assert_eq!(loaded.config.mqtt.tcp_listen, None);
    assert!(!loaded.config.rules.allow_private_destinations);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    let loaded = load(
        &Flags {
            mqtt_listen: Some("127.0.0.1:1884".into()),
            ..Flags::default()
        },
        &[
            ("IOTCORE_API_AUTH_HS256_SECRET", SECRET),
            ("IOTCORE_RULES_ALLOW_PRIVATE_DESTINATIONS", "true"),
        ],
    )
    .unwrap();
    assert_eq!(
        loaded.config.mqtt.tcp_listen.as_deref(),
        Some("127.0.0.1:1884")
    );
    assert!(loaded.config.rules.allow_private_destinations);
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
}

#[test]
fn dev_profile_fills_in_a_dev_secret_with_a_warning() {
    let loaded = dev(&[]);
    assert_eq!(
        loaded.config.api.auth.hs256_secret.as_deref(),
        Some(DEV_HS256_SECRET)
    );
    assert!(loaded.config.rules.allow_private_destinations);
    assert_eq!(
        loaded.config.mqtt.tcp_listen.as_deref(),
        Some(DEV_MQTT_TCP_LISTEN)
    );
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].contains("api.auth.hs256_secret"));
}

#[test]
fn dev_profile_respects_explicit_choices() {
    let loaded = dev(&[
        ("IOTCORE_API_AUTH_HS256_SECRET", "mine"),
        ("IOTCORE_MQTT_TCP_LISTEN", ""),
        ("IOTCORE_RULES_ALLOW_PRIVATE_DESTINATIONS", "false"),
    ]);
    assert_eq!(loaded.config.api.auth.hs256_secret.as_deref(), Some("mine"));
    assert_eq!(loaded.config.mqtt.tcp_listen, None);
    assert!(!loaded.config.rules.allow_private_destinations);
    assert!(loaded.warnings.is_empty());
}

#[test]
fn layers_apply_file_then_env_then_flags() {
    let file = TempFile::new(
        "profile = \"dev\"\n[mqtt]\nconnect_timeout_secs = 3\nmax_topic_levels = 7\n[api]\nlisten = \"127.0.0.1:1\"\n",
    );
    let flags = Flags {
        file: Some(file.0.clone()),
        set: vec!["mqtt.max_topic_levels=9".into()],
        api_listen: Some("127.0.0.1:3".into()),
        ..Flags::default()
    };
    let loaded = load(
        &flags,
        &[
            ("IOTCORE_MQTT_CONNECT_TIMEOUT_SECS", "4"),
            ("IOTCORE_MQTT_MAX_TOPIC_LEVELS", "8"),
            ("IOTCORE_API_LISTEN", "127.0.0.1:2"),
        ],
    )
    .unwrap();
    let config = loaded.config;
    assert_eq!(config.profile, Profile::Dev);
    assert_eq!(config.mqtt.connect_timeout_secs, 4);
    assert_eq!(config.mqtt.max_topic_levels, 9);
    assert_eq!(config.api.listen, "127.0.0.1:3");
    // Untouched keys keep their defaults.
    assert_eq!(
        config.database.max_connections,
        DatabaseConfig::default().max_connections
    );
}

#[test]
fn errors_name_the_key_and_the_variable() {
    let err = load(
        &Flags::default(),
        &[
            ("IOTCORE_PROFILE", "dev"),
            ("IOTCORE_MQTT_CONNECT_TIMEOUT_SECS", "x"),
        ],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "mqtt.connect_timeout_secs: invalid type: string \"x\", expected u64 \
         (from environment variable IOTCORE_MQTT_CONNECT_TIMEOUT_SECS)"
    );
}

#[test]
fn errors_name_the_key_and_the_file() {
    let file = TempFile::new("[mqtt]\nmax_packet_size = \"big\"\n");
    let err = load(
        &Flags {
            file: Some(file.0.clone()),
            ..Flags::default()
        },
        &[],
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("mqtt.max_packet_size: invalid type: string \"big\""),
        "{message}"
    );
    assert!(message.contains(&file.0.display().to_string()), "{message}");
}

#[test]
fn unknown_keys_in_the_file_are_named() {
    let file = TempFile::new("[mqtt]\ntcp_lisen = \"0.0.0.0:1\"\n");
    let err = load(
        &Flags {
            file: Some(file.0.clone()),
            ..Flags::default()
        },
        &[],
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("tcp_lisen"), "{message}");
    assert!(message.starts_with("mqtt"), "{message}");
}

#[test]
fn unknown_env_variables_are_errors() {
    let err = load(
        &Flags::default(),
        &[
            ("IOTCORE_PROFILE", "dev"),
            ("IOTCORE_MQTT_LISTEN", "0.0.0.0:1"),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::UnknownEnv { .. }));
    assert!(
        err.to_string()
            .starts_with("IOTCORE_MQTT_LISTEN: no configuration key"),
        "{err}"
    );
}

#[test]
fn bad_profile_and_log_level_are_named() {
    let err = load(&Flags::default(), &[("IOTCORE_PROFILE", "staging")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("profile: unknown variant `staging`"),
        "{err}"
    );
    let err = load(
        &Flags::default(),
        &[("IOTCORE_PROFILE", "dev"), ("IOTCORE_LOG_LEVEL", "info,[")],
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("log.level: "), "{err}");
}

#[test]
fn malformed_set_flags_are_rejected() {
    for arg in ["novalue", "=5", "mqtt..x=1"] {
        let err = load(
            &Flags {
                set: vec![arg.into()],
                ..Flags::default()
            },
            &[("IOTCORE_PROFILE", "dev")],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::BadSet { .. }), "{arg}: {err}");
    }
}

#[test]
fn numeric_looking_secrets_stay_strings() {
    let loaded = dev(&[("IOTCORE_API_AUTH_HS256_SECRET", "12345")]);
    assert_eq!(
        loaded.config.api.auth.hs256_secret.as_deref(),
        Some("12345")
    );
}

#[test]
fn non_postgres_urls_are_rejected_without_echoing_them() {
    let err = load(
        &Flags {
            database_url: Some("mysql://u:hunter2@h/db".into()),
            ..Flags::default()
        },
        &[("IOTCORE_PROFILE", "dev")],
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("database.url: "), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn redact_url_hides_passwords_only() {
    assert_eq!(
        redact_url("postgres://postgres@127.0.0.1:5433/iotcore"),
        "postgres://postgres@127.0.0.1:5433/iotcore"
    );
    assert_eq!(
        redact_url("postgres://u:p%40ss@db:5432/x?sslmode=require"),
        "postgres://u:<redacted>@db:5432/x?sslmode=require"
    );
    assert_eq!(
        redact_url("postgresql://u:a@b@db/x"),
        "postgresql://u:<redacted>@db/x"
    );
    assert_eq!(
        redact_url("postgres://db/x?user=u&password=s3cret&x=1"),
        "postgres://db/x?user=u&password=<redacted>&x=1"
    );
    assert_eq!(redact_url("not a url with s3cret"), REDACTED);
}

#[test]
fn printed_and_debugged_configuration_hides_secrets() {
    let loaded = dev(&[
        ("IOTCORE_API_AUTH_HS256_SECRET", "topsecretvalue"),
        ("IOTCORE_DATABASE_URL", "postgres://u:hunter2@db/iotcore"),
        ("IOTCORE_MQTT_TCP_LISTEN", ""),
    ]);
    let printed = loaded.config.to_redacted_toml().unwrap();
    let debugged = format!("{:?}", loaded.config);
    for shown in [&printed, &debugged] {
        assert!(!shown.contains("topsecretvalue"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
    }
    assert!(printed.contains("# mqtt.tcp_listen is unset"), "{printed}");
    // What is printed is a valid configuration file again.
    let reparsed: Config = toml::from_str(&printed).unwrap();
    assert_eq!(reparsed.database.url, "postgres://u:<redacted>@db/iotcore");
}

#[test]
fn otlp_endpoint_must_be_http_and_is_shown_without_its_password() {
    let loaded = dev(&[(
        "IOTCORE_TELEMETRY_OTLP_ENDPOINT",
        "https://user:collector-secret@otel.example:4318",
    )]);
    let shown = loaded.config.to_redacted_toml().unwrap();
    assert!(!shown.contains("collector-secret"), "{shown}");
    assert!(format!("{:?}", loaded.config).contains("user:<redacted>@otel.example"));
    let empty = dev(&[("IOTCORE_TELEMETRY_OTLP_ENDPOINT", "")]);
    assert_eq!(empty.config.telemetry.otlp_endpoint, None);
    let mut vars = vec![("IOTCORE_PROFILE", "dev")];
    vars.push(("IOTCORE_TELEMETRY_OTLP_ENDPOINT", "otel.example:4317"));
    let err = load(&Flags::default(), &vars).unwrap_err().to_string();
    assert!(err.starts_with("telemetry.otlp_endpoint:"), "{err}");
}

#[test]
fn otlp_interval_defaults_to_a_minute_and_zero_is_refused() {
    assert_eq!(dev(&[]).config.telemetry.otlp_interval_secs, 60);
    let set = dev(&[("IOTCORE_TELEMETRY_OTLP_INTERVAL_SECS", "5")]);
    assert_eq!(set.config.telemetry.otlp_interval_secs, 5);
    let vars = [
        ("IOTCORE_PROFILE", "dev"),
        ("IOTCORE_TELEMETRY_OTLP_INTERVAL_SECS", "0"),
    ];
    let err = load(&Flags::default(), &vars).unwrap_err().to_string();
    assert!(err.starts_with("telemetry.otlp_interval_secs:"), "{err}");
}

#[test]
fn write_timeout_defaults_to_thirty_seconds_and_zero_is_refused() {
    assert_eq!(dev(&[]).config.mqtt.write_timeout_secs, 30);
    let set = dev(&[("IOTCORE_MQTT_WRITE_TIMEOUT_SECS", "2")]);
    assert_eq!(set.config.mqtt.write_timeout_secs, 2);
    for value in ["0", "-1", "soon"] {
        let vars = [
            ("IOTCORE_PROFILE", "dev"),
            ("IOTCORE_MQTT_WRITE_TIMEOUT_SECS", value),
        ];
        let err = load(&Flags::default(), &vars).unwrap_err().to_string();
        assert!(err.starts_with("mqtt.write_timeout_secs"), "{value}: {err}");
    }
}
