use serde::{Deserialize, Serialize};

/// The `[api]` section of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: String,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest payload of a message published through the API, in bytes.
    pub max_publish_payload_bytes: usize,
    pub auth: AuthConfig,
}

/// How bearer tokens are verified (SPEC §6.1).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared HS256 secret (dev profile). Never printed.
    pub hs256_secret: Option<String>,
    pub issuer: String,
    pub audience: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "0.0.0.0:8080".into(),
            max_body_bytes: 1024 * 1024,
            max_publish_payload_bytes: 256 * 1024,
            auth: AuthConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: None,
            issuer: "iotcore".into(),
            audience: "iotcore".into(),
        }
    }
}
