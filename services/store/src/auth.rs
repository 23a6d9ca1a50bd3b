//! What the broker needs to authenticate a client with a username and password
//! (SPEC §4.1), and the argon2id hashing used for every stored password.

use crate::{BrokerId, DeviceId, RegistryId, Result, Store, StoreError, TenantId};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use std::collections::BTreeMap;

/// Hashes `secret` with argon2id (the crate's defaults: 19 MiB, 2 passes, 1 lane, as
/// OWASP recommends) into a PHC string that carries its own salt and parameters.
pub fn hash_password(secret: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| StoreError::Hash(e.to_string()))
}

/// Whether `secret` matches the PHC string `hash`. A malformed stored hash never matches.
pub fn verify_password(hash: &str, secret: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(secret, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the username is unknown, so that an unknown principal
/// costs the same time as a wrong password (SPEC §4.1).
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("iotcore-decoy-password-never-matches").unwrap_or_default())
}

/// Who a username names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    Device {
        device_id: DeviceId,
        registry_id: RegistryId,
        name: String,
        labels: BTreeMap<String, String>,
        enabled: bool,
    },
    /// A registry client acting for the devices of its registry (SPEC §3.4).
    Registry { registry_id: RegistryId },
    /// A client of a virtual broker (SPEC §3.6).
    Broker { broker_id: BrokerId },
}

/// A principal with its active, unexpired password hashes.
#[derive(Clone, Debug)]
pub struct PasswordPrincipal {
    pub tenant_id: TenantId,
    pub tenant_active: bool,
    /// Whether the built-in rights of SPEC §4.2 apply (a registry can turn them off).
    pub default_policy: bool,
    /// The tenant's rule generation (see `tenants.rules_version`).
    pub rules_version: i64,
    pub kind: PrincipalKind,
    pub hashes: Vec<String>,
    /// The earliest expiry among those passwords, if any expires: a successful check must
    /// not be remembered past it.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: DeviceId,
    tenant_id: TenantId,
    registry_id: RegistryId,
    name: String,
    labels: Json<BTreeMap<String, String>>,
    status: String,
    tenant_status: String,
    rules_version: i64,
    default_policy: bool,
    hashes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct OwnerRow {
    id: String,
    tenant_id: TenantId,
    tenant_status: String,
    rules_version: i64,
    default_policy: bool,
    hashes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
}

impl Store {
    /// The principal named by an MQTT username, or `None` when there is none. The kind
    /// is read from the id's prefix, so a malformed username costs no query.
    pub async fn find_password_principal(
        &self,
        username: &str,
    ) -> Result<Option<PasswordPrincipal>> {
        if let Some(device_id) = DeviceId::parse(username) {
            let row: Option<DeviceRow> = sqlx::query_as(
                "SELECT d.id, d.tenant_id, d.registry_id, d.name, d.labels, d.status,
                        t.status AS tenant_status, t.rules_version, r.default_policy,
                        coalesce(array_agg(p.hash) FILTER (WHERE p.id IS NOT NULL), '{}') AS hashes,
                        min(p.expires_at) AS expires_at
                   FROM devices d
                   JOIN tenants t ON t.id = d.tenant_id
                   JOIN registries r ON r.tenant_id = d.tenant_id AND r.id = d.registry_id
                   LEFT JOIN passwords p ON p.tenant_id = d.tenant_id AND p.device_id = d.id
                                        AND (p.expires_at IS NULL OR p.expires_at > now())
                  WHERE d.id = $1
                  GROUP BY d.id, t.id, r.id",
            )
            .bind(&device_id)
            .fetch_optional(&self.pool)
            .await?;
            return Ok(row.map(|row| PasswordPrincipal {
                tenant_id: row.tenant_id,
                tenant_active: row.tenant_status == "active",
                default_policy: row.default_policy,
                rules_version: row.rules_version,
                kind: PrincipalKind::Device {
                    device_id: row.id,
                    registry_id: row.registry_id,
                    name: row.name,
                    labels: row.labels.0,
                    enabled: row.status == "enabled",
                },
                hashes: row.hashes,
                expires_at: row.expires_at,
            }));
        }
        if let Some(registry_id) = RegistryId::parse(username) {
            let row: Option<OwnerRow> = sqlx::query_as(
                "SELECT r.id, r.tenant_id, t.status AS tenant_status, t.rules_version, r.default_policy,
                        coalesce(array_agg(p.hash) FILTER (WHERE p.id IS NOT NULL), '{}') AS hashes,
                        min(p.expires_at) AS expires_at
                   FROM registries r
                   JOIN tenants t ON t.id = r.tenant_id
                   LEFT JOIN passwords p ON p.tenant_id = r.tenant_id AND p.registry_id = r.id
                                        AND (p.expires_at IS NULL OR p.expires_at > now())
                  WHERE r.id = $1
                  GROUP BY r.id, t.id",
            )
            .bind(&registry_id)
            .fetch_optional(&self.pool)
            .await?;
            return Ok(row.map(|row| owner_principal(row, PrincipalKind::Registry { registry_id })));
        }
        if let Some(broker_id) = BrokerId::parse(username) {
            let row: Option<OwnerRow> = sqlx::query_as(
                "SELECT b.id, b.tenant_id, t.status AS tenant_status, t.rules_version, true AS default_policy,
                        coalesce(array_agg(p.hash) FILTER (WHERE p.id IS NOT NULL), '{}') AS hashes,
                        min(p.expires_at) AS expires_at
                   FROM brokers b
                   JOIN tenants t ON t.id = b.tenant_id
                   LEFT JOIN passwords p ON p.tenant_id = b.tenant_id AND p.broker_id = b.id
                                        AND (p.expires_at IS NULL OR p.expires_at > now())
                  WHERE b.id = $1
                  GROUP BY b.id, t.id",
            )
            .bind(&broker_id)
            .fetch_optional(&self.pool)
            .await?;
            return Ok(row.map(|row| owner_principal(row, PrincipalKind::Broker { broker_id })));
        }
        Ok(None)
    }
}

impl Store {
    /// The registry of a device of `tenant`, for the registry scope of SPEC §3.4.
    pub async fn device_registry(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<Option<RegistryId>> {
        Ok(
            sqlx::query_scalar("SELECT registry_id FROM devices WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(device)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

fn owner_principal(row: OwnerRow, kind: PrincipalKind) -> PasswordPrincipal {
    debug_assert_eq!(
        row.id,
        match &kind {
            PrincipalKind::Registry { registry_id } => registry_id.to_string(),
            PrincipalKind::Broker { broker_id } => broker_id.to_string(),
            PrincipalKind::Device { device_id, .. } => device_id.to_string(),
        }
    );
    PasswordPrincipal {
        tenant_id: row.tenant_id,
        tenant_active: row.tenant_status == "active",
        default_policy: row.default_policy,
        rules_version: row.rules_version,
        kind,
        hashes: row.hashes,
        expires_at: row.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_its_own_secret() {
        let hash = hash_password("correct horse battery staple").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, b"correct horse battery staple"));
        assert!(!verify_password(&hash, b"correct horse battery stapler"));
        assert!(!verify_password("not a phc string", b"anything"));
        assert!(!verify_password(decoy_hash(), b""));
    }
}
