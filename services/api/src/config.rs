use crate::keys::PublicKeyFile;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// Per-tenant limits unless a tenant's own override says otherwise (SPEC §7.3).
    pub quotas: QuotaConfig,
    /// Accept rule webhooks on loopback, private, link-local and metadata addresses. Not a
    /// key of its own: the binary copies `rules.allow_private_destinations` here, so the
    /// API refuses at creation exactly what the rules service would refuse at delivery.
    #[serde(skip)]
    pub allow_private_destinations: bool,
}

/// How bearer tokens are verified (SPEC §6.1).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared HS256 secret (dev profile). Never printed.
    pub hs256_secret: Option<String>,
    /// PEM public keys of identity providers (RS256, ES256, EdDSA).
    pub public_keys: Vec<PublicKeyFile>,
    /// A JWKS file of identity-provider public keys; tokens name theirs by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "0.0.0.0:8080".into(),
            max_body_bytes: 1024 * 1024,
            max_publish_payload_bytes: 256 * 1024,
            auth: AuthConfig::default(),
            quotas: QuotaConfig::default(),
            allow_private_destinations: false,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: None,
            public_keys: Vec::new(),
            jwks_file: None,
            issuer: "iotcore".into(),
            audience: "iotcore".into(),
        }
    }
}

/// The default quotas of every tenant (`[api.quotas]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    pub max_devices: u64,
    pub max_connections: u64,
    pub max_messages_per_second: u64,
    pub max_bytes_per_second: u64,
    pub max_retained_messages: u64,
    pub max_rules: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_devices: 100_000,
            max_connections: 100_000,
            max_messages_per_second: 10_000,
            max_bytes_per_second: 64 * 1024 * 1024,
            max_retained_messages: 100_000,
            max_rules: 1000,
        }
    }
}
