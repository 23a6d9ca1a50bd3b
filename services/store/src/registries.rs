//! Registries (SPEC §2): named groups of devices inside a tenant.

use crate::filters::{self, ListFilter};
use crate::notify;
use crate::tenants::{Page, PageRequest};
use crate::versions::{self, Versioned, BUMP};
use crate::{RegistryId, Result, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use std::collections::BTreeMap;

/// What it takes to create a registry; the caller has validated every field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRegistry {
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    /// Whether the built-in device and registry-client rights of SPEC §4.2 apply.
    pub default_policy: bool,
}

/// A registry of a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    pub id: RegistryId,
    pub tenant_id: TenantId,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub default_policy: bool,
    pub created_at: DateTime<Utc>,
    /// The version of the resource: when it last changed (see `If-Match` in the API).
    pub updated_at: DateTime<Utc>,
}

/// A change to a registry; `None` fields stay as they are. The caller has validated
/// every field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub default_policy: Option<bool>,
}

/// What [`Store::delete_registry`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryDeletion {
    Deleted,
    /// Nothing was deleted: the registry still has devices and `force` was not given.
    HasDevices,
}

#[derive(sqlx::FromRow)]
struct RegistryRow {
    id: RegistryId,
    tenant_id: TenantId,
    name: String,
    description: String,
    labels: Json<BTreeMap<String, String>>,
    default_policy: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<RegistryRow> for Registry {
    fn from(row: RegistryRow) -> Registry {
        Registry {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            description: row.description,
            labels: row.labels.0,
            default_policy: row.default_policy,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const COLUMNS: &str =
    "id, tenant_id, name, description, labels, default_policy, created_at, updated_at";

impl Store {
    /// Creates a registry in `tenant`. A name already used in the tenant is
    /// `Conflict { field: "name" }`; an unknown tenant is `NotFound`.
    pub async fn create_registry(&self, tenant: &TenantId, new: &NewRegistry) -> Result<Registry> {
        let id = RegistryId::generate();
        let mut tx = self.pool.begin().await?;
        let row: RegistryRow = sqlx::query_as(&format!(
            "INSERT INTO registries (id, tenant_id, name, description, labels, default_policy)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
        ))
        .bind(&id)
        .bind(tenant)
        .bind(&new.name)
        .bind(&new.description)
        .bind(Json(&new.labels))
        .bind(new.default_policy)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::on_constraint(
                e,
                &[
                    ("registries_tenant_id_name_key", "name"),
                    ("registries_tenant_id_fkey", "tenant_id"),
                ],
            )
        })
        .map_err(missing_tenant_is_not_found)?;
        notify::commit_principals(tx, tenant).await?;
        Ok(row.into())
    }

    /// The registry `id` of `tenant`, or `NotFound`.
    pub async fn get_registry(&self, tenant: &TenantId, id: &RegistryId) -> Result<Registry> {
        let row: Option<RegistryRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM registries WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Registry::from).ok_or(StoreError::NotFound)
    }

    /// A page of the registries of `tenant` that `filter` keeps (by name prefix and
    /// label), ordered by id.
    pub async fn list_registries(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
        page: &PageRequest,
    ) -> Result<Page<Registry>> {
        let rows: Vec<RegistryRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM registries WHERE tenant_id = $1 AND id > $2{} ORDER BY id LIMIT $3",
            filters::condition(4, Some(5), None)
        ))
        .bind(tenant)
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .bind(filter.name_prefix.as_deref())
        .bind(filter.label_json())
        .fetch_all(&self.pool)
        .await?;
        let rows = rows.into_iter().map(Registry::from).collect();
        Ok(page.page(rows, |r: &Registry| r.id.as_str()))
    }

    /// Applies `update` to the registry `id` of `tenant`. A name already used in the
    /// tenant is `Conflict { field: "name" }`. Notifies [`Change::Principals`](notify::Change::Principals): the
    /// default policy decides what its devices may do. A change that changes nothing keeps
    /// the version.
    pub async fn update_registry(
        &self,
        tenant: &TenantId,
        id: &RegistryId,
        update: &RegistryUpdate,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<Registry> {
        let mut tx = self.pool.begin().await?;
        versions::check(
            &mut tx,
            Versioned::Registries,
            tenant,
            id.as_str(),
            if_match,
        )
        .await?;
        let row: Option<RegistryRow> = sqlx::query_as(&format!(
            "UPDATE registries SET name = COALESCE($3, name),
                    description = COALESCE($4, description), labels = COALESCE($5, labels),
                    default_policy = COALESCE($6, default_policy), updated_at = {BUMP}
              WHERE tenant_id = $1 AND id = $2
                AND (COALESCE($3, name), COALESCE($4, description), COALESCE($5, labels),
                     COALESCE($6, default_policy))
                    IS DISTINCT FROM (name, description, labels, default_policy)
             RETURNING {COLUMNS}"
        ))
        .bind(tenant)
        .bind(id)
        .bind(update.name.as_deref())
        .bind(update.description.as_deref())
        .bind(update.labels.as_ref().map(Json))
        .bind(update.default_policy)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| StoreError::on_constraint(e, &[("registries_tenant_id_name_key", "name")]))?;
        let Some(row) = row else {
            // Nothing to change, or no such registry.
            let row: Option<RegistryRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM registries WHERE tenant_id = $1 AND id = $2"
            ))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            return row.map(Registry::from).ok_or(StoreError::NotFound);
        };
        notify::commit_principals(tx, tenant).await?;
        Ok(row.into())
    }

    /// Deletes the registry `id` of `tenant` with its devices and credentials. Without
    /// `force`, a registry that still has devices is left alone.
    pub async fn delete_registry(
        &self,
        tenant: &TenantId,
        id: &RegistryId,
        force: bool,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<RegistryDeletion> {
        let mut tx = self.pool.begin().await?;
        versions::check(
            &mut tx,
            Versioned::Registries,
            tenant,
            id.as_str(),
            if_match,
        )
        .await?;
        // Locking the registry row keeps a device from being added between the check and
        // the delete.
        let found: Option<bool> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM devices d WHERE d.tenant_id = r.tenant_id AND d.registry_id = r.id)
               FROM registries r WHERE r.tenant_id = $1 AND r.id = $2 FOR UPDATE",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match found {
            None => return Err(StoreError::NotFound),
            Some(true) if !force => return Ok(RegistryDeletion::HasDevices),
            Some(_) => {}
        }
        sqlx::query("DELETE FROM registries WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        notify::commit_principals(tx, tenant).await?;
        Ok(RegistryDeletion::Deleted)
    }
}

/// Writing into a tenant that does not exist is the same as reading from one.
pub(crate) fn missing_tenant_is_not_found(err: StoreError) -> StoreError {
    match err {
        StoreError::Reference { field: "tenant_id" } => StoreError::NotFound,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(name: &str) -> NewRegistry {
        NewRegistry {
            name: name.into(),
            description: String::new(),
            labels: BTreeMap::from([("site".to_owned(), "north".to_owned())]),
            default_policy: true,
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn registry_of_other_tenant_is_not_found(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let a = store.create_tenant("a").await.unwrap().id;
        let b = store.create_tenant("b").await.unwrap().id;
        let reg = store
            .create_registry(&a, &registry("sensors"))
            .await
            .unwrap();
        assert_eq!(reg.labels.get("site").map(String::as_str), Some("north"));
        assert_eq!(store.get_registry(&a, &reg.id).await.unwrap(), reg);
        assert!(matches!(
            store.get_registry(&b, &reg.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(store
            .list_registries(&b, &ListFilter::default(), &PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty());
        assert!(matches!(
            store.delete_registry(&b, &reg.id, true, None).await,
            Err(StoreError::NotFound)
        ));
        // The same name is free in another tenant but not in the same one.
        store
            .create_registry(&b, &registry("sensors"))
            .await
            .unwrap();
        assert!(matches!(
            store.create_registry(&a, &registry("sensors")).await,
            Err(StoreError::Conflict { field: "name" })
        ));
        assert_eq!(
            store
                .delete_registry(&a, &reg.id, false, None)
                .await
                .unwrap(),
            RegistryDeletion::Deleted
        );
        assert!(matches!(
            store.get_registry(&a, &reg.id).await,
            Err(StoreError::NotFound)
        ));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn registry_in_unknown_tenant_is_not_found(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let err = store
            .create_registry(&TenantId::generate(), &registry("x"))
            .await;
        assert!(matches!(err, Err(StoreError::NotFound)), "{err:?}");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn registries_are_updated_and_filtered_within_their_tenant(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let a = store.create_tenant("a").await.unwrap().id;
        let b = store.create_tenant("b").await.unwrap().id;
        let north = store
            .create_registry(&a, &registry("north-1"))
            .await
            .unwrap();
        let mut south = registry("south-1");
        south.labels = BTreeMap::from([("site".to_owned(), "south".to_owned())]);
        let south = store.create_registry(&a, &south).await.unwrap();

        let update = RegistryUpdate {
            description: Some("updated".into()),
            default_policy: Some(false),
            ..RegistryUpdate::default()
        };
        assert!(matches!(
            store.update_registry(&b, &north.id, &update, None).await,
            Err(StoreError::NotFound)
        ));
        let updated = store
            .update_registry(&a, &north.id, &update, None)
            .await
            .unwrap();
        assert_eq!(updated.description, "updated");
        assert!(!updated.default_policy);
        assert_eq!(updated.name, north.name);
        assert_eq!(updated.labels, north.labels);
        let rename = RegistryUpdate {
            name: Some("south-1".into()),
            ..RegistryUpdate::default()
        };
        assert!(matches!(
            store.update_registry(&a, &north.id, &rename, None).await,
            Err(StoreError::Conflict { field: "name" })
        ));

        let by_label = ListFilter {
            label: Some(("site".into(), "south".into())),
            ..ListFilter::default()
        };
        let page = store
            .list_registries(&a, &by_label, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(page.items, vec![south.clone()]);
        let by_prefix = ListFilter {
            name_prefix: Some("north".into()),
            ..ListFilter::default()
        };
        let page = store
            .list_registries(&a, &by_prefix, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(page.items, vec![updated]);
        assert!(store
            .list_registries(&b, &by_prefix, &PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty());
    }
}
