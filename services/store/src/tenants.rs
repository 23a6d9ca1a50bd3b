//! Tenants (SPEC §2), managed by operators, and the cursor pagination every list of the
//! store shares.

use crate::notify::{self, Change};
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
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: TenantId,
    name: String,
    status: String,
    created_at: DateTime<Utc>,
}

impl From<TenantRow> for Tenant {
    fn from(row: TenantRow) -> Tenant {
        Tenant {
            id: row.id,
            name: row.name,
            status: TenantStatus::from_db(&row.status),
            created_at: row.created_at,
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
            "INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING id, name, status, created_at",
        )
        .bind(&id)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        notify::publish(&mut *tx, &Change::Principals { tenant_id: id }).await?;
        tx.commit().await?;
        Ok(row.into())
    }

    /// The tenant `id`, or [`StoreError::NotFound`].
    pub async fn get_tenant(&self, id: &TenantId) -> Result<Tenant> {
        let row: Option<TenantRow> =
            sqlx::query_as("SELECT id, name, status, created_at FROM tenants WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(Tenant::from).ok_or(StoreError::NotFound)
    }

    /// A page of all tenants, ordered by id.
    pub async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>> {
        let rows: Vec<TenantRow> = sqlx::query_as(
            "SELECT id, name, status, created_at FROM tenants WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        let rows = rows.into_iter().map(Tenant::from).collect();
        Ok(page.page(rows, |t: &Tenant| t.id.as_str()))
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
            .list_tenants(&PageRequest {
                after: None,
                size: Some(2),
            })
            .await
            .unwrap();
        let second = store
            .list_tenants(&PageRequest {
                after: first.next_after.clone(),
                size: Some(2),
            })
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
}
