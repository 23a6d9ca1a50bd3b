//! Tenants (SPEC §2), managed by operators, and the cursor pagination every list of the
//! store shares.

use crate::filters::{self, ListFilter};
use crate::notify::{self, Change};
use crate::versions::{self, Versioned, BUMP};
use crate::{Result, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};

/// The largest page any list returns, whatever the caller asks for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The page size when the caller does not ask for one.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// Which page of a list to read. Lists are ordered by id, so a page starts right after
/// the last id the previous page returned, which stays stable under inserts and deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// The last id of the previous page; `None` for the first page.
    pub after: Option<String>,
    /// Wanted page size; clamped to `1..=MAX_PAGE_SIZE`, `None` means the default.
    pub size: Option<u32>,
}

impl PageRequest {
    /// The page size actually used.
    pub fn limit(&self) -> u32 {
        self.size
            .unwrap_or(DEFAULT_PAGE_SIZE)
            .clamp(1, MAX_PAGE_SIZE)
    }

    /// The `after` bound as SQL sees it: the empty string sorts before every id.
    pub(crate) fn after_bound(&self) -> &str {
        self.after.as_deref().unwrap_or("")
    }

    /// How many rows to fetch: one more than the page, to learn whether another follows.
    pub(crate) fn fetch_limit(&self) -> i64 {
        i64::from(self.limit()) + 1
    }

    /// Cuts the over-fetched `rows` down to a page.
    pub(crate) fn page<T>(&self, mut rows: Vec<T>, id_of: impl Fn(&T) -> &str) -> Page<T> {
        let limit = self.limit() as usize;
        let next_after = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| id_of(last).to_owned())
        } else {
            None
        };
        Page {
            items: rows,
            next_after,
        }
    }
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `after` of the next page, `None` when this page is the last.
    pub next_after: Option<String>,
}

/// Whether a tenant may use the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }

    fn from_db(s: &str) -> TenantStatus {
        // The column's CHECK constraint admits only the two values.
        if s == "suspended" {
            TenantStatus::Suspended
        } else {
            TenantStatus::Active
        }
    }
}

/// A tenant as the control plane shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub status: TenantStatus,
    pub created_at: DateTime<Utc>,
    /// The version of the tenant: when it, its quotas or its rules last changed (see
    /// `If-Match` in the API).
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: TenantId,
    name: String,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<TenantRow> for Tenant {
    fn from(row: TenantRow) -> Tenant {
        Tenant {
            id: row.id,
            name: row.name,
            status: TenantStatus::from_db(&row.status),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl Store {
    /// Creates an active tenant named `name`. Tenant names need not be unique: the id is
    /// what identifies a tenant.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        let id = TenantId::generate();
        let mut tx = self.pool.begin().await?;
        let row: TenantRow = sqlx::query_as(
            "INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING id, name, status, created_at, updated_at",
        )
        .bind(&id)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        notify::commit_principals(tx, &id).await?;
        Ok(row.into())
    }

    /// The tenant `id`, or [`StoreError::NotFound`].
    pub async fn get_tenant(&self, id: &TenantId) -> Result<Tenant> {
        let row: Option<TenantRow> = sqlx::query_as(
            "SELECT id, name, status, created_at, updated_at FROM tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Tenant::from).ok_or(StoreError::NotFound)
    }

    /// A page of the tenants `filter` keeps (by name prefix and status), ordered by id.
    pub async fn list_tenants(
        &self,
        filter: &ListFilter,
        page: &PageRequest,
    ) -> Result<Page<Tenant>> {
        let rows: Vec<TenantRow> = sqlx::query_as(&format!(
            "SELECT id, name, status, created_at, updated_at FROM tenants WHERE id > $1{} ORDER BY id LIMIT $2",
            filters::condition(3, None, Some(4))
        ))
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .bind(filter.name_prefix.as_deref())
        .bind(filter.status)
        .fetch_all(&self.pool)
        .await?;
        let rows = rows.into_iter().map(Tenant::from).collect();
        Ok(page.page(rows, |t: &Tenant| t.id.as_str()))
    }

    /// Renames the tenant `id` and/or changes its status; `None` leaves a field alone.
    /// Every change notifies [`Change::Principals`], so brokers drop the sessions of a
    /// tenant that was just suspended. A change that changes nothing keeps the version.
    pub async fn update_tenant(
        &self,
        id: &TenantId,
        name: Option<&str>,
        status: Option<TenantStatus>,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<Tenant> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Tenants, id, id.as_str(), if_match).await?;
        let row: Option<TenantRow> = sqlx::query_as(&format!(
            "UPDATE tenants SET name = COALESCE($2, name), status = COALESCE($3, status),
                    updated_at = {BUMP}
              WHERE id = $1
                AND (COALESCE($2, name), COALESCE($3, status)) IS DISTINCT FROM (name, status)
             RETURNING id, name, status, created_at, updated_at"
        ))
        .bind(id)
        .bind(name)
        .bind(status.map(TenantStatus::as_str))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Nothing to change, or no such tenant.
            let row: Option<TenantRow> = sqlx::query_as(
                "SELECT id, name, status, created_at, updated_at FROM tenants WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            return row.map(Tenant::from).ok_or(StoreError::NotFound);
        };
        notify::commit_principals(tx, id).await?;
        Ok(row.into())
    }

    /// Deletes the tenant `id` with everything it owns (the foreign keys cascade).
    pub async fn delete_tenant(
        &self,
        id: &TenantId,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Tenants, id, id.as_str(), if_match).await?;
        let deleted = sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        notify::publish(
            &mut *tx,
            &Change::Principals {
                tenant_id: id.clone(),
            },
        )
        .await?;
        notify::publish(
            &mut *tx,
            &Change::Rules {
                tenant_id: id.clone(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn page_size_is_clamped() {
        assert_eq!(PageRequest::default().limit(), DEFAULT_PAGE_SIZE);
        assert_eq!(
            PageRequest {
                after: None,
                size: Some(0)
            }
            .limit(),
            1
        );
        assert_eq!(
            PageRequest {
                after: None,
                size: Some(5000)
            }
            .limit(),
            MAX_PAGE_SIZE
        );
    }

    #[test]
    fn a_full_page_names_its_successor_and_a_short_one_does_not() {
        let request = PageRequest {
            after: None,
            size: Some(2),
        };
        let page = request.page(vec!["a", "b", "c"], |s| s);
        assert_eq!(page.items, vec!["a", "b"]);
        assert_eq!(page.next_after.as_deref(), Some("b"));
        let page = request.page(vec!["a", "b"], |s| s);
        assert_eq!(page.next_after, None);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn tenants_are_listed_page_by_page(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let mut created = Vec::new();
        for name in ["a", "b", "c"] {
            created.push(store.create_tenant(name).await.unwrap().id);
        }
        created.sort();
        let first = store
            .list_tenants(
                &ListFilter::default(),
                &PageRequest {
                    after: None,
                    size: Some(2),
                },
            )
            .await
            .unwrap();
        let second = store
            .list_tenants(
                &ListFilter::default(),
                &PageRequest {
                    after: first.next_after.clone(),
                    size: Some(2),
                },
            )
            .await
            .unwrap();
        let seen: Vec<TenantId> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(seen, created);
        assert!(second.next_after.is_none());
        let got = store.get_tenant(&created[0]).await.unwrap();
        assert_eq!(got.status, TenantStatus::Active);
        assert!(matches!(
            store.get_tenant(&TenantId::generate()).await,
            Err(StoreError::NotFound)
        ));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn tenants_are_renamed_suspended_filtered_and_deleted(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let mut listener = crate::notify::ChangeListener::connect(&store)
            .await
            .unwrap();
        let acme = store.create_tenant("acme").await.unwrap().id;
        let other = store.create_tenant("other").await.unwrap().id;
        // Drain the creation notifications.
        for _ in 0..2 {
            listener.recv().await.unwrap();
        }
        let suspended = store
            .update_tenant(
                &acme,
                Some("acme-corp"),
                Some(TenantStatus::Suspended),
                None,
            )
            .await
            .unwrap();
        assert_eq!(suspended.name, "acme-corp");
        assert_eq!(suspended.status, TenantStatus::Suspended);
        assert_eq!(
            listener.recv().await.unwrap(),
            Some(Change::Principals {
                tenant_id: acme.clone()
            })
        );
        let filter = ListFilter {
            status: Some("suspended"),
            ..ListFilter::default()
        };
        let page = store
            .list_tenants(&filter, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(page.items, vec![suspended.clone()]);
        let filter = ListFilter {
            name_prefix: Some("oth".into()),
            ..ListFilter::default()
        };
        let page = store
            .list_tenants(&filter, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].id, other);
        // A prefix is literal: `%` matches nothing here.
        let filter = ListFilter {
            name_prefix: Some("%".into()),
            ..ListFilter::default()
        };
        assert!(store
            .list_tenants(&filter, &PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty());
        store.delete_tenant(&acme, None).await.unwrap();
        assert!(matches!(
            store.get_tenant(&acme).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.delete_tenant(&acme, None).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.update_tenant(&acme, Some("x"), None, None).await,
            Err(StoreError::NotFound)
        ));
    }
}
