//! X.509 client certificates of devices, registries and virtual brokers, and the CA
//! certificates of registries (SPEC §2, §4.1, §6.2).
//!
//! A certificate is identified by the SHA-256 fingerprint of its DER, unique across the
//! whole service, so that a presented certificate names at most one principal. Revoking a
//! certificate keeps its row (status `revoked`), so that it stays refused even when it
//! would also chain to a registry's CA.

use crate::notify;
use crate::passwords::PasswordOwner;
use crate::tenants::{Page, PageRequest};
use crate::{CaCertificateId, DeviceId, RegistryId, Result, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};

/// Whose certificate it is: the same owners as passwords.
pub type CertificateOwner<'a> = PasswordOwner<'a>;

/// Active certificates one device, registry or virtual broker may hold.
pub const MAX_CERTIFICATES_PER_OWNER: i64 = 50;
/// CA certificates one registry may hold.
pub const MAX_CA_CERTIFICATES_PER_REGISTRY: i64 = 10;

fn owner_column(owner: CertificateOwner<'_>) -> (&'static str, &'static str, &str) {
    match owner {
        PasswordOwner::Device(id) => ("devices", "device_id", id.as_str()),
        PasswordOwner::Registry(id) => ("registries", "registry_id", id.as_str()),
        PasswordOwner::Broker(id) => ("brokers", "broker_id", id.as_str()),
    }
}

/// A certificate to register; the caller has parsed it.
#[derive(Clone, Debug)]
pub struct NewCertificate {
    pub fingerprint: String,
    pub pem: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// The registry CA that issued it, when the service issued it or registered it just in
    /// time through that CA.
    pub ca_certificate_id: Option<CaCertificateId>,
}

/// A registered certificate as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CertificateMeta {
    pub fingerprint: String,
    pub pem: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub status: String,
    pub ca_certificate_id: Option<CaCertificateId>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const CERTIFICATE_COLUMNS: &str = "fingerprint, pem, subject, issuer, not_before, not_after, \
                                   status, ca_certificate_id, created_at, revoked_at";

/// A CA certificate to register on a registry.
#[derive(Clone, Debug)]
pub struct NewCaCertificate {
    pub fingerprint: String,
    pub pem: String,
    pub subject: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub auto_register: bool,
    /// Set when the service created the CA and keeps its key to issue certificates.
    pub private_key_pem: Option<String>,
}

/// A registry's CA certificate as the API shows it (never its private key).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CaCertificateMeta {
    pub id: CaCertificateId,
    pub registry_id: RegistryId,
    pub fingerprint: String,
    pub pem: String,
    pub subject: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub auto_register: bool,
    pub status: String,
    /// Whether the service holds the key and can issue certificates with this CA.
    pub service_managed: bool,
    pub created_at: DateTime<Utc>,
}

const CA_COLUMNS: &str = "id, registry_id, fingerprint, pem, subject, not_before, not_after, \
                          auto_register, status, private_key_pem IS NOT NULL AS service_managed, \
                          created_at";

/// A registry CA the service can issue certificates with.
#[derive(Clone)]
pub struct IssuingCa {
    pub id: CaCertificateId,
    pub pem: String,
    pub private_key_pem: String,
}

/// What a broker learns from a presented certificate's fingerprint.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RegisteredCertificate {
    pub tenant_id: TenantId,
    /// The device, registry or virtual broker id the certificate is registered on.
    pub owner_id: String,
    pub active: bool,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// `Some(false)` when it came from a registry CA that is no longer active.
    pub ca_active: Option<bool>,
}

/// An active CA certificate a presented chain may verify against.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TrustedCa {
    pub id: CaCertificateId,
    pub tenant_id: TenantId,
    pub registry_id: RegistryId,
    pub pem: String,
    pub auto_register: bool,
}

impl Store {
    async fn owner_exists(&self, tenant: &TenantId, owner: CertificateOwner<'_>) -> Result<bool> {
        let (table, _, id) = owner_column(owner);
        let found: Option<i32> = sqlx::query_scalar(&format!(
            "SELECT 1 FROM {table} WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Registers `new` on `owner` in `tenant`. An unknown owner is `NotFound`; a
    /// fingerprint registered anywhere already is `Conflict { field: "fingerprint" }`; an
    /// owner holding [`MAX_CERTIFICATES_PER_OWNER`] active certificates is
    /// `Conflict { field: "certificates" }`.
    pub async fn create_certificate(
        &self,
        tenant: &TenantId,
        owner: CertificateOwner<'_>,
        new: &NewCertificate,
    ) -> Result<CertificateMeta> {
        let (table, column, id) = owner_column(owner);
        let mut tx = self.pool.begin().await?;
        // Locking the owner serialises concurrent registrations, so the limit holds.
        let count: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT (SELECT count(*) FROM certificates c
                      WHERE c.tenant_id = o.tenant_id AND c.{column} = o.id AND c.status = 'active')
               FROM {table} o WHERE o.tenant_id = $1 AND o.id = $2 FOR UPDATE"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match count {
            None => return Err(StoreError::NotFound),
            Some(n) if n >= MAX_CERTIFICATES_PER_OWNER => {
                return Err(StoreError::Conflict {
                    field: "certificates",
                })
            }
            Some(_) => {}
        }
        let meta = insert_certificate(&mut tx, tenant, column, id, new).await?;
        notify::commit_principals(tx, tenant).await?;
        Ok(meta)
    }

    /// A page of `owner`'s certificates (revoked ones included), ordered by fingerprint;
    /// an unknown owner is `NotFound`.
    pub async fn list_certificates(
        &self,
        tenant: &TenantId,
        owner: CertificateOwner<'_>,
        page: &PageRequest,
    ) -> Result<Page<CertificateMeta>> {
        if !self.owner_exists(tenant, owner).await? {
            return Err(StoreError::NotFound);
        }
        let (_, column, id) = owner_column(owner);
        let rows: Vec<CertificateMeta> = sqlx::query_as(&format!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates
              WHERE tenant_id = $1 AND {column} = $2 AND fingerprint > $3
              ORDER BY fingerprint LIMIT $4"
        ))
        .bind(tenant)
        .bind(id)
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        Ok(page.page(rows, |c: &CertificateMeta| c.fingerprint.as_str()))
    }

    /// Revokes the certificate `fingerprint` of `owner`: it is refused from now on, and
    /// live connections that use it are disconnected (through [`Change::Principals`](notify::Change::Principals)).
    /// Revoking a revoked certificate changes nothing; an unknown one is `NotFound`.
    pub async fn revoke_certificate(
        &self,
        tenant: &TenantId,
        owner: CertificateOwner<'_>,
        fingerprint: &str,
    ) -> Result<()> {
        let (_, column, id) = owner_column(owner);
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(&format!(
            "UPDATE certificates
                SET status = 'revoked', revoked_at = coalesce(revoked_at, now())
              WHERE tenant_id = $1 AND {column} = $2 AND fingerprint = $3"
        ))
        .bind(tenant)
        .bind(id)
        .bind(fingerprint)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        notify::commit_principals(tx, tenant).await?;
        Ok(())
    }

    /// Registers a CA certificate on `registry`. An unknown registry is `NotFound`; a
    /// fingerprint registered already is `Conflict { field: "fingerprint" }`; a registry
    /// holding [`MAX_CA_CERTIFICATES_PER_REGISTRY`] is `Conflict { field: "ca_certificates" }`.
    pub async fn create_ca_certificate(
        &self,
        tenant: &TenantId,
        registry: &RegistryId,
        new: &NewCaCertificate,
    ) -> Result<CaCertificateMeta> {
        let mut tx = self.pool.begin().await?;
        let count: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM ca_certificates c
                      WHERE c.tenant_id = r.tenant_id AND c.registry_id = r.id)
               FROM registries r WHERE r.tenant_id = $1 AND r.id = $2 FOR UPDATE",
        )
        .bind(tenant)
        .bind(registry)
        .fetch_optional(&mut *tx)
        .await?;
        match count {
            None => return Err(StoreError::NotFound),
            Some(n) if n >= MAX_CA_CERTIFICATES_PER_REGISTRY => {
                return Err(StoreError::Conflict {
                    field: "ca_certificates",
                })
            }
            Some(_) => {}
        }
        let meta: CaCertificateMeta = sqlx::query_as(&format!(
            "INSERT INTO ca_certificates
                 (id, tenant_id, registry_id, fingerprint, pem, subject, not_before, not_after,
                  auto_register, private_key_pem)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {CA_COLUMNS}"
        ))
        .bind(CaCertificateId::generate())
        .bind(tenant)
        .bind(registry)
        .bind(&new.fingerprint)
        .bind(&new.pem)
        .bind(&new.subject)
        .bind(new.not_before)
        .bind(new.not_after)
        .bind(new.auto_register)
        .bind(&new.private_key_pem)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::on_constraint(e, &[("ca_certificates_fingerprint_key", "fingerprint")])
        })?;
        tx.commit().await?;
        Ok(meta)
    }

    /// A page of `registry`'s CA certificates, ordered by id; an unknown registry is
    /// `NotFound`.
    pub async fn list_ca_certificates(
        &self,
        tenant: &TenantId,
        registry: &RegistryId,
        page: &PageRequest,
    ) -> Result<Page<CaCertificateMeta>> {
        if !self
            .owner_exists(tenant, PasswordOwner::Registry(registry))
            .await?
        {
            return Err(StoreError::NotFound);
        }
        let rows: Vec<CaCertificateMeta> = sqlx::query_as(&format!(
            "SELECT {CA_COLUMNS} FROM ca_certificates
              WHERE tenant_id = $1 AND registry_id = $2 AND id > $3 ORDER BY id LIMIT $4"
        ))
        .bind(tenant)
        .bind(registry)
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        Ok(page.page(rows, |c: &CaCertificateMeta| c.id.as_str()))
    }

    /// Deletes the CA certificate `id` of `registry`, with the certificates issued or
    /// registered through it; live connections that used any of them are disconnected.
    pub async fn delete_ca_certificate(
        &self,
        tenant: &TenantId,
        registry: &RegistryId,
        id: &CaCertificateId,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM ca_certificates WHERE tenant_id = $1 AND registry_id = $2 AND id = $3",
        )
        .bind(tenant)
        .bind(registry)
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

    /// The newest active CA of `registry` whose key the service holds, if any.
    pub async fn issuing_ca(
        &self,
        tenant: &TenantId,
        registry: &RegistryId,
    ) -> Result<Option<IssuingCa>> {
        let row: Option<(CaCertificateId, String, String)> = sqlx::query_as(
            "SELECT id, pem, private_key_pem FROM ca_certificates
              WHERE tenant_id = $1 AND registry_id = $2 AND status = 'active'
                AND private_key_pem IS NOT NULL AND not_after > now()
              ORDER BY created_at DESC, id LIMIT 1",
        )
        .bind(tenant)
        .bind(registry)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id, pem, private_key_pem)| IssuingCa {
            id,
            pem,
            private_key_pem,
        }))
    }
}

/// What brokers ask when a client presents a certificate (SPEC §4.1, item 1).
impl Store {
    /// The registration of `fingerprint`, whichever tenant holds it.
    pub async fn find_certificate(
        &self,
        fingerprint: &str,
    ) -> Result<Option<RegisteredCertificate>> {
        Ok(sqlx::query_as(
            "SELECT c.tenant_id, coalesce(c.device_id, c.registry_id, c.broker_id) AS owner_id,
                    c.status = 'active' AS active, c.not_before, c.not_after,
                    CASE WHEN c.ca_certificate_id IS NULL THEN NULL
                         ELSE coalesce(ca.status = 'active', false) END AS ca_active
               FROM certificates c
               LEFT JOIN ca_certificates ca
                      ON ca.tenant_id = c.tenant_id AND ca.id = c.ca_certificate_id
              WHERE c.fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Active CA certificates whose subject is one of `subjects` (the issuers of a
    /// presented chain), oldest first.
    pub async fn trusted_cas(&self, subjects: &[String]) -> Result<Vec<TrustedCa>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, registry_id, pem, auto_register FROM ca_certificates
              WHERE subject = ANY($1) AND status = 'active'
              ORDER BY created_at, id LIMIT 16",
        )
        .bind(subjects)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether the CA certificate `id` of `tenant` is still active.
    pub async fn ca_certificate_active(
        &self,
        tenant: &TenantId,
        id: &CaCertificateId,
    ) -> Result<bool> {
        let found: Option<bool> = sqlx::query_scalar(
            "SELECT status = 'active' FROM ca_certificates WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.unwrap_or(false))
    }

    /// The device of `registry` that one of `names` names (by id or by name), preferring
    /// the earliest name.
    pub async fn device_named(
        &self,
        tenant: &TenantId,
        registry: &RegistryId,
        names: &[String],
    ) -> Result<Option<DeviceId>> {
        let rows: Vec<(DeviceId, String)> = sqlx::query_as(
            "SELECT id, name FROM devices
              WHERE tenant_id = $1 AND registry_id = $2 AND (id = ANY($3) OR name = ANY($3))",
        )
        .bind(tenant)
        .bind(registry)
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        Ok(names.iter().find_map(|name| {
            rows.iter()
                .find(|(id, device_name)| id.as_str() == name || device_name == name)
                .map(|(id, _)| id.clone())
        }))
    }

    /// Just-in-time registration (SPEC §4.1 b): creates the device `name` in `registry`
    /// with `certificate` registered on it, within the tenant's device quota: its own
    /// `max_devices` override, or `default_max_devices` (the configured default, as the
    /// API's device creation uses). A device of that name created meanwhile is
    /// `Conflict { field: "name" }`; the certificate registered meanwhile is
    /// `Conflict { field: "fingerprint" }`; a full quota is `Conflict { field: "max_devices" }`.
    pub async fn register_device_just_in_time(
        &self,
        tenant: &TenantId,
        registry: &RegistryId,
        name: &str,
        certificate: &NewCertificate,
        default_max_devices: u64,
    ) -> Result<DeviceId> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM devices d WHERE d.tenant_id = t.id),
                    CASE WHEN jsonb_typeof(t.quotas -> 'max_devices') = 'number'
                         THEN (t.quotas ->> 'max_devices')::numeric::bigint END
               FROM tenants t WHERE t.id = $1 FOR UPDATE",
        )
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        let (count, max) = row.ok_or(StoreError::NotFound)?;
        let default = i64::try_from(default_max_devices).unwrap_or(i64::MAX);
        if count >= max.unwrap_or(default) {
            return Err(StoreError::Conflict {
                field: "max_devices",
            });
        }
        let id = DeviceId::generate();
        sqlx::query(
            "INSERT INTO devices (id, tenant_id, registry_id, name, description)
             VALUES ($1, $2, $3, $4, 'registered just in time by its certificate')",
        )
        .bind(&id)
        .bind(tenant)
        .bind(registry)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::on_constraint(e, &[("devices_registry_id_name_key", "name")]))?;
        insert_certificate(&mut tx, tenant, "device_id", id.as_str(), certificate).await?;
        notify::commit_principals(tx, tenant).await?;
        Ok(id)
    }
}

async fn insert_certificate(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    column: &'static str,
    owner_id: &str,
    new: &NewCertificate,
) -> Result<CertificateMeta> {
    sqlx::query_as(&format!(
        "INSERT INTO certificates
             (fingerprint, tenant_id, {column}, pem, subject, issuer, not_before, not_after,
              ca_certificate_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {CERTIFICATE_COLUMNS}"
    ))
    .bind(&new.fingerprint)
    .bind(tenant)
    .bind(owner_id)
    .bind(&new.pem)
    .bind(&new.subject)
    .bind(&new.issuer)
    .bind(new.not_before)
    .bind(new.not_after)
    .bind(&new.ca_certificate_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| StoreError::on_constraint(e, &[("certificates_pkey", "fingerprint")]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{tests::tenant_with_registry, NewDevice};
    use std::collections::BTreeMap;

    fn certificate(fingerprint: &str) -> NewCertificate {
        NewCertificate {
            fingerprint: fingerprint.into(),
            pem: "-----BEGIN CERTIFICATE-----".into(),
            subject: "CN=d".into(),
            issuer: "CN=d".into(),
            not_before: Utc::now(),
            not_after: Utc::now(),
            ca_certificate_id: None,
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn certificates_are_per_tenant_unique_and_revocable(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg) = tenant_with_registry(&store, "a").await;
        let (b, _) = tenant_with_registry(&store, "b").await;
        let new = NewDevice {
            name: "d".into(),
            description: String::new(),
            labels: BTreeMap::new(),
        };
        let dev = store.create_device(&a, &reg, &new).await.unwrap();
        let owner = PasswordOwner::Device(&dev.id);
        assert!(matches!(
            store
                .create_certificate(&b, owner, &certificate("f1"))
                .await,
            Err(StoreError::NotFound)
        ));
        let meta = store
            .create_certificate(&a, owner, &certificate("f1"))
            .await
            .unwrap();
        assert_eq!(meta.status, "active");
        assert!(matches!(
            store
                .create_certificate(&a, PasswordOwner::Registry(&reg), &certificate("f1"))
                .await,
            Err(StoreError::Conflict {
                field: "fingerprint"
            })
        ));
        let found = store.find_certificate("f1").await.unwrap().unwrap();
        assert_eq!(found.owner_id, dev.id.as_str());
        assert!(found.active);
        assert_eq!(found.ca_active, None);

        assert!(matches!(
            store.revoke_certificate(&b, owner, "f1").await,
            Err(StoreError::NotFound)
        ));
        store.revoke_certificate(&a, owner, "f1").await.unwrap();
        assert!(!store.find_certificate("f1").await.unwrap().unwrap().active);
        let page = store
            .list_certificates(&a, owner, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(page.items[0].status, "revoked");
        assert!(page.items[0].revoked_at.is_some());
        assert!(matches!(
            store
                .list_certificates(&b, owner, &PageRequest::default())
                .await,
            Err(StoreError::NotFound)
        ));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn deleting_a_ca_removes_what_it_registered(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg) = tenant_with_registry(&store, "a").await;
        let ca = store
            .create_ca_certificate(
                &a,
                &reg,
                &NewCaCertificate {
                    fingerprint: "ca1".into(),
                    pem: "pem".into(),
                    subject: "CN=ca".into(),
                    not_before: Utc::now(),
                    not_after: Utc::now() + chrono::Duration::days(1),
                    auto_register: true,
                    private_key_pem: Some("key".into()),
                },
            )
            .await
            .unwrap();
        assert!(ca.service_managed);
        assert_eq!(store.trusted_cas(&["CN=ca".into()]).await.unwrap().len(), 1);
        assert_eq!(
            store.issuing_ca(&a, &reg).await.unwrap().map(|c| c.id),
            Some(ca.id.clone())
        );
        let mut cert = certificate("f2");
        cert.ca_certificate_id = Some(ca.id.clone());
        let dev = store
            .register_device_just_in_time(&a, &reg, "jit", &cert, 100)
            .await
            .unwrap();
        assert_eq!(
            store
                .device_named(&a, &reg, &["nope".into(), "jit".into()])
                .await
                .unwrap(),
            Some(dev.clone())
        );
        assert_eq!(
            store
                .find_certificate("f2")
                .await
                .unwrap()
                .unwrap()
                .ca_active,
            Some(true)
        );
        store.delete_ca_certificate(&a, &reg, &ca.id).await.unwrap();
        assert!(store.find_certificate("f2").await.unwrap().is_none());
        assert!(!store.ca_certificate_active(&a, &ca.id).await.unwrap());
        assert!(store
            .trusted_cas(&["CN=ca".into()])
            .await
            .unwrap()
            .is_empty());
    }
}
