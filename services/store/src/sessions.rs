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

/// The session keys of a statement, one array per column.
struct KeyColumns<'a> {
    tenants: Vec<&'a str>,
    brokers: Vec<&'a str>,
    clients: Vec<&'a str>,
}

impl<'a> KeyColumns<'a> {
    fn of(keys: impl Iterator<Item = &'a SessionKey>) -> Self {
        let mut columns = KeyColumns {
            tenants: Vec::new(),
            brokers: Vec::new(),
            clients: Vec::new(),
        };
        for key in keys {
            columns.tenants.push(key.tenant_id.as_str());
            columns.brokers.push(&key.broker_id);
            columns.clients.push(&key.client_id);
        }
        columns
    }
}

/// The last of `rows` for each row key (a session, and a message's `seq` or 0), in the order
/// of those last ones: one statement may change a row only once.
fn last_per_row<'a, T>(rows: &'a [T], key: impl Fn(&'a T) -> (&'a SessionKey, i64)) -> Vec<&'a T> {
    let mut last = std::collections::HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        last.insert(key(row), i);
    }
    rows.iter()
        .enumerate()
        .filter(|&(i, row)| last.get(&key(row)) == Some(&i))
        .map(|(_, row)| row)
        .collect()
}

/// A PostgreSQL array literal of integers (`{1,2}`): arrays of arrays of different lengths
/// cannot be bound, so each row's array goes as text and is cast in the statement.
fn array_literal<N: std::fmt::Display>(values: &[N]) -> String {
    let items: Vec<String> = values.iter().map(ToString::to_string).collect();
    format!("{{{}}}", items.join(","))
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

    /// Applies `batch` in one transaction of at most six statements, one per kind of change,
    /// in the order of its fields. Within a kind the last change of a row counts. Rows of
    /// deleted tenants, and messages of sessions that no longer exist, are skipped.
    pub async fn apply_session_batch(&self, batch: &SessionBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if !batch.deletes.is_empty() {
            let keys = KeyColumns::of(batch.deletes.iter());
            sqlx::query(
                "DELETE FROM broker_sessions AS s
                  USING UNNEST($1::text[], $2::text[], $3::text[]) AS d(tenant_id, broker_id, client_id)
                  WHERE s.tenant_id = d.tenant_id AND s.broker_id = d.broker_id
                    AND s.client_id = d.client_id",
            )
            .bind(&keys.tenants)
            .bind(&keys.brokers)
            .bind(&keys.clients)
            .execute(&mut *tx)
            .await?;
        }
        let saves = last_per_row(&batch.saves, |s| (&s.key, 0));
        if !saves.is_empty() {
            let keys = KeyColumns::of(saves.iter().map(|s| &s.key));
            sqlx::query(
                "INSERT INTO broker_sessions (tenant_id, broker_id, client_id, expiry_secs, expires_at,
                                              registry_scope, subscriptions, incoming_qos2)
                 SELECT s.tenant_id, s.broker_id, s.client_id, s.expiry_secs, s.expires_at,
                        s.registry_scope, s.subscriptions, s.incoming_qos2::int4[]
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[],
                               $6::text[], $7::jsonb[], $8::text[])
                        AS s(tenant_id, broker_id, client_id, expiry_secs, expires_at,
                             registry_scope, subscriptions, incoming_qos2)
                  WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.id = s.tenant_id)
                 ON CONFLICT (tenant_id, broker_id, client_id) DO UPDATE
                    SET expiry_secs = EXCLUDED.expiry_secs, expires_at = EXCLUDED.expires_at,
                        registry_scope = EXCLUDED.registry_scope,
                        subscriptions = EXCLUDED.subscriptions,
                        incoming_qos2 = EXCLUDED.incoming_qos2, updated_at = now()",
            )
            .bind(&keys.tenants)
            .bind(&keys.brokers)
            .bind(&keys.clients)
            .bind(saves.iter().map(|s| s.expiry_secs).collect::<Vec<_>>())
            .bind(saves.iter().map(|s| s.expires_at).collect::<Vec<_>>())
            .bind(saves.iter().map(|s| s.registry_scope.as_deref()).collect::<Vec<_>>())
            .bind(saves.iter().map(|s| &s.subscriptions).collect::<Vec<_>>())
            .bind(saves.iter().map(|s| array_literal(&s.incoming_qos2)).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let incoming = last_per_row(&batch.incoming_qos2, |(key, _)| (key, 0));
        if !incoming.is_empty() {
            let keys = KeyColumns::of(incoming.iter().map(|(key, _)| key));
            sqlx::query(
                "UPDATE broker_sessions AS s
                    SET incoming_qos2 = u.ids::int4[], updated_at = now()
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
                        AS u(tenant_id, broker_id, client_id, ids)
                  WHERE s.tenant_id = u.tenant_id AND s.broker_id = u.broker_id
                    AND s.client_id = u.client_id",
            )
            .bind(&keys.tenants)
            .bind(&keys.brokers)
            .bind(&keys.clients)
            .bind(
                incoming
                    .iter()
                    .map(|(_, ids)| array_literal(ids))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        }
        if !batch.message_deletes.is_empty() {
            let keys = KeyColumns::of(batch.message_deletes.iter().map(|(key, _)| key));
            sqlx::query(
                "DELETE FROM broker_session_messages AS m
                  USING UNNEST($1::text[], $2::text[], $3::text[], $4::int8[])
                        AS d(tenant_id, broker_id, client_id, seq)
                  WHERE m.tenant_id = d.tenant_id AND m.broker_id = d.broker_id
                    AND m.client_id = d.client_id AND m.seq = d.seq",
            )
            .bind(&keys.tenants)
            .bind(&keys.brokers)
            .bind(&keys.clients)
            .bind(
                batch
                    .message_deletes
                    .iter()
                    .map(|(_, seq)| *seq)
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        }
        let inserts = last_per_row(&batch.message_inserts, |(key, m)| (key, m.seq));
        if !inserts.is_empty() {
            let keys = KeyColumns::of(inserts.iter().map(|(key, _)| key));
            let messages: Vec<&SessionMessage> = inserts.iter().map(|(_, m)| m).collect();
            sqlx::query(
                "INSERT INTO broker_session_messages (tenant_id, broker_id, client_id, seq, packet_id,
                                                      awaiting, topic, payload, qos, retain,
                                                      subscription_ids, properties, expires_at)
                 SELECT m.tenant_id, m.broker_id, m.client_id, m.seq, m.packet_id, m.awaiting,
                        m.topic, m.payload, m.qos, m.retain, m.subscription_ids::int8[],
                        m.properties, m.expires_at
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int4[],
                               $6::int2[], $7::text[], $8::bytea[], $9::int2[], $10::bool[],
                               $11::text[], $12::jsonb[], $13::timestamptz[])
                        AS m(tenant_id, broker_id, client_id, seq, packet_id, awaiting, topic,
                             payload, qos, retain, subscription_ids, properties, expires_at)
                  WHERE EXISTS (SELECT 1 FROM broker_sessions s
                                 WHERE s.tenant_id = m.tenant_id AND s.broker_id = m.broker_id
                                   AND s.client_id = m.client_id)
                 ON CONFLICT (tenant_id, broker_id, client_id, seq) DO UPDATE
                    SET packet_id = EXCLUDED.packet_id, awaiting = EXCLUDED.awaiting",
            )
            .bind(&keys.tenants)
            .bind(&keys.brokers)
            .bind(&keys.clients)
            .bind(messages.iter().map(|m| m.seq).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.packet_id).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.awaiting).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.qos).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.retain).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| array_literal(&m.subscription_ids)).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| &m.properties).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.expires_at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let updates = last_per_row(&batch.message_updates, |(key, seq, _, _)| (key, *seq));
        if !updates.is_empty() {
            let keys = KeyColumns::of(updates.iter().map(|(key, ..)| key));
            sqlx::query(
                "UPDATE broker_session_messages AS m
                    SET packet_id = u.packet_id, awaiting = u.awaiting
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int4[], $6::int2[])
                        AS u(tenant_id, broker_id, client_id, seq, packet_id, awaiting)
                  WHERE m.tenant_id = u.tenant_id AND m.broker_id = u.broker_id
                    AND m.client_id = u.client_id AND m.seq = u.seq",
            )
            .bind(&keys.tenants)
            .bind(&keys.brokers)
            .bind(&keys.clients)
            .bind(updates.iter().map(|(_, seq, ..)| *seq).collect::<Vec<_>>())
            .bind(updates.iter().map(|(_, _, packet_id, _)| *packet_id).collect::<Vec<_>>())
            .bind(updates.iter().map(|(.., awaiting)| *awaiting).collect::<Vec<_>>())
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

    /// Applies each change of `batch` with a statement of its own, in order: what the
    /// batched statements must be equivalent to.
    async fn apply_one_by_one(store: &Store, batch: &SessionBatch) {
        let mut tx = store.pool().begin().await.unwrap();
        for key in &batch.deletes {
            sqlx::query(
                "DELETE FROM broker_sessions WHERE tenant_id = $1 AND broker_id = $2 AND client_id = $3",
            )
            .bind(&key.tenant_id)
            .bind(&key.broker_id)
            .bind(&key.client_id)
            .execute(&mut *tx)
            .await
            .unwrap();
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
            .await
            .unwrap();
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
            .await
            .unwrap();
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
            .await
            .unwrap();
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
            .await
            .unwrap();
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
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }

    type SessionRow = (
        String,
        i64,
        Option<DateTime<Utc>>,
        Option<String>,
        String,
        Vec<i32>,
    );
    type MessageRow = (
        String,
        i64,
        Option<i32>,
        Option<i16>,
        String,
        Vec<u8>,
        i16,
        bool,
        Vec<i64>,
        String,
        Option<DateTime<Utc>>,
    );

    /// Every row of namespace `broker`, without `updated_at`.
    async fn rows(store: &Store, broker: &str) -> (Vec<SessionRow>, Vec<MessageRow>) {
        let sessions = sqlx::query_as(
            "SELECT client_id, expiry_secs, expires_at, registry_scope, subscriptions::text,
                    incoming_qos2
               FROM broker_sessions WHERE broker_id = $1 ORDER BY client_id",
        )
        .bind(broker)
        .fetch_all(store.pool())
        .await
        .unwrap();
        let messages = sqlx::query_as(
            "SELECT client_id, seq, packet_id, awaiting, topic, payload, qos, retain,
                    subscription_ids, properties::text, expires_at
               FROM broker_session_messages WHERE broker_id = $1 ORDER BY client_id, seq",
        )
        .bind(broker)
        .fetch_all(store.pool())
        .await
        .unwrap();
        (sessions, messages)
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_batch_ends_as_its_changes_applied_one_by_one(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let tenant = store.create_tenant("t").await.unwrap().id;
        let gone = store.create_tenant("gone").await.unwrap().id;
        store.delete_tenant(&gone, None).await.unwrap();
        // The same changes in two namespaces of the tenant: one batched, one by one.
        let expires = DateTime::from_timestamp(Utc::now().timestamp() + 600, 0);
        let scenario = |broker: &str| {
            let at = |tenant: &TenantId, client: &str| {
                let mut s = session(tenant, client, None);
                s.key.broker_id = broker.to_owned();
                s.expires_at = expires;
                s
            };
            let key = |client: &str| at(&tenant, client).key;
            let with = |seq: i64, packet_id: Option<i32>, ids: Vec<i64>| SessionMessage {
                subscription_ids: ids,
                ..message(seq, packet_id)
            };
            let seed = SessionBatch {
                saves: vec![at(&tenant, "s1"), at(&tenant, "s2"), at(&tenant, "s3")],
                message_inserts: vec![
                    (key("s1"), with(1, Some(1), vec![])),
                    (key("s1"), with(2, None, vec![1, 2])),
                    (key("s1"), with(3, None, vec![9])),
                    (key("s2"), with(1, None, vec![])),
                    (key("s3"), with(1, None, vec![])),
                ],
                ..SessionBatch::default()
            };
            let mut s1 = at(&tenant, "s1");
            s1.expiry_secs = 60;
            s1.registry_scope = Some("reg_a".into());
            let mut s4_first = at(&tenant, "s4");
            s4_first.incoming_qos2 = vec![];
            let mut s4 = at(&tenant, "s4");
            s4.expires_at = None;
            s4.incoming_qos2 = vec![1, 65535];
            let batch = SessionBatch {
                deletes: vec![key("s3"), key("nosuch")],
                saves: vec![s1, s4_first, s4, at(&gone, "g")],
                incoming_qos2: vec![
                    (key("s1"), vec![1, 2]),
                    (key("s2"), vec![5]),
                    (key("s1"), vec![7]),
                    (key("nosuch"), vec![1]),
                ],
                message_deletes: vec![(key("s1"), 1), (key("s2"), 9)],
                message_inserts: vec![
                    (key("s1"), with(4, None, vec![3, 4, 5])),
                    (key("s4"), with(1, Some(2), vec![])),
                    (key("s3"), with(2, None, vec![])),
                    (key("nosuch"), with(1, None, vec![])),
                    (at(&gone, "g").key, with(1, None, vec![])),
                    (key("s1"), with(2, Some(3), vec![1, 2])),
                    (key("s1"), with(4, Some(4), vec![3, 4, 5])),
                ],
                message_updates: vec![
                    (key("s1"), 3, 7, 0),
                    (key("s1"), 3, 8, 1),
                    (key("s2"), 1, 9, 0),
                    (key("s2"), 5, 9, 0),
                ],
            };
            (seed, batch)
        };
        let (seed, batch) = scenario("batch");
        store.apply_session_batch(&seed).await.unwrap();
        store.apply_session_batch(&batch).await.unwrap();
        let (seed, batch) = scenario("reference");
        apply_one_by_one(&store, &seed).await;
        apply_one_by_one(&store, &batch).await;
        let (batched, reference) = (rows(&store, "batch").await, rows(&store, "reference").await);
        assert_eq!(batched, reference);
        let clients: Vec<&str> = batched.0.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(clients, ["s1", "s2", "s4"]);
        assert_eq!(batched.0[0].5, [7], "the last incoming QoS 2 ids of s1");
        let s1_messages: Vec<(i64, Option<i32>)> = batched
            .1
            .iter()
            .filter(|m| m.0 == "s1")
            .map(|m| (m.1, m.2))
            .collect();
        assert_eq!(s1_messages, [(2, Some(3)), (3, Some(8)), (4, Some(4))]);
        assert_eq!(batched.1.len(), 5, "s1: 3, s2: 1, s4: 1");
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM broker_sessions WHERE tenant_id = $1")
                .bind(&gone)
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(left, 0);
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
