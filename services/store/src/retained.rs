//! Retained messages (SPEC §3.1), kept so that they survive a broker restart. Brokers hold
//! them in memory and write changes here in batches, off the publish path.

use crate::{Result, Store, TenantId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
pub use sqlx::types::Json;
use std::collections::HashMap;

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

impl RetainedChange {
    /// The retained message a change is about.
    fn key(&self) -> (&str, &str, &str) {
        match self {
            RetainedChange::Set {
                tenant_id,
                broker_id,
                message,
            } => (tenant_id.as_str(), broker_id, &message.topic),
            RetainedChange::Delete {
                tenant_id,
                broker_id,
                topic,
            } => (tenant_id.as_str(), broker_id, topic),
        }
    }
}

/// The upserts of a batch, one array per column.
#[derive(Default)]
struct SetColumns<'a> {
    tenants: Vec<&'a str>,
    brokers: Vec<&'a str>,
    topics: Vec<&'a str>,
    payloads: Vec<&'a [u8]>,
    qos: Vec<i16>,
    properties: Vec<&'a Json<RetainedProperties>>,
    origins: Vec<Option<&'a str>>,
    expires: Vec<Option<DateTime<Utc>>>,
}

impl<'a> SetColumns<'a> {
    fn push(&mut self, tenant: &'a TenantId, broker: &'a str, message: &'a RetainedMessage) {
        self.tenants.push(tenant.as_str());
        self.brokers.push(broker);
        self.topics.push(&message.topic);
        self.payloads.push(&message.payload);
        self.qos.push(message.qos);
        self.properties.push(&message.properties);
        self.origins.push(message.origin_registry.as_deref());
        self.expires.push(message.expires_at);
    }
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

    /// Applies `changes` as if one by one in order, in one transaction of at most two
    /// statements: only the last change of each topic counts, so the deletions and the
    /// upserts touch different topics. Changes for a deleted tenant are skipped.
    pub async fn apply_retained_changes(&self, changes: &[RetainedChange]) -> Result<()> {
        let mut last = HashMap::new();
        for change in changes {
            last.insert(change.key(), change);
        }
        let mut deleted = (Vec::new(), Vec::new(), Vec::new());
        let mut set = SetColumns::default();
        for change in last.into_values() {
            match change {
                RetainedChange::Delete {
                    tenant_id,
                    broker_id,
                    topic,
                } => {
                    deleted.0.push(tenant_id.as_str());
                    deleted.1.push(broker_id.as_str());
                    deleted.2.push(topic.as_str());
                }
                RetainedChange::Set {
                    tenant_id,
                    broker_id,
                    message,
                } => set.push(tenant_id, broker_id, message),
            }
        }
        let mut tx = self.pool.begin().await?;
        if !deleted.0.is_empty() {
            sqlx::query(
                "DELETE FROM retained_messages AS r
                  USING UNNEST($1::text[], $2::text[], $3::text[]) AS d(tenant_id, broker_id, topic)
                  WHERE r.tenant_id = d.tenant_id AND r.broker_id = d.broker_id AND r.topic = d.topic",
            )
            .bind(&deleted.0)
            .bind(&deleted.1)
            .bind(&deleted.2)
            .execute(&mut *tx)
            .await?;
        }
        if !set.tenants.is_empty() {
            sqlx::query(
                "INSERT INTO retained_messages (tenant_id, broker_id, topic, payload, qos, properties,
                                                origin_registry, expires_at)
                 SELECT m.* FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int2[],
                                        $6::jsonb[], $7::text[], $8::timestamptz[])
                          AS m(tenant_id, broker_id, topic, payload, qos, properties, origin_registry,
                               expires_at)
                  WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.id = m.tenant_id)
                 ON CONFLICT (tenant_id, broker_id, topic) DO UPDATE
                    SET payload = EXCLUDED.payload, qos = EXCLUDED.qos,
                        properties = EXCLUDED.properties,
                        origin_registry = EXCLUDED.origin_registry,
                        expires_at = EXCLUDED.expires_at, updated_at = now()",
            )
            .bind(&set.tenants)
            .bind(&set.brokers)
            .bind(&set.topics)
            .bind(&set.payloads)
            .bind(&set.qos)
            .bind(&set.properties)
            .bind(&set.origins)
            .bind(&set.expires)
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

    /// Applies each change with a statement of its own, in order: what a batch must be
    /// equivalent to.
    async fn apply_one_by_one(store: &Store, changes: &[RetainedChange]) {
        for change in changes {
            match change {
                RetainedChange::Set {
                    tenant_id,
                    broker_id,
                    message,
                } => {
                    sqlx::query(
                        "INSERT INTO retained_messages (tenant_id, broker_id, topic, payload, qos,
                                                        properties, origin_registry, expires_at)
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
                    .execute(store.pool())
                    .await
                    .unwrap();
                }
                RetainedChange::Delete {
                    tenant_id,
                    broker_id,
                    topic,
                } => {
                    sqlx::query(
                        "DELETE FROM retained_messages
                          WHERE tenant_id = $1 AND broker_id = $2 AND topic = $3",
                    )
                    .bind(tenant_id)
                    .bind(broker_id)
                    .bind(topic)
                    .execute(store.pool())
                    .await
                    .unwrap();
                }
            }
        }
    }

    /// The changes a test combines, in namespace `broker` of `tenant`: two versions of topic
    /// `a`, its deletion, and one version and the deletion of topic `b`.
    fn alphabet(tenant: &TenantId, broker: &str) -> Vec<RetainedChange> {
        let message = |topic: &str, payload: &[u8], qos: i16, origin: Option<&str>| {
            RetainedChange::Set {
                tenant_id: tenant.clone(),
                broker_id: broker.to_owned(),
                message: RetainedMessage {
                    topic: topic.to_owned(),
                    payload: payload.to_vec(),
                    qos,
                    properties: Json(RetainedProperties {
                        content_type: (qos > 0).then(|| "text/plain".to_owned()),
                        user_properties: vec![("k".into(), payload.len().to_string())],
                        ..RetainedProperties::default()
                    }),
                    origin_registry: origin.map(str::to_owned),
                    // A fixed instant in the future, the same for the batch and the
                    // reference (2100-01-01).
                    expires_at: (qos == 2)
                        .then(|| DateTime::from_timestamp(4_102_444_800, 0))
                        .flatten(),
                },
            }
        };
        let delete = |topic: &str| RetainedChange::Delete {
            tenant_id: tenant.clone(),
            broker_id: broker.to_owned(),
            topic: topic.to_owned(),
        };
        vec![
            message("a", b"one", 0, None),
            message("a", b"two!", 2, Some("reg_x")),
            delete("a"),
            message("b", b"three", 1, None),
            delete("b"),
        ]
    }

    async fn stored(store: &Store, tenant: &TenantId, broker: &str) -> Vec<RetainedMessage> {
        let mut messages = store.load_retained(tenant, broker).await.unwrap();
        messages.sort_by(|x, y| x.topic.cmp(&y.topic));
        messages
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_batch_of_changes_ends_as_the_changes_applied_one_by_one(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (tenant, _) = tenant_with_registry(&store, "acme").await;
        let mut run = 0;
        // Every sequence of up to three changes, from an empty namespace and from one that
        // holds topic `a` already.
        let mut sequences: Vec<Vec<usize>> = vec![vec![]];
        for _ in 0..3 {
            let longer: Vec<Vec<usize>> = sequences
                .iter()
                .filter(|s| s.len() < 3)
                .flat_map(|s| {
                    (0..5).map(move |c| {
                        let mut next = s.clone();
                        next.push(c);
                        next
                    })
                })
                .collect();
            sequences.extend(longer);
        }
        sequences.sort();
        sequences.dedup();
        assert_eq!(sequences.len(), 1 + 5 + 25 + 125);
        for seeded in [false, true] {
            for sequence in &sequences {
                run += 1;
                let (batch, reference) = (format!("batch-{run}"), format!("reference-{run}"));
                for broker in [&batch, &reference] {
                    if seeded {
                        let seed = alphabet(&tenant, broker).swap_remove(0);
                        store.apply_retained_changes(&[seed]).await.unwrap();
                    }
                }
                let pick = |broker: &str| -> Vec<RetainedChange> {
                    let changes = alphabet(&tenant, broker);
                    sequence.iter().map(|&c| changes[c].clone()).collect()
                };
                store.apply_retained_changes(&pick(&batch)).await.unwrap();
                apply_one_by_one(&store, &pick(&reference)).await;
                assert_eq!(
                    stored(&store, &tenant, &batch).await,
                    stored(&store, &tenant, &reference).await,
                    "sequence {sequence:?}, seeded: {seeded}"
                );
            }
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn changes_of_a_deleted_tenant_are_skipped_and_tenants_stay_apart(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (acme, _) = tenant_with_registry(&store, "acme").await;
        let (beta, _) = tenant_with_registry(&store, "beta").await;
        let (gone, _) = tenant_with_registry(&store, "gone").await;
        store.delete_tenant(&gone, None).await.unwrap();
        let mut changes = alphabet(&gone, "");
        changes.extend(alphabet(&acme, "").into_iter().take(1));
        changes.extend(alphabet(&beta, "").into_iter().take(2));
        // Deleting beta's topic `a` leaves acme's alone.
        changes.push(alphabet(&beta, "").swap_remove(2));
        store.apply_retained_changes(&changes).await.unwrap();
        let topics = |messages: Vec<RetainedMessage>| -> Vec<(String, Vec<u8>)> {
            messages.into_iter().map(|m| (m.topic, m.payload)).collect()
        };
        assert_eq!(
            topics(stored(&store, &acme, "").await),
            [("a".into(), b"one".to_vec())]
        );
        assert!(stored(&store, &beta, "").await.is_empty());
        assert!(stored(&store, &gone, "").await.is_empty());
        store.apply_retained_changes(&[]).await.unwrap();
    }
}
