//! Per-tenant quota overrides (SPEC §7.3), kept in `tenants.quotas`. A limit a tenant does
//! not override comes from configuration; the store knows only the overrides.

use crate::notify;
use crate::versions::{self, Versioned, BUMP};
use crate::{Result, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

/// The limits a tenant overrides; `None` means the configured default applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuotaOverrides {
    pub max_devices: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_messages_per_second: Option<u64>,
    pub max_bytes_per_second: Option<u64>,
    pub max_retained_messages: Option<u64>,
    pub max_rules: Option<u64>,
}

/// A tenant's quota overrides and the tenant's version when they were read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionedQuotas {
    pub overrides: QuotaOverrides,
    pub version: DateTime<Utc>,
}

impl Store {
    /// The quota overrides of `tenant`, or `NotFound`.
    pub async fn get_quota_overrides(&self, tenant: &TenantId) -> Result<QuotaOverrides> {
        let row: Option<Json<serde_json::Value>> =
            sqlx::query_scalar("SELECT quotas FROM tenants WHERE id = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        let Json(value) = row.ok_or(StoreError::NotFound)?;
        // Keys this version does not know (or malformed ones) fall back to the defaults.
        Ok(serde_json::from_value(value).unwrap_or_default())
    }

    /// The quota overrides of `tenant` with the tenant's version, or `NotFound`. Quotas
    /// are part of the tenant: the tenant's version moves forward when they change.
    pub async fn get_versioned_quota_overrides(
        &self,
        tenant: &TenantId,
    ) -> Result<VersionedQuotas> {
        let row: Option<(Json<serde_json::Value>, DateTime<Utc>)> =
            sqlx::query_as("SELECT quotas, updated_at FROM tenants WHERE id = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        let (Json(value), version) = row.ok_or(StoreError::NotFound)?;
        Ok(VersionedQuotas {
            overrides: serde_json::from_value(value).unwrap_or_default(),
            version,
        })
    }

    /// Applies `change` to the quota overrides of `tenant`, on the locked row, so that two
    /// changes of different limits cannot undo each other. When `if_match` is given, the
    /// tenant's version must be one of it (`PreconditionFailed` otherwise). A change that
    /// changes nothing keeps the version; any other notifies [`Change::Principals`](notify::Change::Principals), so
    /// that brokers pick up the new connection and rate limits.
    pub async fn update_quota_overrides(
        &self,
        tenant: &TenantId,
        change: impl FnOnce(&mut QuotaOverrides),
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<VersionedQuotas> {
        let mut tx = self.pool.begin().await?;
        versions::check(
            &mut tx,
            Versioned::Tenants,
            tenant,
            tenant.as_str(),
            if_match,
        )
        .await?;
        let row: Option<(Json<serde_json::Value>, DateTime<Utc>)> =
            sqlx::query_as("SELECT quotas, updated_at FROM tenants WHERE id = $1 FOR UPDATE")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        let (Json(value), version) = row.ok_or(StoreError::NotFound)?;
        let before: QuotaOverrides = serde_json::from_value(value).unwrap_or_default();
        let mut overrides = before.clone();
        change(&mut overrides);
        if overrides == before {
            return Ok(VersionedQuotas { overrides, version });
        }
        let version: DateTime<Utc> = sqlx::query_scalar(&format!(
            "UPDATE tenants SET quotas = $2, updated_at = {BUMP} WHERE id = $1 RETURNING updated_at"
        ))
        .bind(tenant)
        .bind(Json(&overrides))
        .fetch_one(&mut *tx)
        .await?;
        notify::commit_principals(tx, tenant).await?;
        Ok(VersionedQuotas { overrides, version })
    }

    /// How many devices `tenant` has.
    pub async fn count_devices(&self, tenant: &TenantId) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM devices WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// How many rules `tenant` has.
    pub async fn count_rules(&self, tenant: &TenantId) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM rules WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(overrides: &QuotaOverrides) -> impl FnOnce(&mut QuotaOverrides) + '_ {
        move |current| *current = overrides.clone()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn overrides_round_trip_per_tenant(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let a = store.create_tenant("a").await.unwrap().id;
        let b = store.create_tenant("b").await.unwrap().id;
        assert_eq!(
            store.get_quota_overrides(&a).await.unwrap(),
            QuotaOverrides::default()
        );
        let overrides = QuotaOverrides {
            max_devices: Some(3),
            max_rules: Some(0),
            ..QuotaOverrides::default()
        };
        store
            .update_quota_overrides(&a, set(&overrides), None)
            .await
            .unwrap();
        assert_eq!(store.get_quota_overrides(&a).await.unwrap(), overrides);
        assert_eq!(
            store.get_quota_overrides(&b).await.unwrap(),
            QuotaOverrides::default()
        );
        assert!(matches!(
            store
                .update_quota_overrides(&TenantId::generate(), set(&overrides), None)
                .await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.count_devices(&a).await.unwrap(), 0);
        assert_eq!(store.count_rules(&a).await.unwrap(), 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn quota_changes_move_the_version_and_honour_if_match(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let a = store.create_tenant("a").await.unwrap().id;
        let v0 = store
            .get_versioned_quota_overrides(&a)
            .await
            .unwrap()
            .version;
        assert_eq!(v0, store.get_tenant(&a).await.unwrap().updated_at);

        // Setting what is already there changes nothing, not even the version.
        let same = store
            .update_quota_overrides(&a, |q| q.max_devices = None, Some(&[v0]))
            .await
            .unwrap();
        assert_eq!(same.version, v0);

        let changed = store
            .update_quota_overrides(&a, |q| q.max_devices = Some(7), Some(&[v0]))
            .await
            .unwrap();
        assert!(changed.version > v0);
        assert_eq!(changed.overrides.max_devices, Some(7));
        assert_eq!(
            store.get_tenant(&a).await.unwrap().updated_at,
            changed.version
        );

        // A writer holding the old version loses, and changes nothing.
        assert!(matches!(
            store
                .update_quota_overrides(&a, |q| q.max_rules = Some(1), Some(&[v0]))
                .await,
            Err(StoreError::PreconditionFailed)
        ));
        let now = store.get_versioned_quota_overrides(&a).await.unwrap();
        assert_eq!(now.overrides.max_rules, None);
        assert_eq!(now.version, changed.version);
    }
}
