//! Device connection status (SPEC §6.3), written by brokers in batches.

use crate::{DeviceId, Result, Store, TenantId};
use chrono::{DateTime, Utc};

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

impl Store {
    /// Applies `events` in order, in one transaction. Events of devices deleted meanwhile
    /// are skipped.
    pub async fn record_connection_events(&self, events: &[ConnectionEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
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
                    .execute(&mut *tx)
                    .await?;
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
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
