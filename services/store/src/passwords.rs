//! Device passwords (SPEC §4.1): only argon2id hashes are stored; a secret the service
//! generates is returned once, to the caller that asked for it, and never again.

use crate::auth::hash_password;
use crate::notify::{self, Change};
use crate::tenants::{Page, PageRequest};
use crate::{DeviceId, PasswordId, Result, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};
use rand::Rng;

/// How many passwords a device may hold. The broker verifies a CONNECT against each of
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

/// A stored password, without its hash.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PasswordMeta {
    pub id: PasswordId,
    pub device_id: DeviceId,
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
    /// Adds a password to the device `device` of `tenant`: `secret` when given (the caller
    /// has checked its strength), a generated one otherwise. An unknown device is
    /// `NotFound`; a device already holding [`MAX_PASSWORDS_PER_DEVICE`] passwords is
    /// `Conflict { field: "passwords" }`.
    pub async fn create_device_password(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        secret: Option<String>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<CreatedPassword> {
        // Checked before hashing so that requests for unknown devices cost no argon2 run.
        self.get_device(tenant, device).await?;
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
        let mut tx = self.pool.begin().await?;
        // Locking the device serialises concurrent creations, so the limit holds.
        let count: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM passwords p WHERE p.tenant_id = d.tenant_id AND p.device_id = d.id)
               FROM devices d WHERE d.tenant_id = $1 AND d.id = $2 FOR UPDATE",
        )
        .bind(tenant)
        .bind(device)
        .fetch_optional(&mut *tx)
        .await?;
        match count {
            None => return Err(StoreError::NotFound),
            Some(n) if n >= MAX_PASSWORDS_PER_DEVICE => {
                return Err(StoreError::Conflict { field: "passwords" })
            }
            Some(_) => {}
        }
        let meta: PasswordMeta = sqlx::query_as(
            "INSERT INTO passwords (id, tenant_id, device_id, hash, expires_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id, device_id, created_at, expires_at",
        )
        .bind(PasswordId::generate())
        .bind(tenant)
        .bind(device)
        .bind(&hash)
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        notify::publish(
            &mut *tx,
            &Change::Principals {
                tenant_id: tenant.clone(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(CreatedPassword {
            meta,
            generated: generated.then_some(secret),
        })
    }

    /// A page of the passwords of the device `device` of `tenant`, ordered by id; an
    /// unknown device is `NotFound`.
    pub async fn list_device_passwords(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        page: &PageRequest,
    ) -> Result<Page<PasswordMeta>> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM devices WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(device)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let rows: Vec<PasswordMeta> = sqlx::query_as(
            "SELECT id, device_id, created_at, expires_at FROM passwords
              WHERE tenant_id = $1 AND device_id = $2 AND id > $3 ORDER BY id LIMIT $4",
        )
        .bind(tenant)
        .bind(device)
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(page.page(rows, |p: &PasswordMeta| p.id.as_str()))
    }

    /// Deletes the password `id` of the device `device` of `tenant`.
    pub async fn delete_device_password(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        id: &PasswordId,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM passwords WHERE tenant_id = $1 AND device_id = $2 AND id = $3",
        )
        .bind(tenant)
        .bind(device)
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
                tenant_id: tenant.clone(),
            },
        )
        .await?;
        tx.commit().await?;
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
            store.create_device_password(&b, &dev.id, None, None).await,
            Err(StoreError::NotFound)
        ));
        let created = store
            .create_device_password(&a, &dev.id, None, None)
            .await
            .unwrap();
        let secret = created.generated.clone().unwrap();
        let given = store
            .create_device_password(&a, &dev.id, Some("a given password".into()), None)
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
            .list_device_passwords(&a, &dev.id, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 2);
        assert!(matches!(
            store
                .list_device_passwords(&b, &dev.id, &PageRequest::default())
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store
                .delete_device_password(&b, &dev.id, &created.meta.id)
                .await,
            Err(StoreError::NotFound)
        ));
        store
            .delete_device_password(&a, &dev.id, &created.meta.id)
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
                .create_device_password(&a, &dev.id, Some("0123456789abcdef".into()), None)
                .await
                .unwrap();
        }
        assert!(matches!(
            store.create_device_password(&a, &dev.id, None, None).await,
            Err(StoreError::Conflict { field: "passwords" })
        ));
    }
}
