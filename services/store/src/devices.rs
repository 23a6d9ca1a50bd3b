//! Devices (SPEC §2): each belongs to one registry of a tenant; its id is also its MQTT
//! client id and username.

use crate::filters::{self, ListFilter};
use crate::notify;
use crate::registries::missing_tenant_is_not_found;
use crate::tenants::{Page, PageRequest};
use crate::versions::{self, Versioned, BUMP};
use crate::{DeviceId, RegistryId, Result, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use std::collections::BTreeMap;

/// What it takes to create a device; the caller has validated every field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDevice {
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
}

/// Whether a device may connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceStatus {
    Enabled,
    Disabled,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Enabled => "enabled",
            DeviceStatus::Disabled => "disabled",
        }
    }
}

/// A change to a device; `None` fields stay as they are. The caller has validated every
/// field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub status: Option<DeviceStatus>,
}

/// The connection status of a device (SPEC §6.3), as the brokers last wrote it; all
/// `None`/`false` for a device that never connected.
#[derive(Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceConnection {
    pub online: bool,
    pub connected_at: Option<DateTime<Utc>>,
    pub disconnected_at: Option<DateTime<Utc>>,
    pub last_activity_at: Option<DateTime<Utc>>,
    pub protocol_version: Option<String>,
    pub client_address: Option<String>,
    pub disconnect_reason: Option<String>,
}

/// A device of a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub tenant_id: TenantId,
    pub registry_id: RegistryId,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub status: DeviceStatus,
    pub created_at: DateTime<Utc>,
    /// The version of the resource: when it last changed (see `If-Match` in the API).
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: DeviceId,
    tenant_id: TenantId,
    registry_id: RegistryId,
    name: String,
    description: String,
    labels: Json<BTreeMap<String, String>>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<DeviceRow> for Device {
    fn from(row: DeviceRow) -> Device {
        Device {
            id: row.id,
            tenant_id: row.tenant_id,
            registry_id: row.registry_id,
            name: row.name,
            description: row.description,
            labels: row.labels.0,
            // The column's CHECK constraint admits only the two values.
            status: if row.status == "disabled" {
                DeviceStatus::Disabled
            } else {
                DeviceStatus::Enabled
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const COLUMNS: &str =
    "id, tenant_id, registry_id, name, description, labels, status, created_at, updated_at";

impl Store {
    /// Creates an enabled device in the registry `registry` of `tenant`. An unknown
    /// registry (or one of another tenant) is `NotFound`; a name already used in the
    /// registry is `Conflict { field: "name" }`.
    pub async fn create_device(
        &self,
        tenant: &TenantId,
        registry: &RegistryId,
        new: &NewDevice,
    ) -> Result<Device> {
        self.create_device_within(tenant, registry, new, None).await
    }

    /// [`Store::create_device`], refused with `Conflict { field: "max_devices" }` when the
    /// tenant already has `max_devices` devices. The tenant row is locked while counting,
    /// so concurrent creations cannot overshoot the limit together.
    pub async fn create_device_within(
        &self,
        tenant: &TenantId,
        registry: &RegistryId,
        new: &NewDevice,
        max_devices: Option<u64>,
    ) -> Result<Device> {
        let id = DeviceId::generate();
        let mut tx = self.pool.begin().await?;
        if let Some(max) = max_devices {
            let count: Option<i64> = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM devices d WHERE d.tenant_id = t.id)
                   FROM tenants t WHERE t.id = $1 FOR UPDATE",
            )
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
            let count = count.ok_or(StoreError::NotFound)?;
            if u64::try_from(count).unwrap_or(0) >= max {
                return Err(StoreError::Conflict {
                    field: "max_devices",
                });
            }
        }
        let row: DeviceRow = sqlx::query_as(&format!(
            "INSERT INTO devices (id, tenant_id, registry_id, name, description, labels)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
        ))
        .bind(&id)
        .bind(tenant)
        .bind(registry)
        .bind(&new.name)
        .bind(&new.description)
        .bind(Json(&new.labels))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::on_constraint(
                e,
                &[
                    ("devices_registry_id_name_key", "name"),
                    ("devices_tenant_id_registry_id_fkey", "tenant_id"),
                ],
            )
        })
        .map_err(missing_tenant_is_not_found)?;
        notify::commit_principals(tx, tenant).await?;
        Ok(row.into())
    }

    /// The device `id` of `tenant`, or `NotFound`.
    pub async fn get_device(&self, tenant: &TenantId, id: &DeviceId) -> Result<Device> {
        let row: Option<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM devices WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Device::from).ok_or(StoreError::NotFound)
    }

    /// The device `id` of `tenant` with its connection status, or `NotFound`.
    pub async fn get_device_with_connection(
        &self,
        tenant: &TenantId,
        id: &DeviceId,
    ) -> Result<(Device, DeviceConnection)> {
        #[derive(sqlx::FromRow)]
        struct Joined {
            #[sqlx(flatten)]
            device: DeviceRow,
            online: Option<bool>,
            connected_at: Option<DateTime<Utc>>,
            disconnected_at: Option<DateTime<Utc>>,
            last_activity_at: Option<DateTime<Utc>>,
            protocol_version: Option<String>,
            client_address: Option<String>,
            disconnect_reason: Option<String>,
        }
        let row: Option<Joined> = sqlx::query_as(
            "SELECT d.id, d.tenant_id, d.registry_id, d.name, d.description, d.labels, d.status,
                    d.created_at, d.updated_at, c.online, c.connected_at, c.disconnected_at, c.last_activity_at,
                    c.protocol_version, c.client_address, c.disconnect_reason
               FROM devices d
               LEFT JOIN device_connections c ON c.tenant_id = d.tenant_id AND c.device_id = d.id
              WHERE d.tenant_id = $1 AND d.id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or(StoreError::NotFound)?;
        let connection = DeviceConnection {
            online: row.online.unwrap_or(false),
            connected_at: row.connected_at,
            disconnected_at: row.disconnected_at,
            last_activity_at: row.last_activity_at,
            protocol_version: row.protocol_version,
            client_address: row.client_address,
            disconnect_reason: row.disconnect_reason,
        };
        Ok((row.device.into(), connection))
    }

    /// A page of the devices of the registry `registry` of `tenant` that `filter` keeps,
    /// ordered by id; an unknown registry is `NotFound` rather than an empty list.
    pub async fn list_devices(
        &self,
        tenant: &TenantId,
        registry: &RegistryId,
        filter: &ListFilter,
        page: &PageRequest,
    ) -> Result<Page<Device>> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM registries WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(registry)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let rows: Vec<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM devices
              WHERE tenant_id = $1 AND registry_id = $2 AND id > $3{} ORDER BY id LIMIT $4",
            filters::condition(5, Some(6), Some(7))
        ))
        .bind(tenant)
        .bind(registry)
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .bind(filter.name_prefix.as_deref())
        .bind(filter.label_json())
        .bind(filter.status)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let rows = rows.into_iter().map(Device::from).collect();
        Ok(page.page(rows, |d: &Device| d.id.as_str()))
    }

    /// Applies `update` to the device `id` of `tenant`. A name already used in the
    /// registry is `Conflict { field: "name" }`. Notifies [`Change::Principals`](notify::Change::Principals), so that
    /// brokers disconnect a device that was just disabled. A change that changes nothing
    /// keeps the version.
    pub async fn update_device(
        &self,
        tenant: &TenantId,
        id: &DeviceId,
        update: &DeviceUpdate,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<Device> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Devices, tenant, id.as_str(), if_match).await?;
        let row: Option<DeviceRow> = sqlx::query_as(&format!(
            "UPDATE devices SET name = COALESCE($3, name),
                    description = COALESCE($4, description), labels = COALESCE($5, labels),
                    status = COALESCE($6, status), updated_at = {BUMP}
              WHERE tenant_id = $1 AND id = $2
                AND (COALESCE($3, name), COALESCE($4, description), COALESCE($5, labels),
                     COALESCE($6, status))
                    IS DISTINCT FROM (name, description, labels, status)
             RETURNING {COLUMNS}"
        ))
        .bind(tenant)
        .bind(id)
        .bind(update.name.as_deref())
        .bind(update.description.as_deref())
        .bind(update.labels.as_ref().map(Json))
        .bind(update.status.map(DeviceStatus::as_str))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| StoreError::on_constraint(e, &[("devices_registry_id_name_key", "name")]))?;
        let Some(row) = row else {
            // Nothing to change, or no such device.
            let row: Option<DeviceRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM devices WHERE tenant_id = $1 AND id = $2"
            ))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            return row.map(Device::from).ok_or(StoreError::NotFound);
        };
        notify::commit_principals(tx, tenant).await?;
        Ok(row.into())
    }

    /// Deletes the device `id` of `tenant` with its credentials.
    pub async fn delete_device(
        &self,
        tenant: &TenantId,
        id: &DeviceId,
        if_match: Option<&[DateTime<Utc>]>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        versions::check(&mut tx, Versioned::Devices, tenant, id.as_str(), if_match).await?;
        let deleted = sqlx::query("DELETE FROM devices WHERE tenant_id = $1 AND id = $2")
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
pub(crate) mod tests {
    use super::*;
    use crate::registries::NewRegistry;

    pub(crate) async fn tenant_with_registry(
        store: &Store,
        tenant: &str,
    ) -> (TenantId, RegistryId) {
        let tenant = store.create_tenant(tenant).await.unwrap().id;
        let registry = store
            .create_registry(
                &tenant,
                &NewRegistry {
                    name: "r".into(),
                    description: String::new(),
                    labels: BTreeMap::new(),
                    default_policy: true,
                },
            )
            .await
            .unwrap()
            .id;
        (tenant, registry)
    }

    fn device(name: &str) -> NewDevice {
        NewDevice {
            name: name.into(),
            description: "d".into(),
            labels: BTreeMap::new(),
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn device_of_other_tenant_is_not_found(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg_a) = tenant_with_registry(&store, "a").await;
        let (b, reg_b) = tenant_with_registry(&store, "b").await;
        let dev = store
            .create_device(&a, &reg_a, &device("d1"))
            .await
            .unwrap();
        assert_eq!(dev.status, DeviceStatus::Enabled);
        assert_eq!(store.get_device(&a, &dev.id).await.unwrap(), dev);
        assert!(matches!(
            store.get_device(&b, &dev.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.delete_device(&b, &dev.id, None).await,
            Err(StoreError::NotFound)
        ));
        // Neither listing nor creating reaches into another tenant's registry.
        assert!(matches!(
            store
                .list_devices(&b, &reg_a, &ListFilter::default(), &PageRequest::default())
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.create_device(&b, &reg_a, &device("x")).await,
            Err(StoreError::NotFound)
        ));
        assert!(store
            .list_devices(&b, &reg_b, &ListFilter::default(), &PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty());
        let listed = store
            .list_devices(&a, &reg_a, &ListFilter::default(), &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(listed.items, vec![dev.clone()]);
        assert!(matches!(
            store.create_device(&a, &reg_a, &device("d1")).await,
            Err(StoreError::Conflict { field: "name" })
        ));
        store.delete_device(&a, &dev.id, None).await.unwrap();
        assert!(matches!(
            store.get_device(&a, &dev.id).await,
            Err(StoreError::NotFound)
        ));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn registry_with_devices_is_deleted_only_by_force(pool: sqlx::PgPool) {
        use crate::registries::RegistryDeletion;
        let store = Store::from_pool(pool);
        let (a, reg) = tenant_with_registry(&store, "a").await;
        let dev = store.create_device(&a, &reg, &device("d1")).await.unwrap();
        assert_eq!(
            store.delete_registry(&a, &reg, false, None).await.unwrap(),
            RegistryDeletion::HasDevices
        );
        assert!(store.get_device(&a, &dev.id).await.is_ok());
        assert_eq!(
            store.delete_registry(&a, &reg, true, None).await.unwrap(),
            RegistryDeletion::Deleted
        );
        assert!(matches!(
            store.get_device(&a, &dev.id).await,
            Err(StoreError::NotFound)
        ));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn devices_are_updated_filtered_and_show_their_connection(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg) = tenant_with_registry(&store, "a").await;
        let (b, _) = tenant_with_registry(&store, "b").await;
        let mut listener = crate::notify::ChangeListener::connect(&store)
            .await
            .unwrap();
        let one = store.create_device(&a, &reg, &device("one")).await.unwrap();
        let two = store.create_device(&a, &reg, &device("two")).await.unwrap();
        for _ in 0..2 {
            listener.recv().await.unwrap();
        }

        let update = DeviceUpdate {
            labels: Some(BTreeMap::from([("floor".to_owned(), "2".to_owned())])),
            status: Some(DeviceStatus::Disabled),
            ..DeviceUpdate::default()
        };
        assert!(matches!(
            store.update_device(&b, &one.id, &update, None).await,
            Err(StoreError::NotFound)
        ));
        let updated = store
            .update_device(&a, &one.id, &update, None)
            .await
            .unwrap();
        assert_eq!(updated.status, DeviceStatus::Disabled);
        assert_eq!(updated.description, one.description);
        assert_eq!(
            listener.recv().await.unwrap(),
            Some(notify::Change::Principals {
                tenant_id: a.clone()
            })
        );
        let rename = DeviceUpdate {
            name: Some("two".into()),
            ..DeviceUpdate::default()
        };
        assert!(matches!(
            store.update_device(&a, &one.id, &rename, None).await,
            Err(StoreError::Conflict { field: "name" })
        ));

        let disabled = ListFilter {
            status: Some("disabled"),
            ..ListFilter::default()
        };
        let page = store
            .list_devices(&a, &reg, &disabled, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(page.items, vec![updated.clone()]);
        let on_floor = ListFilter {
            label: Some(("floor".into(), "2".into())),
            name_prefix: Some("on".into()),
            ..ListFilter::default()
        };
        let page = store
            .list_devices(&a, &reg, &on_floor, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(page.items, vec![updated.clone()]);
        let enabled = ListFilter {
            status: Some("enabled"),
            ..ListFilter::default()
        };
        let page = store
            .list_devices(&a, &reg, &enabled, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(page.items, vec![two.clone()]);

        let (got, connection) = store.get_device_with_connection(&a, &two.id).await.unwrap();
        assert_eq!(got, two);
        assert_eq!(connection, DeviceConnection::default());
        sqlx::query(
            "INSERT INTO device_connections (device_id, tenant_id, online, connected_at, protocol_version, client_address)
             VALUES ($1, $2, true, now(), '5', '10.0.0.7:51234')",
        )
        .bind(&two.id)
        .bind(&a)
        .execute(store.pool())
        .await
        .unwrap();
        let (_, connection) = store.get_device_with_connection(&a, &two.id).await.unwrap();
        assert!(connection.online);
        assert!(connection.connected_at.is_some());
        assert_eq!(connection.protocol_version.as_deref(), Some("5"));
        assert_eq!(connection.client_address.as_deref(), Some("10.0.0.7:51234"));
        assert!(matches!(
            store.get_device_with_connection(&b, &two.id).await,
            Err(StoreError::NotFound)
        ));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_tenant_at_its_device_quota_gets_no_more(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, reg) = tenant_with_registry(&store, "a").await;
        store
            .create_device_within(&a, &reg, &device("one"), Some(1))
            .await
            .unwrap();
        assert!(matches!(
            store
                .create_device_within(&a, &reg, &device("two"), Some(1))
                .await,
            Err(StoreError::Conflict {
                field: "max_devices"
            })
        ));
        store
            .create_device_within(&a, &reg, &device("two"), Some(2))
            .await
            .unwrap();
    }
}
