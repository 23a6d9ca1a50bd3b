//! Retained messages in PostgreSQL, so that they survive a restart. The router keeps them
//! in memory; changes are written by one task in batches (the last change of a topic in a
//! batch wins), off the publish path; a namespace's retained messages are loaded when the
//! namespace is first used, before any client of it can publish or subscribe.
//!
//! A retained message set in the last moments before a crash (kill -9) may be lost: what
//! was not yet written, at most `MAX_WAIT` of changes. A graceful shutdown writes them all.

use crate::router::{Message, MessageProperties, Namespace, NamespaceRoutes};
use chrono::{DateTime, Utc};
use iotcore_codec::QoS;
use iotcore_store::retained::{Json, RetainedChange, RetainedMessage, RetainedProperties};
use iotcore_store::{RegistryId, Store, TenantId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 64 * 1024;
const MAX_BATCH: usize = 1024;
const MAX_WAIT: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct RetainedWriter {
    changes: mpsc::Sender<RetainedChange>,
}

fn broker_key(namespace: &Namespace) -> (TenantId, String) {
    match namespace {
        Namespace::Tenant(tenant) => (tenant.clone(), String::new()),
        Namespace::Broker(tenant, broker) => (tenant.clone(), broker.to_string()),
    }
}

impl RetainedWriter {
    /// Starts the writer; the handle finishes once everything queued before `shutdown`
    /// has been written.
    pub fn start(store: Store, shutdown: CancellationToken) -> (RetainedWriter, JoinHandle<()>) {
        let (changes, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(write_batches(store, rx, shutdown));
        (RetainedWriter { changes }, handle)
    }

    /// Records that `message` was retained (or, with an empty payload, deleted).
    pub fn record(&self, namespace: &Namespace, message: &Message) {
        let (tenant_id, broker_id) = broker_key(namespace);
        let change = if message.payload.is_empty() {
            RetainedChange::Delete {
                tenant_id,
                broker_id,
                topic: message.topic.clone(),
            }
        } else {
            RetainedChange::Set {
                tenant_id,
                broker_id,
                message: RetainedMessage {
                    topic: message.topic.clone(),
                    payload: message.payload.to_vec(),
                    qos: i16::from(message.qos as u8),
                    properties: stored_properties(&message.properties),
                    origin_registry: message.origin_registry.as_ref().map(|r| r.to_string()),
                    expires_at: message.properties.expires_at.map(wall_clock),
                },
            }
        };
        if self.changes.try_send(change).is_err() {
            // Memory stays right; only a restart before the next change of this topic
            // would lose it.
            tracing::warn!("retained message writer saturated; change not persisted");
        }
    }
}

async fn write_batches(
    store: Store,
    mut rx: mpsc::Receiver<RetainedChange>,
    shutdown: CancellationToken,
) {
    while let Some(batch) = crate::batch::next(&mut rx, &shutdown, MAX_BATCH, MAX_WAIT).await {
        // The store keeps the last change of each topic and writes in two statements.
        if let Err(e) = store.apply_retained_changes(&batch).await {
            tracing::warn!(error = %e, changes = batch.len(), "writing retained messages failed");
        }
    }
}

/// A message's properties as the store keeps them, with a retained or a queued message.
pub(crate) fn stored_properties(properties: &MessageProperties) -> Json<RetainedProperties> {
    Json(RetainedProperties {
        payload_format_indicator: properties.payload_format_indicator,
        content_type: properties.content_type.clone(),
        response_topic: properties.response_topic.clone(),
        correlation_data: properties.correlation_data.as_ref().map(|d| d.to_vec()),
        user_properties: properties.user_properties.clone(),
    })
}

/// A message's properties read back from the store, with when it expires.
pub(crate) fn message_properties(
    stored: RetainedProperties,
    expires_at: Option<DateTime<Utc>>,
) -> MessageProperties {
    MessageProperties {
        payload_format_indicator: stored.payload_format_indicator,
        content_type: stored.content_type,
        response_topic: stored.response_topic,
        correlation_data: stored.correlation_data.map(Into::into),
        user_properties: stored.user_properties,
        expires_at: expires_at.map(instant),
    }
}

/// `at` by the wall clock, which is what survives a restart.
pub(crate) fn wall_clock(at: Instant) -> DateTime<Utc> {
    let left = at.saturating_duration_since(Instant::now());
    Utc::now() + chrono::Duration::from_std(left).unwrap_or(chrono::Duration::MAX)
}

/// A stored wall-clock time as an instant of this process; one passed is now.
pub(crate) fn instant(at: DateTime<Utc>) -> Instant {
    Instant::now() + (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

/// Loads a namespace's retained messages into its routes.
pub async fn load(store: &Store, namespace: &Namespace, routes: &NamespaceRoutes) {
    let (tenant, broker) = broker_key(namespace);
    let rows = match store.load_retained(&tenant, &broker).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, tenant_id = %tenant, "loading retained messages failed");
            return;
        }
    };
    for row in rows {
        let message = Message {
            topic: row.topic,
            payload: row.payload.into(),
            qos: QoS::from_u8(u8::try_from(row.qos).unwrap_or(0)).unwrap_or(QoS::AtMostOnce),
            retain: true,
            properties: message_properties(row.properties.0, row.expires_at),
            origin: None,
            origin_registry: row.origin_registry.as_deref().and_then(RegistryId::parse),
        };
        // Loaded rows were within the limit when written; a lower limit since is not
        // applied to them.
        routes.retain(&Arc::new(message), usize::MAX);
    }
}
