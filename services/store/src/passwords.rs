//! Device and registry passwords (SPEC §4.1): only argon2id hashes are stored; a secret the
//! service generates is returned once, to the caller that asked for it, and never again.

use crate::auth::hash_password;
use crate::notify;
use crate::tenants::{Page, PageRequest};
use crate::{BrokerId, DeviceId, PasswordId, RegistryId, Result, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};
use rand::Rng;

/// How many passwords a device (or registry) may hold. The broker verifies a CONNECT against each of
/// them with argon2id, so an unbounded number would make one CONNECT arbitrarily costly.
pub const MAX_PASSWORDS_PER_DEVICE: i64 = 10;
/// Length of a generated password: 32 characters of a 64-letter alphabet, 192 bits.
pub const GENERATED_LEN: usize = 32;

const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A fresh random password of URL-safe characters, from the thread's CSPRNG.
pub fn generate_password() -> String {
    let mut rng = rand::thread_rng();
    (0..GENERATED_LEN)
        .map(|_| URL_SAFE[rng.gen_range(0..URL_SAFE.len())] as char)
        .collect()
}

/// Whose password it is: a device, a registry client acting for the devices of its
/// registry (SPEC §3.4), or a client of a virtual broker (SPEC §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordOwner<'a> {
    Device(&'a DeviceId),
    Registry(&'a RegistryId),
    Broker(&'a BrokerId),
}

impl PasswordOwner<'_> {
    /// The owner's table and the `passwords` column naming it; static SQL identifiers.
    fn table_and_column(self) -> (&'static str, &'static str) {
        match self {
            PasswordOwner::Device(_) => ("devices", "device_id"),
            PasswordOwner::Registry(_) => ("registries", "registry_id"),
            PasswordOwner::Broker(_) => ("brokers", "broker_id"),
        }
    }
}

/// A stored password, without its hash.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PasswordMeta {
    pub id: PasswordId,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A password just created. `generated` holds the secret when the service chose it.
#[derive(Clone, Debug)]
pub struct CreatedPassword {
    pub meta: PasswordMeta,
    pub generated: Option<String>,
}

impl Store {
    /// Whether `owner` exists in `tenant`.
    async fn password_owner_exists(
        &self,
        tenant: &TenantId,
        owner: PasswordOwner<'_>,
    ) -> Result<bool> {
        let (table, _) = owner.table_and_column();
        let query = format!("SELECT 1 FROM {table} WHERE tenant_id = $1 AND id = $2");
        let found: Option<i32> = match owner {
            PasswordOwner::Device(id) => sqlx::query_scalar(&query).bind(tenant).bind(id),
            PasswordOwner::Registry(id) => sqlx::query_scalar(&query).bind(tenant).bind(id),
            PasswordOwner::Broker(id) => sqlx::query_scalar(&query).bind(tenant).bind(id),
        }
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Adds a password to `owner` in `tenant`: `secret` when given (the caller has checked
    /// its strength), a generated one otherwise. An unknown owner is `NotFound`; an owner
    /// already holding [`MAX_PASSWORDS_PER_DEVICE`] passwords is
    /// `Conflict { field: "passwords" }`.
    pub async fn create_password(
        &self,
        tenant: &TenantId,
        owner: PasswordOwner<'_>,
        secret: Option<String>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<CreatedPassword> {
        // Checked before hashing so that requests for unknown owners cost no argon2 run.
        if !self.password_owner_exists(tenant, owner).await? {
            return Err(StoreError::NotFound);
        }
        let (secret, generated) = match secret {
            Some(secret) => (secret, false),
            None => (generate_password(), true),
        };
        // argon2id takes tens of milliseconds of CPU: keep it off the async workers.
        let hash = {
            let secret = secret.clone();
            tokio::task::spawn_blocking(move || hash_password(&secret))
                .await
                .map_err(|e| StoreError::Hash(e.to_string()))??
        };
        let (table, column) = owner.table_and_column();
        let mut tx = self.pool.begin().await?;
        // Locking the owner serialises concurrent creations, so the limit holds.
        let count_query = format!(
            "SELECT (SELECT count(*) FROM passwords p WHERE p.tenant_id = o.tenant_id AND p.{column} = o.id)
               FROM {table} o WHERE o.tenant_id = $1 AND o.id = $2 FOR UPDATE"
        );
        let count: Option<i64> = match owner {
            PasswordOwner::Device(id) => sqlx::query_scalar(&count_query).bind(tenant).bind(id),
            PasswordOwner::Registry(id) => sqlx::query_scalar(&count_query).bind(tenant).bind(id),
            PasswordOwner::Broker(id) => sqlx::query_scalar(&count_query).bind(tenant).bind(id),
        }
        .fetch_optional(&mut *tx)
        .await?;
        match count {
            None => return Err(StoreError::NotFound),
            Some(n) if n >= MAX_PASSWORDS_PER_DEVICE => {
                return Err(StoreError::Conflict { field: "passwords" })
            }
            Some(_) => {}
        }
        let insert = format!(
            "INSERT INTO passwords (id, tenant_id, {column}, hash, expires_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id, created_at, expires_at"
        );
        let query = sqlx::query_as(&insert)
            .bind(PasswordId::generate())
            .bind(tenant);
        let meta: PasswordMeta = match owner {
            PasswordOwner::Device(id) => query.bind(id),
            PasswordOwner::Registry(id) => query.bind(id),
            PasswordOwner::Broker(id) => query.bind(id),
        }
        .bind(&hash)
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        notify::commit_principals(tx, tenant).await?;
        Ok(CreatedPassword {
            meta,
            generated: generated.then_some(secret),
        })
    }

    /// A page of the passwords of `owner` in `tenant`, ordered by id; an unknown owner is
    /// `NotFound`.
    pub async fn list_passwords(
        &self,
        tenant: &TenantId,
        owner: PasswordOwner<'_>,
        page: &PageRequest,
    ) -> Result<Page<PasswordMeta>> {
        if !self.password_owner_exists(tenant, owner).await? {
            return Err(StoreError::NotFound);
        }
        let (_, column) = owner.table_and_column();
        let select = format!(
            "SELECT id, created_at, expires_at FROM passwords
              WHERE tenant_id = $1 AND {column} = $2 AND id > $3 ORDER BY id LIMIT $4"
        );
        let query = sqlx::query_as(&select).bind(tenant);
        let rows: Vec<PasswordMeta> = match owner {
            PasswordOwner::Device(id) => query.bind(id),
            PasswordOwner::Registry(id) => query.bind(id),
            PasswordOwner::Broker(id) => query.bind(id),
        }
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        Ok(page.page(rows, |p: &PasswordMeta| p.id.as_str()))
    }

    /// Deletes the password `id` of `owner` in `tenant`.
    pub async fn delete_password(
        &self,
        tenant: &TenantId,
        owner: PasswordOwner<'_>,
        id: &PasswordId,
    ) -> Result<()> {
        let (_, column) = owner.table_and_column();
        let delete =
            format!("DELETE FROM passwords WHERE tenant_id = $1 AND {column} = $2 AND id = $3");
        let mut tx = self.pool.begin().await?;
        let query = sqlx::query(&delete).bind(tenant);
        let deleted = match owner {
            PasswordOwner::Device(owner_id) => query.bind(owner_id),
            PasswordOwner::Registry(owner_id) => query.bind(owner_id),
            PasswordOwner::Broker(owner_id) => query.bind(owner_id),
        }
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
    use crate::auth::{verify_password, PrincipalKind};
    use crate::devices::{tests::tenant_with_registry, NewDevice};
    use std::collections::BTreeMap;

    #[test]
    fn generated_passwords_are_long_url_safe_and_distinct() {
        let a = generate_password();
        assert_eq!(a.len(), GENERATED_LEN);
        assert!(a.bytes().all(|b| URL_SAFE.contains(&b)));
        assert_ne!(a, generate_password());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn password_authenticates_its_device_only_in_its_tenant(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg) = tenant_with_registry(&store, "a").await;
        let (b, _) = tenant_with_registry(&store, "b").await;
        let new = NewDevice {
            name: "d".into(),
            description: String::new(),
            labels: BTreeMap::new(),
        };
        let dev = store.create_device(&a, &reg, &new).await.unwrap();
        assert!(matches!(
            store
                .create_password(&b, PasswordOwner::Device(&dev.id), None, None)
                .await,
            Err(StoreError::NotFound)
        ));
        let created = store
            .create_password(&a, PasswordOwner::Device(&dev.id), None, None)
            .await
            .unwrap();
        let secret = created.generated.clone().unwrap();
        let given = store
            .create_password(
                &a,
                PasswordOwner::Device(&dev.id),
                Some("a given password".into()),
                None,
            )
            .await
            .unwrap();
        assert!(given.generated.is_none());

        let principal = store
            .find_password_principal(dev.id.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(principal.tenant_id, a);
        assert!(
            matches!(principal.kind, PrincipalKind::Device { ref device_id, .. } if *device_id == dev.id)
        );
        assert_eq!(principal.hashes.len(), 2);
        assert!(principal
            .hashes
            .iter()
            .any(|h| verify_password(h, secret.as_bytes())));
        assert!(principal
            .hashes
            .iter()
            .any(|h| verify_password(h, b"a given password")));

        let listed = store
            .list_passwords(&a, PasswordOwner::Device(&dev.id), &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 2);
        assert!(matches!(
            store
                .list_passwords(&b, PasswordOwner::Device(&dev.id), &PageRequest::default())
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store
                .delete_password(&b, PasswordOwner::Device(&dev.id), &created.meta.id)
                .await,
            Err(StoreError::NotFound)
        ));
        store
            .delete_password(&a, PasswordOwner::Device(&dev.id), &created.meta.id)
            .await
            .unwrap();
        let principal = store
            .find_password_principal(dev.id.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(principal.hashes.len(), 1);
        assert!(!verify_password(&principal.hashes[0], secret.as_bytes()));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_device_holds_a_bounded_number_of_passwords(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg) = tenant_with_registry(&store, "a").await;
        let new = NewDevice {
            name: "d".into(),
            description: String::new(),
            labels: BTreeMap::new(),
        };
        let dev = store.create_device(&a, &reg, &new).await.unwrap();
        for _ in 0..MAX_PASSWORDS_PER_DEVICE {
            store
                .create_password(
                    &a,
                    PasswordOwner::Device(&dev.id),
                    Some("0123456789abcdef".into()),
                    None,
                )
                .await
                .unwrap();
        }
        assert!(matches!(
            store
                .create_password(&a, PasswordOwner::Device(&dev.id), None, None)
                .await,
            Err(StoreError::Conflict { field: "passwords" })
        ));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn registry_password_authenticates_the_registry_client(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg) = tenant_with_registry(&store, "a").await;
        let (b, _) = tenant_with_registry(&store, "b").await;
        assert!(matches!(
            store
                .create_password(&b, PasswordOwner::Registry(&reg), None, None)
                .await,
            Err(StoreError::NotFound)
        ));
        let created = store
            .create_password(&a, PasswordOwner::Registry(&reg), None, None)
            .await
            .unwrap();
        let secret = created.generated.unwrap();
        let principal = store
            .find_password_principal(reg.as_str())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(principal.kind, PrincipalKind::Registry { ref registry_id } if *registry_id == reg)
        );
        assert!(principal
            .hashes
            .iter()
            .any(|h| verify_password(h, secret.as_bytes())));
        let listed = store
            .list_passwords(&a, PasswordOwner::Registry(&reg), &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(listed.items, vec![created.meta.clone()]);
        store
            .delete_password(&a, PasswordOwner::Registry(&reg), &created.meta.id)
            .await
            .unwrap();
        let principal = store
            .find_password_principal(reg.as_str())
            .await
            .unwrap()
            .unwrap();
        assert!(principal.hashes.is_empty());
    }
}
