//! Rule matching and the group-committed path into the durable delivery queue (SPEC §5).
//!
//! Rule filters of a tenant are indexed in a topic trie, like subscriptions, so the cost of
//! matching a message does not grow with the number of rules. Matches are written to
//! PostgreSQL by one writer task that groups many of them into one transaction; a QoS 1/2
//! publisher waits for its batch to commit before it is acknowledged.

use crate::router::Message;
use iotcore_store::deliveries::{NewDelivery, RuleRoute};
use iotcore_store::{DeviceId, MessageId, RegistryId, RuleId, Store, StoreError, TenantId};
use iotcore_topic::{TopicFilter, TopicLimits, TopicTrie};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The enabled rules of one tenant, at one generation (`tenants.rules_version`).
pub struct RuleIndex {
    pub version: i64,
    trie: TopicTrie<RuleId, Option<RegistryId>>,
}

impl RuleIndex {
    pub fn build(version: i64, routes: Vec<RuleRoute>) -> RuleIndex {
        let mut trie = TopicTrie::default();
        // Filters were validated when the rule was created; one that no longer parses
        // (for example under stricter limits) matches nothing rather than failing the tenant.
        let limits = TopicLimits {
            max_length: usize::MAX,
            max_levels: usize::MAX,
        };
        for route in routes {
            match TopicFilter::parse(&route.topic_filter, limits) {
                Ok(filter) => {
                    trie.insert(&filter, route.id, route.registry_id);
                }
                Err(e) => {
                    tracing::warn!(rule_id = %route.id, error = %e, "rule filter does not parse; ignored")
                }
            }
        }
        RuleIndex { version, trie }
    }

    /// The rules that `message` matches: its topic matches the rule's filter and, for a rule
    /// scoped to a registry, it comes from that registry.
    pub fn matching(&self, message: &Message) -> Vec<RuleId> {
        let mut rules = Vec::new();
        self.trie.for_each_match(&message.topic, |rule, scope| {
            if scope.is_none() || scope.as_ref() == message.origin_registry.as_ref() {
                rules.push(rule.clone());
            }
        });
        rules.sort();
        rules.dedup();
        rules
    }
}

/// Builds the queue rows for the rules `message` matched.
pub fn deliveries_for(
    tenant: &TenantId,
    device: Option<&DeviceId>,
    rules: Vec<RuleId>,
    message: &Message,
    received_at: chrono::DateTime<chrono::Utc>,
) -> Vec<NewDelivery> {
    rules
        .into_iter()
        .map(|rule_id| NewDelivery {
            id: MessageId::generate(),
            tenant_id: tenant.clone(),
            rule_id,
            registry_id: message.origin_registry.clone(),
            device_id: device.cloned(),
            topic: message.topic.clone(),
            qos: message.qos as u8,
            retain: message.retain,
            payload: message.payload.to_vec(),
            content_type: message.properties.content_type.clone(),
            user_properties: message.properties.user_properties.clone(),
            received_at,
        })
        .collect()
}

/// Why a batch could not be made durable. The publisher is not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rule matches could not be stored: {0}")]
pub struct EnqueueError(String);

struct Request {
    deliveries: Vec<NewDelivery>,
    done: Option<oneshot::Sender<Result<(), EnqueueError>>>,
}

/// The handle connections use to enqueue rule matches.
#[derive(Clone)]
pub struct RuleSink {
    requests: mpsc::Sender<Request>,
}

impl RuleSink {
    /// Starts the writer task. `max_wait` bounds how long a match waits for companions.
    pub fn start(
        store: Store,
        max_batch: usize,
        max_wait: Duration,
        shutdown: CancellationToken,
    ) -> RuleSink {
        // Bounded: when PostgreSQL cannot keep up, publishers wait here (QoS 1/2) or their
        // QoS 0 matches are dropped, instead of memory growing.
        let (requests, rx) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(write_batches(
            store,
            rx,
            max_batch.max(1),
            max_wait,
            shutdown,
        ));
        RuleSink { requests }
    }

    /// Enqueues and waits until the matches are committed (QoS 1/2).
    pub async fn enqueue_durable(&self, deliveries: Vec<NewDelivery>) -> Result<(), EnqueueError> {
        let (done, committed) = oneshot::channel();
        self.requests
            .send(Request {
                deliveries,
                done: Some(done),
            })
            .await
            .map_err(|_| EnqueueError("the broker is shutting down".into()))?;
        committed
            .await
            .map_err(|_| EnqueueError("the broker is shutting down".into()))?
    }

    /// Enqueues without waiting (QoS 0: may be lost on a crash, per SPEC §5). Returns false
    /// when the writer is saturated and the matches were dropped.
    pub fn enqueue_best_effort(&self, deliveries: Vec<NewDelivery>) -> bool {
        self.requests
            .try_send(Request {
                deliveries,
                done: None,
            })
            .is_ok()
    }
}

async fn write_batches(
    store: Store,
    mut rx: mpsc::Receiver<Request>,
    max_batch: usize,
    max_wait: Duration,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<NewDelivery> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<Result<(), EnqueueError>>> = Vec::new();
    loop {
        // Wait for the first request of a batch (the writer drains what is queued on
        // shutdown, because connections stop before the channel closes).
        let first = tokio::select! {
            first = rx.recv() => first,
            _ = shutdown.cancelled(), if rx.is_empty() => None,
        };
        let Some(first) = first else { return };
        add(&mut batch, &mut waiters, first);
        let deadline = tokio::time::Instant::now() + max_wait;
        while batch.len() < max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(request)) => add(&mut batch, &mut waiters, request),
                Ok(None) | Err(_) => break,
            }
        }
        let result = store.enqueue_deliveries(&batch).await.map_err(|e: StoreError| {
            tracing::error!(error = %e, matches = batch.len(), "enqueueing rule matches failed");
            EnqueueError(e.to_string())
        });
        for waiter in waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
        batch.clear();
    }
}

fn add(
    batch: &mut Vec<NewDelivery>,
    waiters: &mut Vec<oneshot::Sender<Result<(), EnqueueError>>>,
    request: Request,
) {
    batch.extend(request.deliveries);
    waiters.extend(request.done);
}
