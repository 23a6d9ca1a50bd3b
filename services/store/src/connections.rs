//! Device connection status (SPEC §6.3), written by brokers in batches.

use crate::{DeviceId, Result, Store, TenantId};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// A device connected or disconnected. `connected_at` identifies the connection, so that
/// the disconnect of a connection that was taken over does not mark the device offline
/// while its new connection is up.
#[derive(Clone, Debug)]
pub enum ConnectionEvent {
    Connected {
        tenant_id: TenantId,
        device_id: DeviceId,
        connected_at: DateTime<Utc>,
        protocol_version: String,
        client_address: String,
    },
    Disconnected {
        tenant_id: TenantId,
        device_id: DeviceId,
        connected_at: DateTime<Utc>,
        disconnected_at: DateTime<Utc>,
        last_activity_at: DateTime<Utc>,
        reason: String,
    },
}

/// A device's row as the batch leaves it, from the batch's first connect of the device on.
/// `disconnected_at` is `None` while no disconnect of the batch matched: the stored value
/// stays.
struct Row<'a> {
    tenant_id: &'a TenantId,
    device_id: &'a DeviceId,
    online: bool,
    connected_at: DateTime<Utc>,
    disconnected_at: Option<DateTime<Utc>>,
    last_activity_at: DateTime<Utc>,
    protocol_version: &'a str,
    client_address: &'a str,
    disconnect_reason: Option<&'a str>,
}

/// A disconnect that comes before any connect of its device in the batch: whether it
/// applies depends on the stored row's `connected_at`.
struct StoredDisconnect<'a> {
    tenant_id: &'a TenantId,
    device_id: &'a DeviceId,
    connected_at: DateTime<Utc>,
    disconnected_at: DateTime<Utc>,
    last_activity_at: DateTime<Utc>,
    reason: &'a str,
}

/// What a batch of events does to the stored rows, in two sets: the disconnects matched
/// against the stored rows (at most one per device and connection, the batch's last), then
/// the rows of the devices that connected in the batch. Applying the first set, then the
/// second, leaves every row as applying the events one by one in order would.
struct Folded<'a> {
    stored_disconnects: Vec<StoredDisconnect<'a>>,
    rows: Vec<Row<'a>>,
}

fn fold(events: &[ConnectionEvent]) -> Folded<'_> {
    let mut stored_disconnects: Vec<StoredDisconnect<'_>> = Vec::new();
    let mut disconnect_index: HashMap<(&TenantId, &DeviceId, DateTime<Utc>), usize> =
        HashMap::new();
    let mut rows: Vec<Row<'_>> = Vec::new();
    let mut row_index: HashMap<(&TenantId, &DeviceId), usize> = HashMap::new();
    for event in events {
        match event {
            ConnectionEvent::Connected {
                tenant_id,
                device_id,
                connected_at,
                protocol_version,
                client_address,
            } => {
                // A connect overwrites everything but `disconnected_at`, which a disconnect
                // earlier in the batch (of this connection or of a stored one) may have set.
                let key = (tenant_id, device_id);
                let earlier = row_index.get(&key).and_then(|&i| rows.get(i));
                let row = Row {
                    tenant_id,
                    device_id,
                    online: true,
                    connected_at: *connected_at,
                    disconnected_at: earlier.and_then(|row| row.disconnected_at),
                    last_activity_at: *connected_at,
                    protocol_version,
                    client_address,
                    disconnect_reason: None,
                };
                match row_index.get(&key).and_then(|&i| rows.get_mut(i)) {
                    Some(slot) => *slot = row,
                    None => {
                        row_index.insert(key, rows.len());
                        rows.push(row);
                    }
                }
            }
            ConnectionEvent::Disconnected {
                tenant_id,
                device_id,
                connected_at,
                disconnected_at,
                last_activity_at,
                reason,
            } => match row_index.get(&(tenant_id, device_id)).copied() {
                Some(i) => {
                    // The device connected earlier in the batch: the disconnect applies only
                    // to the connection the row now holds.
                    if let Some(row) = rows.get_mut(i).filter(|r| r.connected_at == *connected_at) {
                        row.online = false;
                        row.disconnected_at = Some(*disconnected_at);
                        row.last_activity_at = *last_activity_at;
                        row.disconnect_reason = Some(reason);
                    }
                }
                None => {
                    let disconnect = StoredDisconnect {
                        tenant_id,
                        device_id,
                        connected_at: *connected_at,
                        disconnected_at: *disconnected_at,
                        last_activity_at: *last_activity_at,
                        reason,
                    };
                    match disconnect_index
                        .get(&(tenant_id, device_id, *connected_at))
                        .and_then(|&i| stored_disconnects.get_mut(i))
                    {
                        Some(slot) => *slot = disconnect,
                        None => {
                            disconnect_index.insert(
                                (tenant_id, device_id, *connected_at),
                                stored_disconnects.len(),
                            );
                            stored_disconnects.push(disconnect);
                        }
                    }
                }
            },
        }
    }
    Folded {
        stored_disconnects,
        rows,
    }
}

impl Store {
    /// Applies `events` as if one by one in order, in one transaction of at most two
    /// statements whatever the number of events (a reconnect storm is not a statement per
    /// connection). Events of devices deleted meanwhile are skipped, as are events whose
    /// tenant does not own the device.
    pub async fn record_connection_events(&self, events: &[ConnectionEvent]) -> Result<()> {
        let Folded {
            stored_disconnects,
            mut rows,
        } = fold(events);
        if stored_disconnects.is_empty() && rows.is_empty() {
            return Ok(());
        }
        // Rows are locked in device order, so that two brokers writing the same devices
        // cannot deadlock each other.
        rows.sort_by(|a, b| a.device_id.cmp(b.device_id));
        let mut tx = self.pool.begin().await?;
        if !stored_disconnects.is_empty() {
            let n = stored_disconnects.len();
            let (
                mut tenants,
                mut devices,
                mut connected,
                mut disconnected,
                mut active,
                mut reasons,
            ) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for d in &stored_disconnects {
                tenants.push(d.tenant_id.as_str());
                devices.push(d.device_id.as_str());
                connected.push(d.connected_at);
                disconnected.push(d.disconnected_at);
                active.push(d.last_activity_at);
                reasons.push(d.reason);
            }
            sqlx::query(
                "UPDATE device_connections AS c
                    SET online = false, disconnected_at = e.disconnected_at,
                        last_activity_at = e.last_activity_at, disconnect_reason = e.reason
                   FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                               $5::timestamptz[], $6::text[])
                        AS e(tenant_id, device_id, connected_at, disconnected_at, last_activity_at, reason)
                  WHERE c.tenant_id = e.tenant_id AND c.device_id = e.device_id
                    AND c.connected_at = e.connected_at",
            )
            .bind(&tenants)
            .bind(&devices)
            .bind(&connected)
            .bind(&disconnected)
            .bind(&active)
            .bind(&reasons)
            .execute(&mut *tx)
            .await?;
        }
        if !rows.is_empty() {
            let n = rows.len();
            let mut devices = Vec::with_capacity(n);
            let mut tenants = Vec::with_capacity(n);
            let mut online = Vec::with_capacity(n);
            let mut connected = Vec::with_capacity(n);
            let mut disconnected = Vec::with_capacity(n);
            let mut active = Vec::with_capacity(n);
            let mut protocols = Vec::with_capacity(n);
            let mut addresses = Vec::with_capacity(n);
            let mut reasons = Vec::with_capacity(n);
            for row in &rows {
                devices.push(row.device_id.as_str());
                tenants.push(row.tenant_id.as_str());
                online.push(row.online);
                connected.push(row.connected_at);
                disconnected.push(row.disconnected_at);
                active.push(row.last_activity_at);
                protocols.push(row.protocol_version);
                addresses.push(row.client_address);
                reasons.push(row.disconnect_reason);
            }
            sqlx::query(
                "INSERT INTO device_connections (device_id, tenant_id, online, connected_at,
                                                 disconnected_at, last_activity_at,
                                                 protocol_version, client_address, disconnect_reason)
                 SELECT e.* FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::timestamptz[],
                                        $5::timestamptz[], $6::timestamptz[], $7::text[],
                                        $8::text[], $9::text[])
                          AS e(device_id, tenant_id, online, connected_at, disconnected_at,
                               last_activity_at, protocol_version, client_address, disconnect_reason)
                  WHERE EXISTS (SELECT 1 FROM devices d WHERE d.tenant_id = e.tenant_id AND d.id = e.device_id)
                 ON CONFLICT (device_id) DO UPDATE
                    SET online = EXCLUDED.online, connected_at = EXCLUDED.connected_at,
                        disconnected_at = COALESCE(EXCLUDED.disconnected_at,
                                                   device_connections.disconnected_at),
                        last_activity_at = EXCLUDED.last_activity_at,
                        protocol_version = EXCLUDED.protocol_version,
                        client_address = EXCLUDED.client_address,
                        disconnect_reason = EXCLUDED.disconnect_reason
                  WHERE device_connections.tenant_id = EXCLUDED.tenant_id",
            )
            .bind(&devices)
            .bind(&tenants)
            .bind(&online)
            .bind(&connected)
            .bind(&disconnected)
            .bind(&active)
            .bind(&protocols)
            .bind(&addresses)
            .bind(&reasons)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::tests::tenant_with_registry;
    use crate::RegistryId;
    use chrono::Duration;

    /// Applies one event with a statement of its own, in order: what a batch must be
    /// equivalent to.
    async fn apply_one_by_one(store: &Store, events: &[ConnectionEvent]) {
        for event in events {
            match event {
                ConnectionEvent::Connected {
                    tenant_id,
                    device_id,
                    connected_at,
                    protocol_version,
                    client_address,
                } => {
                    sqlx::query(
                        "INSERT INTO device_connections (device_id, tenant_id, online, connected_at,
                                                         last_activity_at, protocol_version, client_address)
                         SELECT $1, $2, true, $3, $3, $4, $5
                          WHERE EXISTS (SELECT 1 FROM devices WHERE tenant_id = $2 AND id = $1)
                         ON CONFLICT (device_id) DO UPDATE
                            SET online = true, connected_at = EXCLUDED.connected_at,
                                last_activity_at = EXCLUDED.last_activity_at,
                                protocol_version = EXCLUDED.protocol_version,
                                client_address = EXCLUDED.client_address, disconnect_reason = NULL",
                    )
                    .bind(device_id)
                    .bind(tenant_id)
                    .bind(connected_at)
                    .bind(protocol_version)
                    .bind(client_address)
                    .execute(store.pool())
                    .await
                    .unwrap();
                }
                ConnectionEvent::Disconnected {
                    tenant_id,
                    device_id,
                    connected_at,
                    disconnected_at,
                    last_activity_at,
                    reason,
                } => {
                    sqlx::query(
                        "UPDATE device_connections
                            SET online = false, disconnected_at = $3, last_activity_at = $4,
                                disconnect_reason = $5
                          WHERE tenant_id = $1 AND device_id = $2 AND connected_at = $6",
                    )
                    .bind(tenant_id)
                    .bind(device_id)
                    .bind(disconnected_at)
                    .bind(last_activity_at)
                    .bind(reason)
                    .bind(connected_at)
                    .execute(store.pool())
                    .await
                    .unwrap();
                }
            }
        }
    }

    type StoredRow = (
        bool,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<String>,
        Option<String>,
    );

    async fn row(store: &Store, device: &DeviceId) -> Option<StoredRow> {
        sqlx::query_as(
            "SELECT online, connected_at, disconnected_at, last_activity_at, protocol_version,
                    client_address, disconnect_reason
               FROM device_connections WHERE device_id = $1",
        )
        .bind(device)
        .fetch_optional(store.pool())
        .await
        .unwrap()
    }

    async fn devices(
        store: &Store,
        tenant: &TenantId,
        registry: &RegistryId,
        n: usize,
    ) -> Vec<DeviceId> {
        let ids: Vec<DeviceId> = (0..n).map(|_| DeviceId::generate()).collect();
        let names: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
        sqlx::query(
            "INSERT INTO devices (id, tenant_id, registry_id, name)
             SELECT id, $2, $3, id FROM UNNEST($1::text[]) AS d(id)",
        )
        .bind(&names)
        .bind(tenant)
        .bind(registry)
        .execute(store.pool())
        .await
        .unwrap();
        ids
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() + Duration::seconds(seconds)
    }

    /// One step of a sequence: a connect or a disconnect of connection 1 or 2.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Connect(i64),
        Disconnect(i64),
    }

    fn event(tenant: &TenantId, device: &DeviceId, step: Step, position: i64) -> ConnectionEvent {
        match step {
            Step::Connect(n) => ConnectionEvent::Connected {
                tenant_id: tenant.clone(),
                device_id: device.clone(),
                connected_at: at(n),
                protocol_version: format!("v{n}"),
                client_address: format!("10.0.0.{n}:1883"),
            },
            Step::Disconnect(n) => ConnectionEvent::Disconnected {
                tenant_id: tenant.clone(),
                device_id: device.clone(),
                connected_at: at(n),
                disconnected_at: at(100 + position),
                last_activity_at: at(200 + position),
                reason: format!("reason {position}"),
            },
        }
    }

    /// Every sequence of up to four connects and disconnects of two connections (takeovers,
    /// connect → disconnect → connect, disconnects of a connection taken over, repeats),
    /// from no row, a row of connection 1 online and a row of another connection: one batch
    /// of all of them, interleaved across devices, leaves each row exactly as its events
    /// applied one by one do.
    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_batch_leaves_every_row_as_its_events_one_by_one_would(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (tenant, registry) = tenant_with_registry(&store, "a").await;
        let alphabet = [
            Step::Connect(1),
            Step::Connect(2),
            Step::Disconnect(1),
            Step::Disconnect(2),
        ];
        let mut sequences: Vec<Vec<Step>> = vec![Vec::new()];
        let mut shorter: Vec<Vec<Step>> = vec![Vec::new()];
        for _ in 0..4 {
            shorter = shorter
                .iter()
                .flat_map(|s| {
                    alphabet.iter().map(move |step| {
                        let mut longer = s.clone();
                        longer.push(*step);
                        longer
                    })
                })
                .collect();
            sequences.extend(shorter.iter().cloned());
        }
        // Stored before the batch: nothing, connection 1 online, or connection 0 online.
        let before = [None, Some(1), Some(0)];
        let cases: Vec<(Option<i64>, &Vec<Step>)> = before
            .iter()
            .flat_map(|b| sequences.iter().map(move |s| (*b, s)))
            .collect();
        let batched = devices(&store, &tenant, &registry, cases.len()).await;
        let reference = devices(&store, &tenant, &registry, cases.len()).await;

        let mut earlier = Vec::new();
        for (i, (stored, _)) in cases.iter().enumerate() {
            if let Some(n) = stored {
                for device in [&batched[i], &reference[i]] {
                    earlier.push(event(&tenant, device, Step::Connect(*n), 0));
                }
            }
        }
        apply_one_by_one(&store, &earlier).await;

        let mut batch = Vec::new();
        let mut one_by_one = Vec::new();
        for position in 0..4 {
            for (i, (_, steps)) in cases.iter().enumerate() {
                if let Some(step) = steps.get(position) {
                    let position = position as i64;
                    batch.push(event(&tenant, &batched[i], *step, position));
                    one_by_one.push(event(&tenant, &reference[i], *step, position));
                }
            }
        }
        store.record_connection_events(&batch).await.unwrap();
        apply_one_by_one(&store, &one_by_one).await;

        let mut offline = 0;
        for (i, case) in cases.iter().enumerate() {
            let expected = row(&store, &reference[i]).await;
            offline += usize::from(expected.as_ref().is_some_and(|r| !r.0));
            assert_eq!(row(&store, &batched[i]).await, expected, "{case:?}");
        }
        assert!(offline > 0, "some sequences end offline");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn events_of_deleted_devices_or_of_another_tenant_are_skipped(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, registry) = tenant_with_registry(&store, "a").await;
        let (b, _) = tenant_with_registry(&store, "b").await;
        let ids = devices(&store, &a, &registry, 2).await;
        let (one, two) = (&ids[0], &ids[1]);
        store
            .record_connection_events(&[event(&a, one, Step::Connect(1), 0)])
            .await
            .unwrap();
        let stored = row(&store, one).await;
        assert!(stored.as_ref().is_some_and(|r| r.0), "online");

        let deleted = DeviceId::generate();
        store
            .record_connection_events(&[
                event(&a, &deleted, Step::Connect(1), 0),
                event(&b, one, Step::Disconnect(1), 1),
                event(&b, two, Step::Connect(1), 2),
                event(&a, &deleted, Step::Disconnect(1), 3),
                event(&a, two, Step::Connect(2), 4),
            ])
            .await
            .unwrap();
        assert_eq!(row(&store, &deleted).await, None);
        assert_eq!(
            row(&store, one).await,
            stored,
            "another tenant's disconnect"
        );
        let two_row = row(&store, two)
            .await
            .expect("the device of the right tenant");
        assert_eq!(two_row.1, Some(at(2)));
        assert_eq!(two_row.4.as_deref(), Some("v2"));

        store
            .record_connection_events(&[event(&b, two, Step::Connect(3), 0)])
            .await
            .unwrap();
        assert_eq!(
            row(&store, two).await.map(|r| r.1),
            Some(Some(at(2))),
            "another tenant's connect does not take the row over"
        );
        assert!(store.record_connection_events(&[]).await.is_ok());
    }
}
