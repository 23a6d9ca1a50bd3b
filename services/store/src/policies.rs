//! Policies (SPEC §4.2): named lists of allow and deny statements over topic filters with
//! variables, attached to the tenant, registries, devices or virtual brokers.
//!
//! Every change (a policy created, replaced or deleted, an attachment made or removed)
//! notifies [`Change::Policies`], so that brokers apply it to live sessions.

use crate::filters::ListFilter;
use crate::notify::{self, Change};
use crate::registries::missing_tenant_is_not_found;
use crate::tenants::{Page, PageRequest};
use crate::versions::{self, Versioned, BUMP};
use crate::{BrokerId, DeviceId, PolicyId, RegistryId, Result, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

pub use template::{TopicTemplate, Variable};

/// Whether a statement grants or takes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// What a statement is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Subscribe,
}

/// One statement: `effect` for `actions` on the topic filters `topics` (with variables).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub effect: Effect,
    pub actions: Vec<Action>,
    pub topics: Vec<String>,
}

/// What it takes to create or replace a policy; the caller has validated every field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPolicy {
    pub name: String,
    pub statements: Vec<Statement>,
}

/// A policy of a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub id: PolicyId,
    pub tenant_id: TenantId,
    pub name: String,
    pub statements: Vec<Statement>,
    pub created_at: DateTime<Utc>,
    /// The version of the resource: when it last changed (see `If-Match` in the API).
    pub updated_at: DateTime<Utc>,
}

/// What a policy can be attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyTarget<'a> {
    /// The tenant itself: the policy applies to every device and registry client.
    Tenant,
    Registry(&'a RegistryId),
    Device(&'a DeviceId),
    Broker(&'a BrokerId),
}

impl PolicyTarget<'_> {
    fn kind(self) -> &'static str {
        match self {
            PolicyTarget::Tenant => "tenant",
            PolicyTarget::Registry(_) => "registry",
            PolicyTarget::Device(_) => "device",
            PolicyTarget::Broker(_) => "broker",
        }
    }

    fn id<'t>(self, tenant: &'t TenantId) -> &'t str
    where
        Self: 't,
    {
        match self {
            PolicyTarget::Tenant => tenant.as_str(),
            PolicyTarget::Registry(id) => id.as_str(),
            PolicyTarget::Device(id) => id.as_str(),
            PolicyTarget::Broker(id) => id.as_str(),
        }
    }

    /// A query that finds the target in a tenant (`$1`: tenant, `$2`: target id).
    fn exists_query(self) -> &'static str {
        match self {
            PolicyTarget::Tenant => "SELECT 1 FROM tenants WHERE id = $1 AND id = $2",
            PolicyTarget::Registry(_) => {
                "SELECT 1 FROM registries WHERE tenant_id = $1 AND id = $2"
            }
            PolicyTarget::Device(_) => "SELECT 1 FROM devices WHERE tenant_id = $1 AND id = $2",
            PolicyTarget::Broker(_) => "SELECT 1 FROM brokers WHERE tenant_id = $1 AND id = $2",
        }
    }
}

/// One attachment of a tenant with the statements of its policy, as brokers load them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// `tenant`, `registry`, `device` or `broker`.
    pub target_kind: String,
    pub target_id: String,
    pub policy_id: PolicyId,
    pub statements: Vec<Statement>,
}

#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: PolicyId,
    tenant_id: TenantId,
    name: String,
    statements: Json<Vec<Statement>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<PolicyRow> for Policy {
    fn from(row: PolicyRow) -> Policy {
        Policy {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            statements: row.statements.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const COLUMNS: &str = "id, tenant_id, name, statements, created_at, updated_at";

/// Most policies attached to one target: every one of them is checked on each PUBLISH and
/// SUBSCRIBE of its clients.
pub const MAX_POLICIES_PER_TARGET: i64 = 10;
const NAME_KEY: (&str, &str) = ("policies_tenant_id_name_key", "name");

async fn changed(tx: &mut sqlx::PgConnection, tenant: &TenantId) -> Result<()> {
    notify::publish(
        tx,
        &Change::Policies {
            tenant_id: tenant.clone(),
        },
    )
    .await
}

impl Store {
    /// Creates a policy in `tenant`. A name already used in the tenant is
    /// `Conflict { field: "name" }`; an unknown tenant is `NotFound`.
    pub async fn create_policy(&self, tenant: &TenantId, new: &NewPolicy) -> Result<Policy> {
        let row: PolicyRow = sqlx::query_as(&format!(
            "INSERT INTO policies (id, tenant_id, name, statements)
             VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
        ))
        .bind(PolicyId::generate())
        .bind(tenant)
        .bind(&new.name)
        .bind(Json(&new.statements))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            StoreError::on_constraint(e, &[NAME_KEY, ("policies_tenant_id_fkey", "tenant_id")])
        })
        .map_err(missing_tenant_is_not_found)?;
        Ok(row.into())
    }

    /// The policy `id` of `tenant`, or `NotFound`.
    pub async fn get_policy(&self, tenant: &TenantId, id: &PolicyId) -> Result<Policy> {
        let row: Option<PolicyRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM policies WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Policy::from).ok_or(StoreError::NotFound)
    }

    /// A page of the policies of `tenant` whose name starts with the filter's prefix,
    /// ordered by id.
    pub async fn list_policies(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
        page: &PageRequest,
    ) -> Result<Page<Policy>> {
        let rows: Vec<PolicyRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM policies WHERE tenant_id = $1 AND id > $2{} ORDER BY id LIMIT $3",
            crate::filters::condition(4, None, None)
        ))
        .bind(tenant)
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .bind(filter.name_prefix.as_deref())
        .fetch_all(&self.pool)
        .await?;
        let rows = rows.into_iter().map(Policy::from).collect();
        Ok(page.page(rows, |p: &Policy| p.id.as_str()))
    }

    /// Replaces the name and statements of the policy `id` of `tenant`.
    pub async fn replace_policy(
        &self,
        tenant: &TenantId,
        id: &PolicyId,
        new: &NewPolicy,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<Policy> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Policies, tenant, id.as_str(), if_match).await?;
        let row: Option<PolicyRow> = sqlx::query_as(&format!(
            "UPDATE policies SET name = $3, statements = $4, updated_at = {BUMP}
              WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
        ))
        .bind(tenant)
        .bind(id)
        .bind(&new.name)
        .bind(Json(&new.statements))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| StoreError::on_constraint(e, &[NAME_KEY]))?;
        let row = row.ok_or(StoreError::NotFound)?;
        changed(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(row.into())
    }

    /// Deletes the policy `id` of `tenant` and every attachment of it.
    pub async fn delete_policy(
        &self,
        tenant: &TenantId,
        id: &PolicyId,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Policies, tenant, id.as_str(), if_match).await?;
        let deleted = sqlx::query("DELETE FROM policies WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        changed(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Attaches the policy `id` to `target`; both must be in `tenant` (`NotFound`
    /// otherwise). Attaching twice is the same as once; answers whether it was new. A
    /// target holding [`MAX_POLICIES_PER_TARGET`] already is `Conflict { field: "policies" }`.
    pub async fn attach_policy(
        &self,
        tenant: &TenantId,
        id: &PolicyId,
        target: PolicyTarget<'_>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        self.check_target(&mut tx, tenant, target).await?;
        // Locks the policy, so that a concurrent deletion cannot leave an attachment.
        let policy: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM policies WHERE tenant_id = $1 AND id = $2 FOR SHARE")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if policy.is_none() {
            return Err(StoreError::NotFound);
        }
        // Serialises attachments to one target, so that two cannot both pass the bound.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!(
                "{}:{}:{}",
                tenant,
                target.kind(),
                target.id(tenant)
            ))
            .execute(&mut *tx)
            .await?;
        let (attached, already): (i64, bool) = sqlx::query_as(
            "SELECT count(*), coalesce(bool_or(policy_id = $4), false) FROM policy_attachments
              WHERE tenant_id = $1 AND target_kind = $2 AND target_id = $3",
        )
        .bind(tenant)
        .bind(target.kind())
        .bind(target.id(tenant))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if !already && attached >= MAX_POLICIES_PER_TARGET {
            return Err(StoreError::Conflict { field: "policies" });
        }
        let inserted = sqlx::query(
            "INSERT INTO policy_attachments (tenant_id, policy_id, target_kind, target_id)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(id)
        .bind(target.kind())
        .bind(target.id(tenant))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            changed(&mut tx, tenant).await?;
        }
        tx.commit().await?;
        Ok(inserted > 0)
    }

    /// Detaches the policy `id` from `target`; `NotFound` when it was not attached there.
    pub async fn detach_policy(
        &self,
        tenant: &TenantId,
        id: &PolicyId,
        target: PolicyTarget<'_>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM policy_attachments
              WHERE tenant_id = $1 AND policy_id = $2 AND target_kind = $3 AND target_id = $4",
        )
        .bind(tenant)
        .bind(id)
        .bind(target.kind())
        .bind(target.id(tenant))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        changed(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of the policies attached to `target`, ordered by id; `NotFound` when there
    /// is no such target in `tenant`.
    pub async fn attached_policies(
        &self,
        tenant: &TenantId,
        target: PolicyTarget<'_>,
        page: &PageRequest,
    ) -> Result<Page<Policy>> {
        let mut conn = self.pool.acquire().await?;
        self.check_target(&mut conn, tenant, target).await?;
        let rows: Vec<PolicyRow> = sqlx::query_as(
            "SELECT p.id, p.tenant_id, p.name, p.statements, p.created_at, p.updated_at
               FROM policy_attachments a
               JOIN policies p ON p.tenant_id = a.tenant_id AND p.id = a.policy_id
              WHERE a.tenant_id = $1 AND a.target_kind = $2 AND a.target_id = $3 AND p.id > $4
              ORDER BY p.id LIMIT $5",
        )
        .bind(tenant)
        .bind(target.kind())
        .bind(target.id(tenant))
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .fetch_all(&mut *conn)
        .await?;
        let rows = rows.into_iter().map(Policy::from).collect();
        Ok(page.page(rows, |p: &Policy| p.id.as_str()))
    }

    /// Every attachment of `tenant` with its policy's statements: what a broker needs to
    /// decide the rights of any of the tenant's clients without a query per CONNECT.
    pub async fn tenant_attachments(&self, tenant: &TenantId) -> Result<Vec<Attachment>> {
        let rows: Vec<(String, String, PolicyId, Json<Vec<Statement>>)> = sqlx::query_as(
            "SELECT a.target_kind, a.target_id, p.id, p.statements
               FROM policy_attachments a
               JOIN policies p ON p.tenant_id = a.tenant_id AND p.id = a.policy_id
              WHERE a.tenant_id = $1
              ORDER BY a.target_kind, a.target_id, p.id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(target_kind, target_id, policy_id, statements)| Attachment {
                    target_kind,
                    target_id,
                    policy_id,
                    statements: statements.0,
                },
            )
            .collect())
    }

    async fn check_target(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: &TenantId,
        target: PolicyTarget<'_>,
    ) -> Result<()> {
        let found: Option<i32> = sqlx::query_scalar(target.exists_query())
            .bind(tenant)
            .bind(target.id(tenant))
            .fetch_optional(conn)
            .await?;
        found.map(|_| ()).ok_or(StoreError::NotFound)
    }
}

/// Topic filters with variables (SPEC §4.2), parsed once and expanded per client.
mod template {
    /// A value a policy topic can refer to as `${name}`.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Variable {
        TenantId,
        RegistryId,
        DeviceId,
        ClientId,
        CertSubjectCn,
        /// `${device.labels.KEY}`.
        DeviceLabel(String),
    }

    impl Variable {
        fn parse(name: &str) -> Option<Variable> {
            Some(match name {
                "tenant.id" => Variable::TenantId,
                "registry.id" => Variable::RegistryId,
                "device.id" => Variable::DeviceId,
                "client.id" => Variable::ClientId,
                "cert.subject.cn" => Variable::CertSubjectCn,
                _ => {
                    let key = name.strip_prefix("device.labels.")?;
                    let valid = !key.is_empty()
                        && key.len() <= 63
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                    if !valid {
                        return None;
                    }
                    Variable::DeviceLabel(key.to_owned())
                }
            })
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Part {
        Text(String),
        Variable(Variable),
    }

    /// A topic filter of a policy statement, with its variables located.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TopicTemplate {
        parts: Vec<Part>,
    }

    /// The text a variable stands for while checking a template's filter syntax.
    pub const PLACEHOLDER: &str = "v";

    impl TopicTemplate {
        /// Parses `s`; an error says what is wrong (an unknown variable, an unclosed
        /// `${`). The filter syntax itself is the caller's to check, on
        /// [`TopicTemplate::with_placeholders`].
        pub fn parse(s: &str) -> Result<TopicTemplate, String> {
            let mut parts = Vec::new();
            let mut rest = s;
            while let Some(start) = rest.find("${") {
                if start > 0 {
                    parts.push(Part::Text(rest[..start].to_owned()));
                }
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| "a variable `${` is not closed with `}`".to_owned())?;
                let name = &after[..end];
                let variable = Variable::parse(name).ok_or_else(|| {
                    format!(
                        "unknown variable `${{{name}}}`: use ${{tenant.id}}, ${{registry.id}}, \
                         ${{device.id}}, ${{client.id}}, ${{cert.subject.cn}} or ${{device.labels.KEY}}"
                    )
                })?;
                parts.push(Part::Variable(variable));
                rest = &after[end + 1..];
            }
            if !rest.is_empty() {
                parts.push(Part::Text(rest.to_owned()));
            }
            Ok(TopicTemplate { parts })
        }

        /// The filter with every variable replaced by [`PLACEHOLDER`], to check its syntax.
        pub fn with_placeholders(&self) -> String {
            self.parts
                .iter()
                .map(|part| match part {
                    Part::Text(text) => text.as_str(),
                    Part::Variable(_) => PLACEHOLDER,
                })
                .collect()
        }

        /// The filter for one client, or `None` when a variable has no value, an empty
        /// one, or one that would change the filter's shape: a `/`, `+`, `#` or NUL, or a
        /// leading `$` at the start of the filter (which would reach `$`-topics). Then the
        /// statement does not match (SPEC §4.2: no injection through names or labels).
        pub fn expand<'v>(&self, value: impl Fn(&Variable) -> Option<&'v str>) -> Option<String> {
            let mut out = String::new();
            for (i, part) in self.parts.iter().enumerate() {
                match part {
                    Part::Text(text) => out.push_str(text),
                    Part::Variable(variable) => {
                        let v = value(variable)?;
                        let unsafe_value = v.is_empty()
                            || v.contains(['/', '+', '#', '\0'])
                            || (i == 0 && v.starts_with('$'));
                        if unsafe_value {
                            return None;
                        }
                        out.push_str(v);
                    }
                }
            }
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::NewBroker;
    use crate::devices::NewDevice;
    use crate::registries::NewRegistry;
    use std::collections::BTreeMap;

    fn statements() -> Vec<Statement> {
        vec![Statement {
            effect: Effect::Allow,
            actions: vec![Action::Publish],
            topics: vec!["fleet/${device.id}/#".into()],
        }]
    }

    #[test]
    fn templates_expand_only_safe_values() {
        let t = TopicTemplate::parse("fleet/${registry.id}/${device.labels.site}/#").unwrap();
        assert_eq!(t.with_placeholders(), "fleet/v/v/#");
        let expand = |site: &'static str| {
            t.expand(|v| match v {
                Variable::RegistryId => Some("reg_1"),
                Variable::DeviceLabel(k) if k == "site" => Some(site),
                _ => None,
            })
        };
        assert_eq!(expand("north").as_deref(), Some("fleet/reg_1/north/#"));
        for bad in ["", "a/b", "+", "#", "x\0"] {
            assert_eq!(expand(bad), None, "{bad:?}");
        }
        let first = TopicTemplate::parse("${device.labels.k}/x").unwrap();
        assert_eq!(first.expand(|_| Some("$devices")), None);
        assert_eq!(first.expand(|_| Some("a$")).as_deref(), Some("a$/x"));
        assert!(TopicTemplate::parse("a/${device.name}").is_err());
        assert!(TopicTemplate::parse("a/${device.id").is_err());
        assert!(TopicTemplate::parse("a/${device.labels.}").is_err());
        assert!(TopicTemplate::parse("a/${device.labels.bad key}").is_err());
        let plain = TopicTemplate::parse("a/$b/{c}").unwrap();
        assert_eq!(plain.expand(|_| None).as_deref(), Some("a/$b/{c}"));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_target_holds_a_bounded_number_of_policies(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let a = store.create_tenant("a").await.unwrap().id;
        let mut ids = Vec::new();
        for i in 0..=MAX_POLICIES_PER_TARGET {
            let new = NewPolicy {
                name: format!("p{i}"),
                statements: statements(),
            };
            ids.push(store.create_policy(&a, &new).await.unwrap().id);
        }
        let (last, first) = (ids.pop().unwrap(), ids[0].clone());
        for id in &ids {
            assert!(store
                .attach_policy(&a, id, PolicyTarget::Tenant)
                .await
                .unwrap());
        }
        assert!(matches!(
            store.attach_policy(&a, &last, PolicyTarget::Tenant).await,
            Err(StoreError::Conflict { field: "policies" })
        ));
        // Attaching one that is attached already is still fine at the bound.
        assert!(!store
            .attach_policy(&a, &first, PolicyTarget::Tenant)
            .await
            .unwrap());
        store
            .detach_policy(&a, &first, PolicyTarget::Tenant)
            .await
            .unwrap();
        assert!(store
            .attach_policy(&a, &last, PolicyTarget::Tenant)
            .await
            .unwrap());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn policies_are_per_tenant_and_attachments_go_with_their_target(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let a = store.create_tenant("a").await.unwrap().id;
        let b = store.create_tenant("b").await.unwrap().id;
        let new = NewPolicy {
            name: "fleet".into(),
            statements: statements(),
        };
        let policy = store.create_policy(&a, &new).await.unwrap();
        assert_eq!(store.get_policy(&a, &policy.id).await.unwrap(), policy);
        assert!(matches!(
            store.get_policy(&b, &policy.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.create_policy(&a, &new).await,
            Err(StoreError::Conflict { field: "name" })
        ));
        let registry = store
            .create_registry(
                &a,
                &NewRegistry {
                    name: "r".into(),
                    description: String::new(),
                    labels: BTreeMap::new(),
                    default_policy: true,
                },
            )
            .await
            .unwrap();
        let target = PolicyTarget::Registry(&registry.id);
        assert!(matches!(
            store.attach_policy(&b, &policy.id, target).await,
            Err(StoreError::NotFound)
        ));
        assert!(store.attach_policy(&a, &policy.id, target).await.unwrap());
        assert!(!store.attach_policy(&a, &policy.id, target).await.unwrap());
        assert!(store
            .attach_policy(&a, &policy.id, PolicyTarget::Tenant)
            .await
            .unwrap());
        let attached = store
            .attached_policies(&a, target, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(attached.items, vec![policy.clone()]);
        assert_eq!(store.tenant_attachments(&a).await.unwrap().len(), 2);
        assert!(store.tenant_attachments(&b).await.unwrap().is_empty());

        let replaced = store
            .replace_policy(
                &a,
                &policy.id,
                &NewPolicy {
                    name: "fleet-2".into(),
                    statements: vec![],
                },
                Some(&[policy.updated_at]),
            )
            .await
            .unwrap();
        assert!(replaced.updated_at > policy.updated_at);
        assert!(matches!(
            store
                .delete_policy(&a, &policy.id, Some(&[policy.updated_at]))
                .await,
            Err(StoreError::PreconditionFailed)
        ));

        // Devices of a registry deleted with it, and virtual brokers, take their
        // attachments along too.
        let device = store
            .create_device(
                &a,
                &registry.id,
                &NewDevice {
                    name: "d".into(),
                    description: String::new(),
                    labels: BTreeMap::new(),
                },
            )
            .await
            .unwrap();
        let broker = store
            .create_broker(
                &a,
                &NewBroker {
                    name: "b".into(),
                    description: String::new(),
                    labels: BTreeMap::new(),
                },
            )
            .await
            .unwrap();
        for target in [
            PolicyTarget::Device(&device.id),
            PolicyTarget::Broker(&broker.id),
        ] {
            assert!(store.attach_policy(&a, &policy.id, target).await.unwrap());
        }
        assert_eq!(store.tenant_attachments(&a).await.unwrap().len(), 4);
        store.delete_broker(&a, &broker.id, None).await.unwrap();
        assert_eq!(store.tenant_attachments(&a).await.unwrap().len(), 3);
        store
            .delete_registry(&a, &registry.id, true, None)
            .await
            .unwrap();
        let left = store.tenant_attachments(&a).await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].target_kind, "tenant");
        let stale: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_attachments")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(stale, 1);
        store
            .detach_policy(&a, &policy.id, PolicyTarget::Tenant)
            .await
            .unwrap();
        assert!(matches!(
            store
                .detach_policy(&a, &policy.id, PolicyTarget::Tenant)
                .await,
            Err(StoreError::NotFound)
        ));
        store.delete_policy(&a, &policy.id, None).await.unwrap();
        assert!(matches!(
            store.get_policy(&a, &policy.id).await,
            Err(StoreError::NotFound)
        ));
    }
}
