//! Virtual brokers (SPEC §3.6): isolated namespaces of free-form topics inside a tenant,
//! reached with the broker's own credentials.

use crate::filters::{self, ListFilter};
use crate::notify;
use crate::registries::missing_tenant_is_not_found;
use crate::tenants::{Page, PageRequest};
use crate::versions::{self, Versioned, BUMP};
use crate::{BrokerId, Result, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use std::collections::BTreeMap;

/// What it takes to create a virtual broker; the caller has validated every field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBroker {
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
}

/// A change to a virtual broker; `None` fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// A virtual broker of a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    pub id: BrokerId,
    pub tenant_id: TenantId,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    /// The version of the resource: when it last changed (see `If-Match` in the API).
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct BrokerRow {
    id: BrokerId,
    tenant_id: TenantId,
    name: String,
    description: String,
    labels: Json<BTreeMap<String, String>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<BrokerRow> for Broker {
    fn from(row: BrokerRow) -> Broker {
        Broker {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            description: row.description,
            labels: row.labels.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const COLUMNS: &str = "id, tenant_id, name, description, labels, created_at, updated_at";

impl Store {
    /// Creates a virtual broker in `tenant`. A name already used in the tenant is
    /// `Conflict { field: "name" }`; an unknown tenant is `NotFound`.
    pub async fn create_broker(&self, tenant: &TenantId, new: &NewBroker) -> Result<Broker> {
        let row: BrokerRow = sqlx::query_as(&format!(
            "INSERT INTO brokers (id, tenant_id, name, description, labels)
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
        ))
        .bind(BrokerId::generate())
        .bind(tenant)
        .bind(&new.name)
        .bind(&new.description)
        .bind(Json(&new.labels))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            StoreError::on_constraint(
                e,
                &[
                    ("brokers_tenant_id_name_key", "name"),
                    ("brokers_tenant_id_fkey", "tenant_id"),
                ],
            )
        })
        .map_err(missing_tenant_is_not_found)?;
        Ok(row.into())
    }

    /// The virtual broker `id` of `tenant`, or `NotFound`.
    pub async fn get_broker(&self, tenant: &TenantId, id: &BrokerId) -> Result<Broker> {
        let row: Option<BrokerRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM brokers WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Broker::from).ok_or(StoreError::NotFound)
    }

    /// A page of the virtual brokers of `tenant` that `filter` keeps, ordered by id.
    pub async fn list_brokers(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
        page: &PageRequest,
    ) -> Result<Page<Broker>> {
        let rows: Vec<BrokerRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM brokers WHERE tenant_id = $1 AND id > $2{} ORDER BY id LIMIT $3",
            filters::condition(4, Some(5), None)
        ))
        .bind(tenant)
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .bind(filter.name_prefix.as_deref())
        .bind(filter.label_json())
        .fetch_all(&self.pool)
        .await?;
        let rows = rows.into_iter().map(Broker::from).collect();
        Ok(page.page(rows, |b: &Broker| b.id.as_str()))
    }

    /// Applies `update` to the virtual broker `id` of `tenant`. A change that changes
    /// nothing keeps the version.
    pub async fn update_broker(
        &self,
        tenant: &TenantId,
        id: &BrokerId,
        update: &BrokerUpdate,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<Broker> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Brokers, tenant, id.as_str(), if_match).await?;
        let row: Option<BrokerRow> = sqlx::query_as(&format!(
            "UPDATE brokers SET name = COALESCE($3, name),
                    description = COALESCE($4, description), labels = COALESCE($5, labels),
                    updated_at = {BUMP}
              WHERE tenant_id = $1 AND id = $2
                AND (COALESCE($3, name), COALESCE($4, description), COALESCE($5, labels))
                    IS DISTINCT FROM (name, description, labels)
             RETURNING {COLUMNS}"
        ))
        .bind(tenant)
        .bind(id)
        .bind(update.name.as_deref())
        .bind(update.description.as_deref())
        .bind(update.labels.as_ref().map(Json))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| StoreError::on_constraint(e, &[("brokers_tenant_id_name_key", "name")]))?;
        let Some(row) = row else {
            // Nothing to change, or no such virtual broker.
            let row: Option<BrokerRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM brokers WHERE tenant_id = $1 AND id = $2"
            ))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            return row.map(Broker::from).ok_or(StoreError::NotFound);
        };
        tx.commit().await?;
        Ok(row.into())
    }

    /// Deletes the virtual broker `id` of `tenant` with its credentials; notifies
    /// [`Change::Principals`](notify::Change::Principals) so that its clients lose their sessions.
    pub async fn delete_broker(
        &self,
        tenant: &TenantId,
        id: &BrokerId,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Brokers, tenant, id.as_str(), if_match).await?;
        let deleted = sqlx::query("DELETE FROM brokers WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        notify::commit_principals(tx, tenant).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passwords::PasswordOwner;

    fn broker(name: &str) -> NewBroker {
        NewBroker {
            name: name.into(),
            description: String::new(),
            labels: BTreeMap::from([("env".to_owned(), "dev".to_owned())]),
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn broker_of_other_tenant_is_not_found(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let a = store.create_tenant("a").await.unwrap().id;
        let b = store.create_tenant("b").await.unwrap().id;
        let created = store.create_broker(&a, &broker("lab")).await.unwrap();
        assert_eq!(store.get_broker(&a, &created.id).await.unwrap(), created);
        assert!(matches!(
            store.get_broker(&b, &created.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.create_broker(&a, &broker("lab")).await,
            Err(StoreError::Conflict { field: "name" })
        ));
        assert!(matches!(
            store
                .create_broker(&TenantId::generate(), &broker("x"))
                .await,
            Err(StoreError::NotFound)
        ));
        let update = BrokerUpdate {
            description: Some("the lab".into()),
            ..BrokerUpdate::default()
        };
        assert!(matches!(
            store.update_broker(&b, &created.id, &update, None).await,
            Err(StoreError::NotFound)
        ));
        let updated = store
            .update_broker(&a, &created.id, &update, None)
            .await
            .unwrap();
        assert_eq!(updated.description, "the lab");
        assert_eq!(updated.name, "lab");

        let second = store.create_broker(&a, &broker("plant")).await.unwrap();
        let page = store
            .list_brokers(
                &a,
                &ListFilter {
                    name_prefix: Some("pl".into()),
                    ..ListFilter::default()
                },
                &PageRequest::default(),
            )
            .await
            .unwrap();
        assert_eq!(page.items, vec![second]);
        assert!(store
            .list_brokers(&b, &ListFilter::default(), &PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty());

        let password = store
            .create_password(&a, PasswordOwner::Broker(&created.id), None, None)
            .await
            .unwrap();
        assert!(password.generated.is_some());
        assert!(matches!(
            store
                .create_password(&b, PasswordOwner::Broker(&created.id), None, None)
                .await,
            Err(StoreError::NotFound)
        ));

        assert!(matches!(
            store.delete_broker(&b, &created.id, None).await,
            Err(StoreError::NotFound)
        ));
        store.delete_broker(&a, &created.id, None).await.unwrap();
        assert!(matches!(
            store
                .list_passwords(
                    &a,
                    PasswordOwner::Broker(&created.id),
                    &PageRequest::default()
                )
                .await,
            Err(StoreError::NotFound)
        ));
    }
}
