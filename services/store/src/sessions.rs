//! Persistent MQTT sessions (SPEC §3.1), kept so that a client resumes its session after a
//! broker restart: subscriptions, QoS 1/2 messages queued or in flight, incoming QoS 2
//! packet ids and the session expiry. Brokers hold sessions in memory and write changes
//! here in batches, off the per-message path.

use crate::retained::RetainedProperties;
use crate::{Result, Store, TenantId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

/// Identifies a session: its namespace (`broker_id` "" for the tenant's registry
/// namespace) and client id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::FromRow)]
pub struct SessionKey {
    pub tenant_id: TenantId,
    pub broker_id: String,
    pub client_id: String,
}

/// One subscription of a session, with its MQTT 5 options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// The filter as the client wrote it (`$share/{group}/…` included).
    pub filter: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<u32>,
}

/// Everything of a session but its messages.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct StoredSession {
    #[sqlx(flatten)]
    pub key: SessionKey,
    pub expiry_secs: i64,
    /// `None` while the session's client is connected.
    pub expires_at: Option<DateTime<Utc>>,
    pub registry_scope: Option<String>,
    pub subscriptions: Json<Vec<StoredSubscription>>,
    pub incoming_qos2: Vec<i32>,
}

/// A QoS 1/2 message of a session, queued or in flight.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct SessionMessage {
    pub seq: i64,
    /// Set once the message was sent and until it is acknowledged.
    pub packet_id: Option<i32>,
    /// 0: PUBACK, 1: PUBREC, 2: PUBCOMP (PUBREL sent).
    pub awaiting: Option<i16>,
    pub topic: String,
    pub payload: Vec<u8>,
    /// The QoS it is delivered with.
    pub qos: i16,
    /// The RETAIN flag as sent.
    pub retain: bool,
    pub subscription_ids: Vec<i64>,
    /// The same MQTT 5 properties a retained message keeps.
    pub properties: Json<RetainedProperties>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A message as loaded, with its session.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct LoadedMessage {
    #[sqlx(flatten)]
    pub key: SessionKey,
    #[sqlx(flatten)]
    pub message: SessionMessage,
}

/// What brokers changed since the last write, already reduced to the final state of each
/// row; applied in the order of the fields.
#[derive(Clone, Debug, Default)]
pub struct SessionBatch {
    /// Sessions that ended, with their messages.
    pub deletes: Vec<SessionKey>,
    /// Sessions created or changed.
    pub saves: Vec<StoredSession>,
    /// New incoming QoS 2 packet ids of sessions.
    pub incoming_qos2: Vec<(SessionKey, Vec<i32>)>,
    /// Messages acknowledged, expired or dropped.
    pub message_deletes: Vec<(SessionKey, i64)>,
    pub message_inserts: Vec<(SessionKey, SessionMessage)>,
    /// Messages sent (packet id) or moved on to the PUBREL stage: (key, seq, packet id,
    /// awaiting).
    pub message_updates: Vec<(SessionKey, i64, i32, i16)>,
}

impl SessionBatch {
    pub fn is_empty(&self) -> bool {
        self.deletes.is_empty()
            && self.saves.is_empty()
            && self.incoming_qos2.is_empty()
            && self.message_deletes.is_empty()
            && self.message_inserts.is_empty()
            && self.message_updates.is_empty()
    }
}

/// What [`Store::load_sessions`] found, and what it discarded to stay within the bounds.
#[derive(Clone, Debug, Default)]
pub struct LoadedSessions {
    pub sessions: Vec<StoredSession>,
    /// Ordered by session and `seq`.
    pub messages: Vec<LoadedMessage>,
    /// Sessions removed: expired, or beyond the per-namespace bound.
    pub sessions_discarded: u64,
    /// Queued messages removed beyond the per-session bound (the oldest first).
    pub messages_dropped: u64,
}

impl Store {
    /// Loads every unexpired session, after deleting expired ones, all but the
    /// `max_per_namespace` sessions of each namespace that expire last, and all but the
    /// `max_queued` newest queued messages of each session (and all but the 65,535 newest
    /// in flight), so that what is read back is bounded like live data.
    pub async fn load_sessions(
        &self,
        max_per_namespace: usize,
        max_queued: usize,
    ) -> Result<LoadedSessions> {
        let max_per_namespace = i64::try_from(max_per_namespace).unwrap_or(i64::MAX);
        let max_queued = i64::try_from(max_queued).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let expired = sqlx::query(
            "DELETE FROM broker_sessions WHERE expires_at <= now() OR (expires_at IS NULL AND expiry_secs = 0)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let excess = sqlx::query(
            "DELETE FROM broker_sessions s
              USING (SELECT tenant_id, broker_id, client_id,
                            row_number() OVER (PARTITION BY tenant_id, broker_id
                                               ORDER BY expires_at DESC NULLS FIRST, client_id) AS rank
                       FROM broker_sessions) r
              WHERE s.tenant_id = r.tenant_id AND s.broker_id = r.broker_id
                AND s.client_id = r.client_id AND r.rank > $1",
        )
        .bind(max_per_namespace)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let dropped = sqlx::query(
            "DELETE FROM broker_session_messages m
              USING (SELECT tenant_id, broker_id, client_id, seq, packet_id IS NULL AS queued,
                            row_number() OVER (PARTITION BY tenant_id, broker_id, client_id, packet_id IS NULL
                                               ORDER BY seq DESC) AS rank
                       FROM broker_session_messages) r
              WHERE m.tenant_id = r.tenant_id AND m.broker_id = r.broker_id
                AND m.client_id = r.client_id AND m.seq = r.seq
                AND r.rank > CASE WHEN r.queued THEN $1 ELSE 65535 END",
        )
        .bind(max_queued)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let sessions = sqlx::query_as(
            "SELECT tenant_id, broker_id, client_id, expiry_secs, expires_at, registry_scope,
                    subscriptions, incoming_qos2
               FROM broker_sessions",
        )
        .fetch_all(&mut *tx)
        .await?;
        let messages = sqlx::query_as(
            "SELECT tenant_id, broker_id, client_id, seq, packet_id, awaiting, topic, payload, qos,
                    retain, subscription_ids, properties, expires_at
               FROM broker_session_messages
              ORDER BY tenant_id, broker_id, client_id, seq",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(LoadedSessions {
            sessions,
            messages,
            sessions_discarded: expired + excess,
            messages_dropped: dropped,
        })
    }

    /// Applies `batch` in one transaction. Rows of deleted tenants, and messages of
    /// sessions that no longer exist, are skipped.
    pub async fn apply_session_batch(&self, batch: &SessionBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for key in &batch.deletes {
            sqlx::query(
                "DELETE FROM broker_sessions WHERE tenant_id = $1 AND broker_id = $2 AND client_id = $3",
            )
            .bind(&key.tenant_id)
            .bind(&key.broker_id)
            .bind(&key.client_id)
            .execute(&mut *tx)
            .await?;
        }
        for session in &batch.saves {
            let key = &session.key;
            sqlx::query(
                "INSERT INTO broker_sessions (tenant_id, broker_id, client_id, expiry_secs, expires_at,
                                              registry_scope, subscriptions, incoming_qos2)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8
                  WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $1)
                 ON CONFLICT (tenant_id, broker_id, client_id) DO UPDATE
                    SET expiry_secs = EXCLUDED.expiry_secs, expires_at = EXCLUDED.expires_at,
                        registry_scope = EXCLUDED.registry_scope,
                        subscriptions = EXCLUDED.subscriptions,
                        incoming_qos2 = EXCLUDED.incoming_qos2, updated_at = now()",
            )
            .bind(&key.tenant_id)
            .bind(&key.broker_id)
            .bind(&key.client_id)
            .bind(session.expiry_secs)
            .bind(session.expires_at)
            .bind(&session.registry_scope)
            .bind(&session.subscriptions)
            .bind(&session.incoming_qos2)
            .execute(&mut *tx)
            .await?;
        }
        for (key, ids) in &batch.incoming_qos2 {
            sqlx::query(
                "UPDATE broker_sessions SET incoming_qos2 = $4, updated_at = now()
                  WHERE tenant_id = $1 AND broker_id = $2 AND client_id = $3",
            )
            .bind(&key.tenant_id)
            .bind(&key.broker_id)
            .bind(&key.client_id)
            .bind(ids)
            .execute(&mut *tx)
            .await?;
        }
        for (key, seq) in &batch.message_deletes {
            sqlx::query(
                "DELETE FROM broker_session_messages
                  WHERE tenant_id = $1 AND broker_id = $2 AND client_id = $3 AND seq = $4",
            )
            .bind(&key.tenant_id)
            .bind(&key.broker_id)
            .bind(&key.client_id)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        for (key, message) in &batch.message_inserts {
            sqlx::query(
                "INSERT INTO broker_session_messages (tenant_id, broker_id, client_id, seq, packet_id,
                                                      awaiting, topic, payload, qos, retain,
                                                      subscription_ids, properties, expires_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
                  WHERE EXISTS (SELECT 1 FROM broker_sessions
                                 WHERE tenant_id = $1 AND broker_id = $2 AND client_id = $3)
                 ON CONFLICT (tenant_id, broker_id, client_id, seq) DO UPDATE
                    SET packet_id = EXCLUDED.packet_id, awaiting = EXCLUDED.awaiting",
            )
            .bind(&key.tenant_id)
            .bind(&key.broker_id)
            .bind(&key.client_id)
            .bind(message.seq)
            .bind(message.packet_id)
            .bind(message.awaiting)
            .bind(&message.topic)
            .bind(&message.payload)
            .bind(message.qos)
            .bind(message.retain)
            .bind(&message.subscription_ids)
            .bind(&message.properties)
            .bind(message.expires_at)
            .execute(&mut *tx)
            .await?;
        }
        for (key, seq, packet_id, awaiting) in &batch.message_updates {
            sqlx::query(
                "UPDATE broker_session_messages SET packet_id = $5, awaiting = $6
                  WHERE tenant_id = $1 AND broker_id = $2 AND client_id = $3 AND seq = $4",
            )
            .bind(&key.tenant_id)
            .bind(&key.broker_id)
            .bind(&key.client_id)
            .bind(seq)
            .bind(packet_id)
            .bind(awaiting)
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

    fn session(tenant: &TenantId, client: &str, expires_in: Option<i64>) -> StoredSession {
        StoredSession {
            key: SessionKey {
                tenant_id: tenant.clone(),
                broker_id: String::new(),
                client_id: client.into(),
            },
            expiry_secs: 3600,
            expires_at: expires_in.map(|secs| Utc::now() + chrono::Duration::seconds(secs)),
            registry_scope: None,
            subscriptions: Json(vec![StoredSubscription {
                filter: "a/#".into(),
                qos: 1,
                no_local: false,
                retain_as_published: true,
                subscription_id: Some(9),
            }]),
            incoming_qos2: vec![3],
        }
    }

    fn message(seq: i64, packet_id: Option<i32>) -> SessionMessage {
        SessionMessage {
            seq,
            packet_id,
            awaiting: packet_id.map(|_| 0),
            topic: "a/b".into(),
            payload: seq.to_string().into_bytes(),
            qos: 1,
            retain: false,
            subscription_ids: vec![9],
            properties: Json(RetainedProperties::default()),
            expires_at: None,
        }
    }

    /// Read back within the live bounds: expired sessions and the sessions of a namespace
    /// beyond the bound that expire first are deleted, and the oldest queued messages
    /// beyond the per-session bound are dropped; in-flight messages are kept.
    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn loading_applies_the_bounds_and_deletes_what_it_drops(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let tenant = store.create_tenant("t").await.unwrap().id;
        let kept = session(&tenant, "kept", None);
        let batch = SessionBatch {
            saves: vec![
                kept.clone(),
                session(&tenant, "later", Some(600)),
                session(&tenant, "sooner", Some(60)),
                session(&tenant, "expired", Some(-1)),
            ],
            message_inserts: [
                message(1, Some(5)),
                message(2, None),
                message(3, None),
                message(4, None),
            ]
            .into_iter()
            .map(|m| (kept.key.clone(), m))
            .collect(),
            ..SessionBatch::default()
        };
        store.apply_session_batch(&batch).await.unwrap();

        let loaded = store.load_sessions(2, 2).await.unwrap();
        let mut clients: Vec<&str> = loaded
            .sessions
            .iter()
            .map(|s| s.key.client_id.as_str())
            .collect();
        clients.sort();
        assert_eq!(clients, ["kept", "later"]);
        assert_eq!(loaded.sessions_discarded, 2);
        assert_eq!(loaded.messages_dropped, 1);
        let seqs: Vec<i64> = loaded.messages.iter().map(|m| m.message.seq).collect();
        assert_eq!(
            seqs,
            [1, 3, 4],
            "the in-flight one and the two newest queued"
        );
        let stored = loaded
            .sessions
            .iter()
            .find(|s| s.key.client_id == "kept")
            .unwrap();
        assert_eq!(stored, &kept);

        let again = store.load_sessions(2, 2).await.unwrap();
        assert_eq!((again.sessions.len(), again.messages.len()), (2, 3));
        assert_eq!((again.sessions_discarded, again.messages_dropped), (0, 0));

        // Deleting a session deletes its messages.
        let batch = SessionBatch {
            deletes: vec![kept.key.clone()],
            ..SessionBatch::default()
        };
        store.apply_session_batch(&batch).await.unwrap();
        let last = store.load_sessions(2, 2).await.unwrap();
        assert_eq!((last.sessions.len(), last.messages.len()), (1, 0));
    }
}
