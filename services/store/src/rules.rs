//! Rules (SPEC §5): which messages of a tenant go to which webhook. Every change bumps the
//! tenant's `rules_version` and notifies brokers in the same transaction, so a broker's
//! cached rule index is never silently stale.

use crate::notify::{self, Change};
use crate::registries::missing_tenant_is_not_found;
use crate::tenants::{Page, PageRequest};
use crate::versions::{self, Versioned, BUMP};
use crate::{RegistryId, Result, RuleId, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use std::collections::BTreeMap;

/// What it takes to create a rule; the caller has validated every field (the topic
/// filter parses, the URL is http(s), the numbers are in range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRule {
    pub name: String,
    pub topic_filter: String,
    pub registry_id: Option<RegistryId>,
    pub condition: Option<String>,
    pub webhook: NewWebhook,
    pub enabled: bool,
}

/// The webhook of a new rule, secret included.
#[derive(Clone, PartialEq, Eq)]
pub struct NewWebhook {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub secret: Option<String>,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
    pub batch: Batch,
}

/// How a rule's messages are grouped into webhook requests (SPEC §5). With
/// `max_messages` 1 every request carries one envelope; above 1 a request carries a JSON
/// array of up to `max_messages` envelopes, sent once it is full or `max_wait_ms` after
/// its first message was claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub max_messages: i32,
    pub max_wait_ms: i32,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_messages: 1,
            max_wait_ms: 0,
        }
    }
}

impl std::fmt::Debug for NewWebhook {
    // The secret must not reach a log through a stray `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewWebhook")
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("has_secret", &self.secret.is_some())
            .field("timeout_ms", &self.timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("batch", &self.batch)
            .finish()
    }
}

/// A rule as the control plane shows it: the webhook secret is never read back, only
/// whether there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: RuleId,
    pub tenant_id: TenantId,
    pub name: String,
    pub topic_filter: String,
    pub registry_id: Option<RegistryId>,
    pub condition: Option<String>,
    pub webhook: Webhook,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    /// The version of the resource: when it last changed (see `If-Match` in the API).
    pub updated_at: DateTime<Utc>,
}

/// A rule's webhook without its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub has_secret: bool,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
    pub batch: Batch,
}

/// A change to a rule; `None` leaves a field as it is. The caller has validated it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleChanges {
    pub enabled: Option<bool>,
    /// `Some(None)` removes the condition.
    pub condition: Option<Option<String>>,
    /// A new `batch.max_messages`.
    pub batch_max_messages: Option<i32>,
    /// A new `batch.max_wait_ms`.
    pub batch_max_wait_ms: Option<i32>,
}

#[derive(sqlx::FromRow)]
struct RuleRow {
    id: RuleId,
    tenant_id: TenantId,
    name: String,
    topic_filter: String,
    registry_id: Option<RegistryId>,
    condition: Option<String>,
    webhook_url: String,
    webhook_headers: Json<BTreeMap<String, String>>,
    has_secret: bool,
    timeout_ms: i32,
    max_in_flight: i32,
    batch_max_messages: i32,
    batch_max_wait_ms: i32,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<RuleRow> for Rule {
    fn from(row: RuleRow) -> Rule {
        Rule {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            topic_filter: row.topic_filter,
            registry_id: row.registry_id,
            condition: row.condition,
            webhook: Webhook {
                url: row.webhook_url,
                headers: row.webhook_headers.0,
                has_secret: row.has_secret,
                timeout_ms: row.timeout_ms,
                max_in_flight: row.max_in_flight,
                batch: Batch {
                    max_messages: row.batch_max_messages,
                    max_wait_ms: row.batch_max_wait_ms,
                },
            },
            enabled: row.enabled,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const COLUMNS: &str =
    "id, tenant_id, name, topic_filter, registry_id, condition, webhook_url, webhook_headers,
                       webhook_secret IS NOT NULL AS has_secret, timeout_ms, max_in_flight,
                       batch_max_messages, batch_max_wait_ms, enabled, created_at, updated_at";

/// Marks the tenant's rules as changed, inside the transaction that changes them.
async fn rules_changed(tx: &mut Transaction<'_, Postgres>, tenant: &TenantId) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE tenants SET rules_version = rules_version + 1, updated_at = {BUMP} WHERE id = $1"
    ))
    .bind(tenant)
    .execute(&mut **tx)
    .await?;
    notify::publish(
        &mut **tx,
        &Change::Rules {
            tenant_id: tenant.clone(),
        },
    )
    .await
}

impl Store {
    /// Creates a rule in `tenant`. A name already used in the tenant is
    /// `Conflict { field: "name" }`; a `registry_id` that is not a registry of the tenant
    /// is `Reference { field: "registry_id" }`; an unknown tenant is `NotFound`.
    pub async fn create_rule(&self, tenant: &TenantId, new: &NewRule) -> Result<Rule> {
        let id = RuleId::generate();
        let mut tx = self.pool.begin().await?;
        let row: RuleRow = sqlx::query_as(&format!(
            "INSERT INTO rules (id, tenant_id, name, topic_filter, registry_id, condition, webhook_url,
                                webhook_headers, webhook_secret, timeout_ms, max_in_flight, enabled,
                                batch_max_messages, batch_max_wait_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING {COLUMNS}"
        ))
        .bind(&id)
        .bind(tenant)
        .bind(&new.name)
        .bind(&new.topic_filter)
        .bind(&new.registry_id)
        .bind(&new.condition)
        .bind(&new.webhook.url)
        .bind(Json(&new.webhook.headers))
        .bind(&new.webhook.secret)
        .bind(new.webhook.timeout_ms)
        .bind(new.webhook.max_in_flight)
        .bind(new.enabled)
        .bind(new.webhook.batch.max_messages)
        .bind(new.webhook.batch.max_wait_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::on_constraint(
                e,
                &[
                    ("rules_tenant_id_name_key", "name"),
                    ("rules_tenant_id_registry_id_fkey", "registry_id"),
                    ("rules_tenant_id_fkey", "tenant_id"),
                ],
            )
        })
        .map_err(missing_tenant_is_not_found)?;
        rules_changed(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(row.into())
    }

    /// The rule `id` of `tenant`, or `NotFound`.
    pub async fn get_rule(&self, tenant: &TenantId, id: &RuleId) -> Result<Rule> {
        let row: Option<RuleRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM rules WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Rule::from).ok_or(StoreError::NotFound)
    }

    /// A page of the rules of `tenant`, ordered by id.
    pub async fn list_rules(&self, tenant: &TenantId, page: &PageRequest) -> Result<Page<Rule>> {
        let rows: Vec<RuleRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM rules WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(tenant)
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        let rows = rows.into_iter().map(Rule::from).collect();
        Ok(page.page(rows, |r: &Rule| r.id.as_str()))
    }

    /// Deletes the rule `id` of `tenant`, with its pending deliveries and dead letters.
    pub async fn delete_rule(
        &self,
        tenant: &TenantId,
        id: &RuleId,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Rules, tenant, id.as_str(), if_match).await?;
        let deleted = sqlx::query("DELETE FROM rules WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        rules_changed(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies `changes` to the rule `id` of `tenant` and returns it; `NotFound` when
    /// there is no such rule. A change that changes nothing keeps the version.
    pub async fn update_rule(
        &self,
        tenant: &TenantId,
        id: &RuleId,
        changes: &RuleChanges,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<Rule> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Rules, tenant, id.as_str(), if_match).await?;
        let row: Option<RuleRow> = sqlx::query_as(&format!(
            "UPDATE rules
                SET enabled = COALESCE($3, enabled),
                    condition = CASE WHEN $4 THEN $5 ELSE condition END,
                    batch_max_messages = COALESCE($6, batch_max_messages),
                    batch_max_wait_ms = COALESCE($7, batch_max_wait_ms),
                    updated_at = {BUMP}
              WHERE tenant_id = $1 AND id = $2
                AND (COALESCE($3, enabled), CASE WHEN $4 THEN $5 ELSE condition END,
                     COALESCE($6, batch_max_messages), COALESCE($7, batch_max_wait_ms))
                    IS DISTINCT FROM (enabled, condition, batch_max_messages, batch_max_wait_ms)
             RETURNING {COLUMNS}"
        ))
        .bind(tenant)
        .bind(id)
        .bind(changes.enabled)
        .bind(changes.condition.is_some())
        .bind(changes.condition.clone().flatten())
        .bind(changes.batch_max_messages)
        .bind(changes.batch_max_wait_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Nothing to change, or no such rule.
            let row: Option<RuleRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM rules WHERE tenant_id = $1 AND id = $2"
            ))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            return row.map(Rule::from).ok_or(StoreError::NotFound);
        };
        rules_changed(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(row.into())
    }

    /// Enables or disables the rule `id` of `tenant` and returns it; the version moves
    /// only when the rule was not already so.
    pub async fn set_rule_enabled(
        &self,
        tenant: &TenantId,
        id: &RuleId,
        enabled: bool,
    ) -> Result<Rule> {
        let mut tx = self.pool.begin().await?;
        let row: Option<RuleRow> = sqlx::query_as(&format!(
            "UPDATE rules SET enabled = $3, updated_at = {BUMP}
              WHERE tenant_id = $1 AND id = $2 AND enabled <> $3 RETURNING {COLUMNS}"
        ))
        .bind(tenant)
        .bind(id)
        .bind(enabled)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Already so, or no such rule.
            return self.get_rule(tenant, id).await;
        };
        rules_changed(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(row.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::tests::tenant_with_registry;

    fn rule(name: &str, registry_id: Option<RegistryId>) -> NewRule {
        NewRule {
            name: name.into(),
            topic_filter: "$devices/+/events/#".into(),
            registry_id,
            condition: None,
            webhook: NewWebhook {
                url: "https://example.com/hook".into(),
                headers: BTreeMap::from([("X-Api-Key".to_owned(), "k".to_owned())]),
                secret: Some("s3cret".into()),
                timeout_ms: 5000,
                max_in_flight: 64,
                batch: Batch::default(),
            },
            enabled: true,
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn rule_changes_bump_the_version_the_broker_reads(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg) = tenant_with_registry(&store, "a").await;
        let (v0, routes) = store.enabled_rule_routes(&a).await.unwrap();
        assert!(routes.is_empty());
        let created = store
            .create_rule(&a, &rule("r1", Some(reg.clone())))
            .await
            .unwrap();
        assert!(created.webhook.has_secret);
        assert_eq!(created.registry_id, Some(reg.clone()));
        let (v1, routes) = store.enabled_rule_routes(&a).await.unwrap();
        assert!(v1 > v0);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].id, created.id);
        assert_eq!(routes[0].topic_filter, "$devices/+/events/#");
        assert_eq!(routes[0].registry_id, Some(reg));

        let disabled = store
            .set_rule_enabled(&a, &created.id, false)
            .await
            .unwrap();
        assert!(!disabled.enabled);
        let (v2, routes) = store.enabled_rule_routes(&a).await.unwrap();
        assert!(v2 > v1);
        assert!(routes.is_empty());

        store.delete_rule(&a, &created.id, None).await.unwrap();
        let (v3, _) = store.enabled_rule_routes(&a).await.unwrap();
        assert!(v3 > v2);
        assert!(matches!(
            store.get_rule(&a, &created.id).await,
            Err(StoreError::NotFound)
        ));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn conditions_are_set_and_cleared_and_reach_the_routes(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, _) = tenant_with_registry(&store, "a").await;
        let (b, _) = tenant_with_registry(&store, "b").await;
        let created = store.create_rule(&a, &rule("r1", None)).await.unwrap();
        let set = RuleChanges {
            enabled: None,
            condition: Some(Some("qos == 1".into())),
            ..RuleChanges::default()
        };
        let updated = store
            .update_rule(&a, &created.id, &set, None)
            .await
            .unwrap();
        assert_eq!(updated.condition.as_deref(), Some("qos == 1"));
        assert!(updated.enabled);
        let (_, routes) = store.enabled_rule_routes(&a).await.unwrap();
        assert_eq!(routes[0].condition.as_deref(), Some("qos == 1"));
        // Leaving the condition out keeps it; null clears it.
        let keep = RuleChanges {
            enabled: Some(false),
            condition: None,
            ..RuleChanges::default()
        };
        let updated = store
            .update_rule(&a, &created.id, &keep, None)
            .await
            .unwrap();
        assert_eq!(updated.condition.as_deref(), Some("qos == 1"));
        assert!(!updated.enabled);
        let clear = RuleChanges {
            enabled: None,
            condition: Some(None),
            ..RuleChanges::default()
        };
        let updated = store
            .update_rule(&a, &created.id, &clear, None)
            .await
            .unwrap();
        assert_eq!(updated.condition, None);
        assert!(matches!(
            store.update_rule(&b, &created.id, &set, None).await,
            Err(StoreError::NotFound)
        ));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn batch_settings_are_stored_and_changed_field_by_field(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, _) = tenant_with_registry(&store, "a").await;
        let created = store.create_rule(&a, &rule("r1", None)).await.unwrap();
        assert_eq!(created.webhook.batch, Batch::default());
        let mut new = rule("r2", None);
        new.webhook.batch = Batch {
            max_messages: 50,
            max_wait_ms: 200,
        };
        let batched = store.create_rule(&a, &new).await.unwrap();
        assert_eq!(batched.webhook.batch, new.webhook.batch);
        let wait_only = RuleChanges {
            batch_max_wait_ms: Some(1000),
            ..RuleChanges::default()
        };
        let updated = store
            .update_rule(&a, &batched.id, &wait_only, None)
            .await
            .unwrap();
        assert_eq!(
            updated.webhook.batch,
            Batch {
                max_messages: 50,
                max_wait_ms: 1000
            }
        );
        assert_eq!(store.get_rule(&a, &batched.id).await.unwrap(), updated);
        // The database keeps the bounds the API enforces.
        let too_big = RuleChanges {
            batch_max_messages: Some(101),
            ..RuleChanges::default()
        };
        assert!(store
            .update_rule(&a, &batched.id, &too_big, None)
            .await
            .is_err());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn changing_rules_moves_the_tenants_version_forward_only(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool.clone());
        let (a, _) = tenant_with_registry(&store, "a").await;
        // A version ahead of this transaction's now(): a change committed by a transaction
        // that started later, or a clock that stepped back.
        let ahead: DateTime<Utc> =
            sqlx::query_scalar("UPDATE tenants SET updated_at = now() + interval '1 hour' WHERE id = $1 RETURNING updated_at")
                .bind(&a)
                .fetch_one(&pool)
                .await
                .unwrap();
        let created = store.create_rule(&a, &rule("r1", None)).await.unwrap();
        let after_create = store.get_tenant(&a).await.unwrap().updated_at;
        assert!(after_create > ahead, "{after_create} after {ahead}");
        store
            .set_rule_enabled(&a, &created.id, false)
            .await
            .unwrap();
        let after_disable = store.get_tenant(&a).await.unwrap().updated_at;
        assert!(after_disable > after_create);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn rule_of_other_tenant_is_not_found(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg_a) = tenant_with_registry(&store, "a").await;
        let (b, _) = tenant_with_registry(&store, "b").await;
        let created = store.create_rule(&a, &rule("r1", None)).await.unwrap();
        assert!(matches!(
            store.get_rule(&b, &created.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.delete_rule(&b, &created.id, None).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.set_rule_enabled(&b, &created.id, false).await,
            Err(StoreError::NotFound)
        ));
        assert!(store
            .list_rules(&b, &PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty());
        assert_eq!(
            store
                .list_rules(&a, &PageRequest::default())
                .await
                .unwrap()
                .items,
            vec![created]
        );
        // A rule cannot be scoped to another tenant's registry.
        assert!(matches!(
            store.create_rule(&b, &rule("r2", Some(reg_a))).await,
            Err(StoreError::Reference {
                field: "registry_id"
            })
        ));
        assert!(matches!(
            store.create_rule(&a, &rule("r1", None)).await,
            Err(StoreError::Conflict { field: "name" })
        ));
        // Another tenant's version is untouched by these changes.
        let (vb, _) = store.enabled_rule_routes(&b).await.unwrap();
        assert_eq!(vb, 0);
    }
}
