//! The durable delivery queue (SPEC §5): brokers enqueue rule matches, rules workers claim
//! them with leases, deliver them and complete, reschedule or dead-letter them.
//!
//! A claimed delivery is leased to one worker until `lease_until`; a worker that crashes
//! simply lets its leases expire and another worker claims the rows again (at least once).
//! Every statement that addresses a delivery by id also filters on its tenant.

use crate::{DeviceId, MessageId, RegistryId, Result, RuleId, Store, TenantId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::types::Json;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// The channel on which [`Store::enqueue_deliveries`] announces new deliveries, so that
/// idle workers start within milliseconds instead of at their next poll.
pub const WAKE_CHANNEL: &str = "iotcore_deliveries";

/// How much longer than its webhook timeout a delivery stays leased at least, so that a
/// slow but alive worker is not overtaken by another one while its request is running.
const LEASE_MARGIN_SECS: f64 = 10.0;

/// What a broker needs of a rule to match messages against it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RuleRoute {
    pub id: RuleId,
    pub topic_filter: String,
    pub registry_id: Option<RegistryId>,
    /// The rule's condition as written; the API checked that it parses.
    pub condition: Option<String>,
}

/// One rule match, ready to be made durable.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub rule_id: RuleId,
    pub registry_id: Option<RegistryId>,
    pub device_id: Option<DeviceId>,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub received_at: DateTime<Utc>,
}

impl Store {
    /// The enabled rules of a tenant, and the tenant's rule generation they belong to.
    pub async fn enabled_rule_routes(&self, tenant: &TenantId) -> Result<(i64, Vec<RuleRoute>)> {
        let mut tx = self.pool.begin().await?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT rules_version FROM tenants WHERE id = $1")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        let routes = sqlx::query_as(
            "SELECT id, topic_filter, registry_id, condition FROM rules
              WHERE tenant_id = $1 AND enabled ORDER BY id",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((version.unwrap_or(0), routes))
    }

    /// Makes a batch of matches durable in one transaction (group commit) and wakes the
    /// rules workers (one notification per batch). A match whose rule has been deleted
    /// meanwhile is skipped rather than failing the whole batch.
    pub async fn enqueue_deliveries(&self, batch: &[NewDelivery]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(batch.len());
        let mut tenants = Vec::with_capacity(batch.len());
        let mut rules = Vec::with_capacity(batch.len());
        let mut registries = Vec::with_capacity(batch.len());
        let mut devices = Vec::with_capacity(batch.len());
        let mut topics = Vec::with_capacity(batch.len());
        let mut qoses = Vec::with_capacity(batch.len());
        let mut retains = Vec::with_capacity(batch.len());
        let mut payloads = Vec::with_capacity(batch.len());
        let mut content_types = Vec::with_capacity(batch.len());
        let mut user_properties = Vec::with_capacity(batch.len());
        let mut received = Vec::with_capacity(batch.len());
        for d in batch {
            ids.push(d.id.as_str());
            tenants.push(d.tenant_id.as_str());
            rules.push(d.rule_id.as_str());
            registries.push(d.registry_id.as_ref().map(|r| r.as_str()));
            devices.push(d.device_id.as_ref().map(|r| r.as_str()));
            topics.push(d.topic.as_str());
            qoses.push(i16::from(d.qos));
            retains.push(d.retain);
            payloads.push(d.payload.as_slice());
            content_types.push(d.content_type.as_deref());
            user_properties.push(Json(&d.user_properties));
            received.push(d.received_at);
        }
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO deliveries (id, tenant_id, rule_id, registry_id, device_id, topic, qos,
                                     retain, payload, content_type, user_properties, received_at)
             SELECT m.* FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                    $6::text[], $7::int2[], $8::bool[], $9::bytea[], $10::text[],
                                    $11::jsonb[], $12::timestamptz[])
                      AS m(id, tenant_id, rule_id, registry_id, device_id, topic, qos, retain,
                           payload, content_type, user_properties, received_at)
              WHERE EXISTS (SELECT 1 FROM rules r WHERE r.tenant_id = m.tenant_id AND r.id = m.rule_id)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&tenants)
        .bind(&rules)
        .bind(&registries)
        .bind(&devices)
        .bind(&topics)
        .bind(&qoses)
        .bind(&retains)
        .bind(&payloads)
        .bind(&content_types)
        .bind(&user_properties)
        .bind(&received)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() > 0 {
            // Sent at commit, so a woken worker always finds the rows.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(WAKE_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A delivery leased to one worker, with what sending it needs of its rule.
///
/// Only deliveries of enabled rules are ever claimed; the deliveries of a deleted rule
/// are deleted with it.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub rule_id: RuleId,
    pub registry_id: Option<RegistryId>,
    pub device_id: Option<DeviceId>,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub received_at: DateTime<Utc>,
    /// Attempts already made before this one.
    pub attempts: u32,
    pub webhook: Webhook,
}

/// The webhook of a rule, as the rule stood when its delivery was claimed.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    /// The rule's custom request headers, in a stable order.
    pub headers: Vec<(String, String)>,
    /// The signing secret; `None` when the rule has none. Never logged: `Debug` redacts it.
    pub secret: Option<String>,
    pub timeout_ms: u32,
    /// How many requests to the rule's webhook one worker process may have in flight at
    /// once.
    pub max_in_flight: u32,
    /// Envelopes per request: 1 sends each alone, more sends JSON arrays of up to this many.
    pub batch_max_messages: u32,
    /// How long a partial batch waits for more messages before it is sent anyway.
    pub batch_max_wait_ms: u32,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL and header values can carry credentials as well as the secret.
        f.debug_struct("Webhook")
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout_ms", &self.timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("batch_max_messages", &self.batch_max_messages)
            .field("batch_max_wait_ms", &self.batch_max_wait_ms)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: MessageId,
    tenant_id: TenantId,
    rule_id: RuleId,
    registry_id: Option<RegistryId>,
    device_id: Option<DeviceId>,
    topic: String,
    qos: i16,
    retain: bool,
    payload: Vec<u8>,
    content_type: Option<String>,
    user_properties: Json<Value>,
    received_at: DateTime<Utc>,
    attempts: i32,
    webhook_url: String,
    webhook_headers: Json<Value>,
    webhook_secret: Option<String>,
    timeout_ms: i32,
    max_in_flight: i32,
    batch_max_messages: i32,
    batch_max_wait_ms: i32,
}

impl From<ClaimedRow> for ClaimedDelivery {
    fn from(row: ClaimedRow) -> Self {
        ClaimedDelivery {
            id: row.id,
            tenant_id: row.tenant_id,
            rule_id: row.rule_id,
            registry_id: row.registry_id,
            device_id: row.device_id,
            topic: row.topic,
            qos: u8::try_from(row.qos).unwrap_or(0),
            retain: row.retain,
            payload: row.payload,
            content_type: row.content_type,
            user_properties: string_pairs(row.user_properties.0),
            received_at: row.received_at,
            attempts: u32::try_from(row.attempts).unwrap_or(0),
            webhook: Webhook {
                url: row.webhook_url,
                headers: header_pairs(row.webhook_headers.0),
                secret: row.webhook_secret.filter(|s| !s.is_empty()),
                timeout_ms: u32::try_from(row.timeout_ms).unwrap_or(1).max(1),
                max_in_flight: u32::try_from(row.max_in_flight).unwrap_or(1).max(1),
                batch_max_messages: u32::try_from(row.batch_max_messages).unwrap_or(1).max(1),
                batch_max_wait_ms: u32::try_from(row.batch_max_wait_ms).unwrap_or(0),
            },
        }
    }
}

/// Reads the `[[key, value], ...]` pairs that [`Store::enqueue_deliveries`] writes. A
/// malformed value must not make the whole claim fail (that would stall every rule), so
/// entries that are not pairs of strings are dropped.
fn string_pairs(value: Value) -> Vec<(String, String)> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| match item {
            Value::Array(pair) => match <[Value; 2]>::try_from(pair) {
                Ok([Value::String(k), Value::String(v)]) => Some((k, v)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Reads a rule's `{"name": "value"}` headers; like [`string_pairs`], tolerant of rows
/// that do not have that shape.
fn header_pairs(value: Value) -> Vec<(String, String)> {
    let Value::Object(map) = value else {
        return Vec::new();
    };
    map.into_iter()
        .filter_map(|(name, value)| match value {
            Value::String(v) => Some((name, v)),
            _ => {
                tracing::warn!(header = %name, "ignoring a webhook header whose value is not a string");
                None
            }
        })
        .collect()
}

impl Store {
    /// Leases up to `limit` due deliveries of enabled rules to `worker`.
    ///
    /// `in_flight` says, in messages, how much of each rule's capacity the worker is
    /// using: a rule's capacity is `max_in_flight` requests of `batch_max_messages` each,
    /// and a rule never gets more than its capacity minus that, so a slow webhook's backlog
    /// is left in the queue instead of crowding out other rules. Rules are visited in a
    /// random order, so when `limit` is the constraint no rule is always served last.
    /// Rows leased by a live worker are skipped without waiting (`SKIP LOCKED`, leases).
    pub async fn claim_deliveries(
        &self,
        worker: &str,
        limit: u32,
        lease: Duration,
        in_flight: &HashMap<RuleId, u32>,
    ) -> Result<Vec<ClaimedDelivery>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (busy_rules, busy_counts): (Vec<&str>, Vec<i32>) = in_flight
            .iter()
            .map(|(rule, n)| (rule.as_str(), i32::try_from(*n).unwrap_or(i32::MAX)))
            .unzip();
        let rows: Vec<ClaimedRow> = sqlx::query_as(
            "WITH busy(rule_id, in_flight) AS (
                 SELECT * FROM UNNEST($4::text[], $5::int4[])
             ),
             claimable AS (
                 SELECT c.id
                   FROM (SELECT r.tenant_id, r.id,
                                r.max_in_flight::int8 * r.batch_max_messages AS capacity
                           FROM rules r WHERE r.enabled ORDER BY random()) r
                   LEFT JOIN busy b ON b.rule_id = r.id
                  CROSS JOIN LATERAL (
                        SELECT d.id FROM deliveries d
                         WHERE d.tenant_id = r.tenant_id AND d.rule_id = r.id
                           AND d.next_attempt_at <= now()
                           AND (d.lease_until IS NULL OR d.lease_until < now())
                         ORDER BY d.next_attempt_at
                         LIMIT GREATEST(r.capacity - COALESCE(b.in_flight, 0), 0)
                           FOR UPDATE OF d SKIP LOCKED
                  ) c
                  LIMIT $1
             )
             UPDATE deliveries d
                SET lease_until = now() + make_interval(
                        secs => GREATEST($2::float8,
                                         (r.timeout_ms + r.batch_max_wait_ms) / 1000.0 + $6::float8)),
                    leased_by = $3
               FROM claimable c, rules r
              WHERE d.id = c.id AND r.tenant_id = d.tenant_id AND r.id = d.rule_id
          RETURNING d.id, d.tenant_id, d.rule_id, d.registry_id, d.device_id, d.topic, d.qos,
                    d.retain, d.payload, d.content_type, d.user_properties, d.received_at,
                    d.attempts, r.webhook_url, r.webhook_headers, r.webhook_secret,
                    r.timeout_ms, r.max_in_flight, r.batch_max_messages, r.batch_max_wait_ms",
        )
        .bind(i64::from(limit))
        .bind(lease.as_secs_f64())
        .bind(worker)
        .bind(&busy_rules)
        .bind(&busy_counts)
        .bind(LEASE_MARGIN_SECS)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ClaimedDelivery::from).collect())
    }

    /// How many rule matches wait for delivery, per tenant with any (the
    /// `iotcore_rules_queue_depth` metric); across tenants, since it is the operator's view.
    pub async fn queue_depth_per_tenant(&self) -> Result<Vec<(TenantId, i64)>> {
        let rows: Vec<(TenantId, i64)> =
            sqlx::query_as("SELECT tenant_id, count(*) FROM deliveries GROUP BY tenant_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows)
    }

    /// Removes a delivered message from the queue and counts it in the rule's statistics.
    /// Succeeds whoever holds the lease, because the webhook has the message either way;
    /// returns whether the delivery was still queued (a duplicate is not counted twice).
    pub async fn complete_delivery(&self, tenant: &TenantId, id: &MessageId) -> Result<bool> {
        Ok(self
            .complete_deliveries(tenant, std::slice::from_ref(id))
            .await?
            > 0)
    }

    /// [`Store::complete_delivery`] for every message of a batch the webhook accepted, in
    /// one statement; returns how many were still queued.
    pub async fn complete_deliveries(&self, tenant: &TenantId, ids: &[MessageId]) -> Result<u64> {
        let pairs: Vec<(&TenantId, &MessageId)> = ids.iter().map(|id| (tenant, id)).collect();
        self.complete_deliveries_of(&pairs).await
    }

    /// [`Store::complete_delivery`] for deliveries of any tenants and rules, each given with
    /// its tenant, in one statement (one transaction, and one update of each rule's
    /// statistics however many of its messages it completes); returns how many were still
    /// queued.
    pub async fn complete_deliveries_of(
        &self,
        deliveries: &[(&TenantId, &MessageId)],
    ) -> Result<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let (tenants, ids): (Vec<&str>, Vec<&str>) = deliveries
            .iter()
            .map(|(tenant, id)| (tenant.as_str(), id.as_str()))
            .unzip();
        let done: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM deliveries d
                  USING UNNEST($1::text[], $2::text[]) AS x(tenant_id, id)
                  WHERE d.tenant_id = x.tenant_id AND d.id = x.id
              RETURNING d.tenant_id, d.rule_id
             ),
             counted AS (
                 INSERT INTO rule_stats AS s (rule_id, tenant_id, delivered, last_success_at)
                 SELECT rule_id, tenant_id, count(*), now() FROM gone GROUP BY rule_id, tenant_id
                 -- Rules in one order in every statement, so that two processes completing
                 -- messages of the same rules wait for each other instead of deadlocking.
                  ORDER BY rule_id
                 ON CONFLICT (rule_id) DO UPDATE
                    SET delivered = s.delivered + EXCLUDED.delivered, last_success_at = now()
                  WHERE s.tenant_id = EXCLUDED.tenant_id
             )
             SELECT count(*) FROM gone",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(done).unwrap_or(0))
    }

    /// Records a failed attempt and makes the delivery due again at `next_attempt_at`,
    /// releasing the lease. Does nothing (and returns `false`) when `worker` no longer holds
    /// the lease, so a worker that lost its lease cannot disturb the one that took over.
    /// `error` is stored as the delivery's and the rule's last error: keep secrets out of it.
    pub async fn reschedule_delivery(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        worker: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<bool> {
        let done = self
            .reschedule_deliveries(
                tenant,
                std::slice::from_ref(id),
                worker,
                next_attempt_at,
                error,
            )
            .await?;
        Ok(done > 0)
    }

    /// [`Store::reschedule_delivery`] for every message of a batch, all due again at the
    /// same moment so that they are likely to travel together again; returns how many
    /// `worker` still held.
    pub async fn reschedule_deliveries(
        &self,
        tenant: &TenantId,
        ids: &[MessageId],
        worker: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<u64> {
        let ids: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
        let done: i64 = sqlx::query_scalar(
            "WITH retried AS (
                 UPDATE deliveries
                    SET attempts = attempts + 1, next_attempt_at = $4, last_error = $5,
                        lease_until = NULL, leased_by = NULL
                  WHERE tenant_id = $1 AND id = ANY($2) AND leased_by = $3
              RETURNING tenant_id, rule_id
             ),
             counted AS (
                 INSERT INTO rule_stats AS s (rule_id, tenant_id, retried, last_error, last_error_at)
                 SELECT rule_id, tenant_id, count(*), $5, now() FROM retried
                  GROUP BY rule_id, tenant_id
                 ON CONFLICT (rule_id) DO UPDATE
                    SET retried = s.retried + EXCLUDED.retried, last_error = EXCLUDED.last_error,
                        last_error_at = EXCLUDED.last_error_at
                  WHERE s.tenant_id = EXCLUDED.tenant_id
             )
             SELECT count(*) FROM retried",
        )
        .bind(tenant)
        .bind(&ids)
        .bind(worker)
        .bind(next_attempt_at)
        .bind(error)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(done).unwrap_or(0))
    }

    /// Moves a delivery that will never succeed (or is too old) to `dead_letters`, with
    /// this final attempt counted, and counts it in the rule's statistics — all in one
    /// statement, so a message is never both queued and dead, nor neither. Like
    /// [`Store::reschedule_delivery`], only the lease holder can do this.
    pub async fn dead_letter_delivery(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        worker: &str,
        error: &str,
    ) -> Result<bool> {
        let done = self
            .dead_letter_deliveries(tenant, std::slice::from_ref(id), worker, error)
            .await?;
        Ok(done > 0)
    }

    /// [`Store::dead_letter_delivery`] for every message of a batch; returns how many
    /// `worker` still held.
    pub async fn dead_letter_deliveries(
        &self,
        tenant: &TenantId,
        ids: &[MessageId],
        worker: &str,
        error: &str,
    ) -> Result<u64> {
        let ids: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
        let done: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM deliveries
                  WHERE tenant_id = $1 AND id = ANY($2) AND leased_by = $3
              RETURNING *
             ),
             dead AS (
                 INSERT INTO dead_letters (id, tenant_id, rule_id, registry_id, device_id, topic,
                                           qos, retain, payload, content_type, user_properties,
                                           received_at, attempts, last_error)
                 SELECT id, tenant_id, rule_id, registry_id, device_id, topic, qos, retain,
                        payload, content_type, user_properties, received_at, attempts + 1, $4
                   FROM gone
                 -- A replayed message that dies again replaces its earlier dead letter.
                 ON CONFLICT (id) DO UPDATE
                    SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,
                        dead_at = now()
                  WHERE dead_letters.tenant_id = EXCLUDED.tenant_id
              RETURNING tenant_id, rule_id
             ),
             counted AS (
                 INSERT INTO rule_stats AS s (rule_id, tenant_id, dead_lettered, last_error, last_error_at)
                 SELECT rule_id, tenant_id, count(*), $4, now() FROM dead GROUP BY rule_id, tenant_id
                 ON CONFLICT (rule_id) DO UPDATE
                    SET dead_lettered = s.dead_lettered + EXCLUDED.dead_lettered,
                        last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at
                  WHERE s.tenant_id = EXCLUDED.tenant_id
             )
             SELECT count(*) FROM dead",
        )
        .bind(tenant)
        .bind(&ids)
        .bind(worker)
        .bind(error)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(done).unwrap_or(0))
    }
}

/// Wakes a rules worker when deliveries are enqueued (LISTEN on [`WAKE_CHANNEL`]).
/// Notifications are hints, not data: workers still poll, because a notification can be
/// lost with the connection.
pub struct DeliveryListener {
    listener: PgListener,
}

impl DeliveryListener {
    pub async fn connect(store: &Store) -> Result<DeliveryListener> {
        let mut listener = PgListener::connect_with(store.pool()).await?;
        listener.listen(WAKE_CHANNEL).await?;
        Ok(DeliveryListener { listener })
    }

    /// Returns when new deliveries may be due: on a notification, or when the connection
    /// was lost and re-established (notifications may have been missed meanwhile).
    pub async fn wait(&mut self) -> Result<()> {
        self.listener.try_recv().await?;
        Ok(())
    }
}
