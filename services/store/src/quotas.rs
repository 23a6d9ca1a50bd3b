//! Per-tenant quota overrides (SPEC §7.3), kept in `tenants.quotas`. A limit a tenant does
//! not override comes from configuration; the store knows only the overrides.

use crate::notify::{self, Change};
use crate::versions::BUMP;
use crate::{Result, Store, StoreError, TenantId};
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

    /// Replaces the quota overrides of `tenant`; notifies [`Change::Principals`] so that
    /// brokers pick up the new connection and rate limits.
    pub async fn set_quota_overrides(
        &self,
        tenant: &TenantId,
        overrides: &QuotaOverrides,
    ) -> Result<QuotaOverrides> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(&format!(
            "UPDATE tenants SET quotas = $2, updated_at = {BUMP} WHERE id = $1"
        ))
        .bind(tenant)
        .bind(Json(overrides))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        notify::publish(
            &mut *tx,
            &Change::Principals {
                tenant_id: tenant.clone(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(overrides.clone())
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
        store.set_quota_overrides(&a, &overrides).await.unwrap();
        assert_eq!(store.get_quota_overrides(&a).await.unwrap(), overrides);
        assert_eq!(
            store.get_quota_overrides(&b).await.unwrap(),
            QuotaOverrides::default()
        );
        assert!(matches!(
            store
                .set_quota_overrides(&TenantId::generate(), &overrides)
                .await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.count_devices(&a).await.unwrap(), 0);
        assert_eq!(store.count_rules(&a).await.unwrap(), 0);
    }
}
