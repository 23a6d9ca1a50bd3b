//! Dead letters and delivery statistics of a rule, as the control plane shows them, and
//! the replay of dead letters back into the delivery queue (SPEC §5).

use crate::deliveries::WAKE_CHANNEL;
use crate::tenants::{Page, PageRequest};
use crate::{DeviceId, MessageId, RegistryId, Result, RuleId, Store, StoreError, TenantId};
use chrono::{DateTime, Utc};

/// A message that will not be delivered unless it is replayed.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    /// The envelope id; a replay delivers it again under the same id.
    pub id: MessageId,
    pub rule_id: RuleId,
    pub registry_id: Option<RegistryId>,
    pub device_id: Option<DeviceId>,
    pub topic: String,
    pub qos: i16,
    pub retain: bool,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub received_at: DateTime<Utc>,
    pub attempts: i32,
    pub last_error: String,
    pub dead_at: DateTime<Utc>,
}

/// What became of a rule's matches so far, and what is still waiting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    pub delivered: i64,
    pub retried: i64,
    pub dead_lettered: i64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    /// Deliveries in the queue (due, leased or waiting for a retry).
    pub queue_depth: i64,
    /// Dead letters currently kept (replayed ones are no longer counted).
    pub dead_letters: i64,
}

#[derive(sqlx::FromRow)]
struct StatsRow {
    delivered: Option<i64>,
    retried: Option<i64>,
    dead_lettered: Option<i64>,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    queue_depth: i64,
    dead_letters: i64,
}

impl Store {
    /// `NotFound` unless `rule` is a rule of `tenant`.
    async fn require_rule(&self, tenant: &TenantId, rule: &RuleId) -> Result<()> {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM rules WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(rule)
                .fetch_optional(&self.pool)
                .await?;
        exists.map(|_| ()).ok_or(StoreError::NotFound)
    }

    /// The statistics of the rule `rule` of `tenant`, or `NotFound`.
    pub async fn rule_stats(&self, tenant: &TenantId, rule: &RuleId) -> Result<RuleStats> {
        let row: Option<StatsRow> = sqlx::query_as(
            "SELECT s.delivered, s.retried, s.dead_lettered, s.last_error, s.last_error_at,
                    s.last_success_at,
                    (SELECT count(*) FROM deliveries d
                      WHERE d.tenant_id = r.tenant_id AND d.rule_id = r.id) AS queue_depth,
                    (SELECT count(*) FROM dead_letters x
                      WHERE x.tenant_id = r.tenant_id AND x.rule_id = r.id) AS dead_letters
               FROM rules r
               LEFT JOIN rule_stats s ON s.tenant_id = r.tenant_id AND s.rule_id = r.id
              WHERE r.tenant_id = $1 AND r.id = $2",
        )
        .bind(tenant)
        .bind(rule)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or(StoreError::NotFound)?;
        Ok(RuleStats {
            delivered: row.delivered.unwrap_or(0),
            retried: row.retried.unwrap_or(0),
            dead_lettered: row.dead_lettered.unwrap_or(0),
            last_error: row.last_error,
            last_error_at: row.last_error_at,
            last_success_at: row.last_success_at,
            queue_depth: row.queue_depth,
            dead_letters: row.dead_letters,
        })
    }

    /// A page of the dead letters of the rule `rule` of `tenant`, ordered by id; `NotFound`
    /// when there is no such rule.
    pub async fn list_dead_letters(
        &self,
        tenant: &TenantId,
        rule: &RuleId,
        page: &PageRequest,
    ) -> Result<Page<DeadLetter>> {
        self.require_rule(tenant, rule).await?;
        let rows: Vec<DeadLetter> = sqlx::query_as(
            "SELECT id, rule_id, registry_id, device_id, topic, qos, retain, payload,
                    content_type, received_at, attempts, last_error, dead_at
               FROM dead_letters
              WHERE tenant_id = $1 AND rule_id = $2 AND id > $3
              ORDER BY id LIMIT $4",
        )
        .bind(tenant)
        .bind(rule)
        .bind(page.after_bound())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        Ok(page.page(rows, |d: &DeadLetter| d.id.as_str()))
    }

    /// Moves dead letters of the rule `rule` of `tenant` back into the delivery queue, due
    /// at once with their attempts reset and their ids kept (so the webhook can tell a
    /// replay from a new message). `ids: None` replays all of them; ids that are not dead
    /// letters of this rule are ignored. Returns how many were queued again; `NotFound`
    /// when there is no such rule.
    ///
    /// The move is one statement: a message is never both dead and queued, nor neither.
    pub async fn replay_dead_letters(
        &self,
        tenant: &TenantId,
        rule: &RuleId,
        ids: Option<&[MessageId]>,
    ) -> Result<u64> {
        self.require_rule(tenant, rule).await?;
        let ids: Option<Vec<&str>> = ids.map(|ids| ids.iter().map(MessageId::as_str).collect());
        let mut tx = self.pool.begin().await?;
        let replayed: i64 = sqlx::query_scalar(
            "WITH moved AS (
                 DELETE FROM dead_letters
                  WHERE tenant_id = $1 AND rule_id = $2
                    AND ($3::text[] IS NULL OR id = ANY($3::text[]))
              RETURNING *
             ),
             queued AS (
                 INSERT INTO deliveries (id, tenant_id, rule_id, registry_id, device_id, topic,
                                         qos, retain, payload, content_type, user_properties,
                                         received_at)
                 SELECT id, tenant_id, rule_id, registry_id, device_id, topic, qos, retain,
                        payload, content_type, user_properties, received_at
                   FROM moved
                 -- Already queued again (a concurrent replay): the queued row stands.
                 ON CONFLICT (id) DO NOTHING
              RETURNING 1
             )
             SELECT count(*) FROM queued",
        )
        .bind(tenant)
        .bind(rule)
        .bind(ids)
        .fetch_one(&mut *tx)
        .await?;
        if replayed > 0 {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(WAKE_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(u64::try_from(replayed).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliveries::NewDelivery;
    use crate::devices::tests::tenant_with_registry;
    use crate::rules::{NewRule, NewWebhook};
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    async fn rule(store: &Store, tenant: &TenantId, name: &str) -> RuleId {
        let new = NewRule {
            name: name.into(),
            topic_filter: "#".into(),
            registry_id: None,
            condition: None,
            webhook: NewWebhook {
                url: "https://example.com/hook".into(),
                headers: BTreeMap::new(),
                secret: None,
                timeout_ms: 1000,
                max_in_flight: 64,
                batch: Default::default(),
            },
            enabled: true,
        };
        store.create_rule(tenant, &new).await.unwrap().id
    }

    fn delivery(tenant: &TenantId, rule: &RuleId) -> NewDelivery {
        NewDelivery {
            id: MessageId::generate(),
            tenant_id: tenant.clone(),
            rule_id: rule.clone(),
            registry_id: None,
            device_id: None,
            topic: "t/1".into(),
            qos: 1,
            retain: false,
            payload: b"{\"n\":1}".to_vec(),
            content_type: None,
            user_properties: Vec::new(),
            received_at: Utc::now(),
        }
    }

    /// Enqueues `n` messages for `rule` and dead-letters them all as worker `w`.
    async fn dead(store: &Store, tenant: &TenantId, rule: &RuleId, n: usize) -> Vec<MessageId> {
        let batch: Vec<NewDelivery> = (0..n).map(|_| delivery(tenant, rule)).collect();
        store.enqueue_deliveries(&batch).await.unwrap();
        let claimed = store
            .claim_deliveries("w", 1000, Duration::from_secs(60), &HashMap::new())
            .await
            .unwrap();
        for d in &claimed {
            assert!(store
                .dead_letter_delivery(tenant, &d.id, "w", "HTTP 404 Not Found")
                .await
                .unwrap());
        }
        batch.into_iter().map(|d| d.id).collect()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn dead_letters_are_listed_counted_and_replayed(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, _) = tenant_with_registry(&store, "a").await;
        let r = rule(&store, &a, "r").await;
        let ids = dead(&store, &a, &r, 3).await;

        let stats = store.rule_stats(&a, &r).await.unwrap();
        assert_eq!(stats.dead_lettered, 3);
        assert_eq!(stats.dead_letters, 3);
        assert_eq!(stats.queue_depth, 0);
        assert_eq!(stats.last_error.as_deref(), Some("HTTP 404 Not Found"));

        let first = store
            .list_dead_letters(
                &a,
                &r,
                &PageRequest {
                    after: None,
                    size: Some(2),
                },
            )
            .await
            .unwrap();
        assert_eq!(first.items.len(), 2);
        assert_eq!(first.items[0].attempts, 1);
        let second = store
            .list_dead_letters(
                &a,
                &r,
                &PageRequest {
                    after: first.next_after.clone(),
                    size: Some(2),
                },
            )
            .await
            .unwrap();
        assert_eq!(second.items.len(), 1);
        assert!(second.next_after.is_none());
        let mut listed: Vec<MessageId> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|d| d.id.clone())
            .collect();
        listed.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(listed, expected);

        // Replay one by id, then the rest; unknown ids are ignored.
        let one = store
            .replay_dead_letters(&a, &r, Some(&[ids[0].clone(), MessageId::generate()]))
            .await
            .unwrap();
        assert_eq!(one, 1);
        let stats = store.rule_stats(&a, &r).await.unwrap();
        assert_eq!((stats.queue_depth, stats.dead_letters), (1, 2));
        assert_eq!(store.replay_dead_letters(&a, &r, None).await.unwrap(), 2);
        let claimed = store
            .claim_deliveries("w2", 1000, Duration::from_secs(60), &HashMap::new())
            .await
            .unwrap();
        let mut again: Vec<MessageId> = claimed.iter().map(|d| d.id.clone()).collect();
        again.sort();
        assert_eq!(again, expected, "replayed under the same ids");
        assert!(claimed.iter().all(|d| d.attempts == 0));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn other_tenants_dead_letters_are_not_found(pool: sqlx::PgPool) {
        let store = Store::from_pool(pool);
        let (a, _) = tenant_with_registry(&store, "a").await;
        let (b, _) = tenant_with_registry(&store, "b").await;
        let r = rule(&store, &a, "r").await;
        let ids = dead(&store, &a, &r, 1).await;
        assert!(matches!(
            store.rule_stats(&b, &r).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store
                .list_dead_letters(&b, &r, &PageRequest::default())
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.replay_dead_letters(&b, &r, Some(&ids)).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.rule_stats(&a, &r).await.unwrap().dead_letters, 1);
    }
}
