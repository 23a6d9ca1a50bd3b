//! Messages published through the control plane, handed to the brokers through
//! PostgreSQL so that it works whether the api and a broker share a process or not: the
//! api inserts a row and notifies [`CHANNEL`] in one transaction; a broker claims rows
//! with [`Store::claim_api_publishes`] (each row goes to exactly one broker), routes them
//! and, by claiming, deletes them.

use crate::{Result, Store, TenantId};
use chrono::{DateTime, Utc};

/// The channel a new message's id is notified on.
pub const CHANNEL: &str = "iotcore_publishes";

/// A message to publish; the caller has checked the topic is one of the tenant's and the
/// payload is within the size limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApiPublish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub content_type: Option<String>,
}

/// A message published through the control plane, waiting for a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiPublish {
    /// Decimal, increasing in the order the messages were accepted.
    pub id: String,
    pub tenant_id: TenantId,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub content_type: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ApiPublishRow {
    id: i64,
    tenant_id: TenantId,
    topic: String,
    payload: Vec<u8>,
    qos: i16,
    retain: bool,
    content_type: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<ApiPublishRow> for ApiPublish {
    fn from(row: ApiPublishRow) -> ApiPublish {
        ApiPublish {
            id: row.id.to_string(),
            tenant_id: row.tenant_id,
            topic: row.topic,
            payload: row.payload,
            // The column's CHECK constraint keeps it within 0..=2.
            qos: u8::try_from(row.qos).unwrap_or(0),
            retain: row.retain,
            content_type: row.content_type,
            created_at: row.created_at,
        }
    }
}

impl Store {
    /// Queues `message` for the brokers in `tenant` and notifies [`CHANNEL`] with its id,
    /// both in one transaction, so a listener never sees an id whose row is not visible.
    /// Returns the message id.
    pub async fn insert_api_publish(
        &self,
        tenant: &TenantId,
        message: &NewApiPublish,
    ) -> Result<String> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO api_publishes (tenant_id, topic, payload, qos, retain, content_type)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(tenant)
        .bind(&message.topic)
        .bind(&message.payload)
        .bind(i16::from(message.qos))
        .bind(message.retain)
        .bind(message.content_type.as_deref())
        .fetch_one(&mut *tx)
        .await?;
        let id = id.to_string();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Takes up to `limit` queued messages, oldest first, deleting them. Concurrent
    /// brokers skip each other's locked rows, so every message is claimed once.
    pub async fn claim_api_publishes(&self, limit: i64) -> Result<Vec<ApiPublish>> {
        let mut rows: Vec<ApiPublishRow> = sqlx::query_as(
            "DELETE FROM api_publishes WHERE id IN (
                 SELECT id FROM api_publishes ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, tenant_id, topic, payload, qos, retain, content_type, created_at",
        )
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        // RETURNING does not promise an order.
        rows.sort_by_key(|row| row.id);
        Ok(rows.into_iter().map(ApiPublish::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgListener;

    fn message(topic: &str) -> NewApiPublish {
        NewApiPublish {
            topic: topic.into(),
            payload: vec![0, 159, 146, 150],
            qos: 1,
            retain: true,
            content_type: Some("application/octet-stream".into()),
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn published_messages_are_notified_and_claimed_once_in_order(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let tenant = store.create_tenant("a").await.unwrap().id;
        let mut listener = PgListener::connect_with(store.pool()).await.unwrap();
        listener.listen(CHANNEL).await.unwrap();

        let first = store
            .insert_api_publish(&tenant, &message("$devices/x/commands"))
            .await
            .unwrap();
        let second = store
            .insert_api_publish(&tenant, &message("$devices/y/commands"))
            .await
            .unwrap();
        assert_eq!(listener.recv().await.unwrap().payload(), first);
        assert_eq!(listener.recv().await.unwrap().payload(), second);

        let claimed = store.claim_api_publishes(1).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let got = &claimed[0];
        assert_eq!(got.id, first);
        assert_eq!(got.tenant_id, tenant);
        assert_eq!(got.topic, "$devices/x/commands");
        assert_eq!(got.payload, vec![0, 159, 146, 150]);
        assert_eq!(got.qos, 1);
        assert!(got.retain);
        assert_eq!(
            got.content_type.as_deref(),
            Some("application/octet-stream")
        );

        let rest = store.claim_api_publishes(10).await.unwrap();
        assert_eq!(
            rest.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec![second.as_str()]
        );
        assert!(store.claim_api_publishes(10).await.unwrap().is_empty());
        assert!(store.claim_api_publishes(-1).await.unwrap().is_empty());
    }
}
