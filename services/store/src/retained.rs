//! Retained messages (SPEC §3.1), kept so that they survive a broker restart. Brokers hold
//! them in memory and write changes here in batches, off the publish path.

use crate::{Result, Store, TenantId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
pub use sqlx::types::Json;

/// The MQTT 5 properties a retained message keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_indicator: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<(String, String)>,
}

/// A retained message of a namespace.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RetainedMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: i16,
    pub properties: Json<RetainedProperties>,
    pub origin_registry: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// One change to the retained messages of a namespace (`broker_id` "" for the tenant's
/// registry namespace).
#[derive(Clone, Debug)]
pub enum RetainedChange {
    Set {
        tenant_id: TenantId,
        broker_id: String,
        message: RetainedMessage,
    },
    Delete {
        tenant_id: TenantId,
        broker_id: String,
        topic: String,
    },
}

impl Store {
    /// The unexpired retained messages of a namespace.
    pub async fn load_retained(
        &self,
        tenant: &TenantId,
        broker_id: &str,
    ) -> Result<Vec<RetainedMessage>> {
        Ok(sqlx::query_as(
            "SELECT topic, payload, qos, properties, origin_registry, expires_at
               FROM retained_messages
              WHERE tenant_id = $1 AND broker_id = $2 AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(tenant)
        .bind(broker_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies `changes` in order, in one transaction. Changes for a deleted tenant are
    /// skipped.
    pub async fn apply_retained_changes(&self, changes: &[RetainedChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for change in changes {
            match change {
                RetainedChange::Set {
                    tenant_id,
                    broker_id,
                    message,
                } => {
                    sqlx::query(
                        "INSERT INTO retained_messages (tenant_id, broker_id, topic, payload, qos, properties,
                                                        origin_registry, expires_at)
                         SELECT $1, $2, $3, $4, $5, $6, $7, $8
                          WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $1)
                         ON CONFLICT (tenant_id, broker_id, topic) DO UPDATE
                            SET payload = EXCLUDED.payload, qos = EXCLUDED.qos,
                                properties = EXCLUDED.properties,
                                origin_registry = EXCLUDED.origin_registry,
                                expires_at = EXCLUDED.expires_at, updated_at = now()",
                    )
                    .bind(tenant_id)
                    .bind(broker_id)
                    .bind(&message.topic)
                    .bind(&message.payload)
                    .bind(message.qos)
                    .bind(&message.properties)
                    .bind(&message.origin_registry)
                    .bind(message.expires_at)
                    .execute(&mut *tx)
                    .await?;
                }
                RetainedChange::Delete {
                    tenant_id,
                    broker_id,
                    topic,
                } => {
                    sqlx::query("DELETE FROM retained_messages WHERE tenant_id = $1 AND broker_id = $2 AND topic = $3")
                        .bind(tenant_id)
                        .bind(broker_id)
                        .bind(topic)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
