//! Rule matching and the group-committed path into the durable delivery queue (SPEC §5).
//!
//! Rule filters of a tenant are indexed in a topic trie, like subscriptions, so the cost of
//! matching a message does not grow with the number of rules. Matches are written to
//! PostgreSQL by one writer task that groups many of them into one transaction; a QoS 1/2
//! publisher waits for its batch to commit before it is acknowledged.

use crate::router::Message;
use iotcore_condition::{Condition, MessageContext};
use iotcore_store::deliveries::{NewDelivery, RuleRoute};
use iotcore_store::{DeviceId, MessageId, RegistryId, RuleId, Store, StoreError, TenantId};
use iotcore_topic::{TopicFilter, TopicLimits, TopicTrie};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The enabled rules of one tenant, at one generation (`tenants.rules_version`).
pub struct RuleIndex {
    pub version: i64,
    trie: TopicTrie<RuleId, RuleTarget>,
}

/// What a rule asks of a message beyond its topic filter.
struct RuleTarget {
    registry: Option<RegistryId>,
    /// Parsed once when the index is built, evaluated per message.
    condition: Option<Arc<Condition>>,
}

/// A rule whose filter and registry scope a message matched; its condition, if any, is
/// checked by [`deliveries_for`], which knows the publishing device.
#[derive(Clone, Debug)]
pub struct RuleMatch {
    pub rule_id: RuleId,
    condition: Option<Arc<Condition>>,
}

impl RuleIndex {
    pub fn build(version: i64, routes: Vec<RuleRoute>) -> RuleIndex {
        let mut trie = TopicTrie::default();
        // Filters and conditions were validated when the rule was created; one that no
        // longer parses (for example under stricter limits) matches nothing rather than
        // failing the tenant.
        let limits = TopicLimits {
            max_length: usize::MAX,
            max_levels: usize::MAX,
        };
        for route in routes {
            let condition = match route.condition.as_deref().map(Condition::parse) {
                None => None,
                Some(Ok(condition)) => Some(Arc::new(condition)),
                Some(Err(e)) => {
                    tracing::warn!(rule_id = %route.id, error = %e, "rule condition does not parse; rule ignored");
                    continue;
                }
            };
            match TopicFilter::parse(&route.topic_filter, limits) {
                Ok(filter) => {
                    let target = RuleTarget {
                        registry: route.registry_id,
                        condition,
                    };
                    trie.insert(&filter, route.id, target);
                }
                Err(e) => {
                    tracing::warn!(rule_id = %route.id, error = %e, "rule filter does not parse; ignored")
                }
            }
        }
        RuleIndex { version, trie }
    }

    /// The rules whose filter `message` matches and, for a rule scoped to a registry, that
    /// the message's registry is in scope of. Conditions are not evaluated yet.
    pub fn matching(&self, message: &Message) -> Vec<RuleMatch> {
        self.matching_topic(&message.topic, message.origin_registry.as_ref())
    }

    /// [`RuleIndex::matching`] by topic and registry alone (benchmarks use this).
    pub fn matching_topic(&self, topic: &str, registry: Option<&RegistryId>) -> Vec<RuleMatch> {
        let mut rules: Vec<RuleMatch> = Vec::new();
        self.trie.for_each_match(topic, |rule, target| {
            if target.registry.is_none() || target.registry.as_ref() == registry {
                rules.push(RuleMatch {
                    rule_id: rule.clone(),
                    condition: target.condition.clone(),
                });
            }
        });
        rules.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
        rules.dedup_by(|a, b| a.rule_id == b.rule_id);
        rules
    }
}

/// Builds the queue rows for the rules `message` matched, leaving out those whose
/// condition it does not satisfy. The payload is parsed as JSON at most once, and only if
/// a condition reads it.
pub fn deliveries_for(
    tenant: &TenantId,
    device: Option<&DeviceId>,
    rules: Vec<RuleMatch>,
    message: &Message,
    received_at: chrono::DateTime<chrono::Utc>,
) -> Vec<NewDelivery> {
    let context = MessageContext::new(
        &message.topic,
        message.qos as u8,
        device.map(|d| d.as_str()),
        message.origin_registry.as_ref().map(|r| r.as_str()),
        &message.payload,
    );
    rules
        .into_iter()
        .filter(|rule| {
            rule.condition
                .as_ref()
                .is_none_or(|condition| condition.matches(&context))
        })
        .map(|rule| NewDelivery {
            id: MessageId::generate(),
            tenant_id: tenant.clone(),
            rule_id: rule.rule_id,
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

/// The rule index loads in progress, one at a time per tenant: the first CONNECTs of a
/// tenant after a start (or a rule change) wait for one load instead of each reading the
/// rules again until the first answer arrives.
#[derive(Default)]
pub struct RuleLoads {
    tenants: std::sync::Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
}

impl RuleLoads {
    /// Runs `load` for `tenant` unless `needed`, asked once the tenant's load in progress (if
    /// any) has finished, says that it brought the index far enough.
    pub async fn load_once<Fut>(
        &self,
        tenant: &TenantId,
        needed: impl Fn() -> bool,
        load: impl FnOnce() -> Fut,
    ) where
        Fut: std::future::Future<Output = ()>,
    {
        let turn = lock(&self.tenants)
            .entry(tenant.clone())
            .or_default()
            .clone();
        {
            let _running = turn.lock().await;
            if needed() {
                load().await;
            }
        }
        // Forgotten by the last one out, so that the map holds only tenants being loaded.
        let mut tenants = lock(&self.tenants);
        if Arc::strong_count(&turn) == 2 {
            tenants.remove(tenant);
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
        // Every match may have been filtered out by a condition: nothing to wait for.
        if deliveries.is_empty() {
            return Ok(());
        }
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
        if deliveries.is_empty() {
            return true;
        }
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
    // Requests are counted, not matches: a request holds the matches of one message.
    while let Some(requests) = crate::batch::next(&mut rx, &shutdown, max_batch, max_wait).await {
        let mut batch: Vec<NewDelivery> = Vec::new();
        let mut waiters = Vec::with_capacity(requests.len());
        for request in requests {
            batch.extend(request.deliveries);
            waiters.extend(request.done);
        }
        let result = store.enqueue_deliveries(&batch).await.map_err(|e: StoreError| {
            tracing::error!(error = %e, matches = batch.len(), "enqueueing rule matches failed");
            EnqueueError(e.to_string())
        });
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::MessageProperties;
    use bytes::Bytes;
    use iotcore_codec::QoS;

    fn route(filter: &str, registry: Option<&RegistryId>, condition: Option<&str>) -> RuleRoute {
        RuleRoute {
            id: RuleId::generate(),
            topic_filter: filter.to_owned(),
            registry_id: registry.cloned(),
            condition: condition.map(str::to_owned),
        }
    }

    fn message(topic: &str, payload: &str, registry: Option<&RegistryId>) -> Message {
        Message {
            topic: topic.to_owned(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties::default(),
            origin: None,
            origin_registry: registry.cloned(),
        }
    }

    fn matched_rules(
        index: &RuleIndex,
        device: Option<&DeviceId>,
        message: &Message,
    ) -> Vec<RuleId> {
        let tenant = TenantId::generate();
        let rules = index.matching(message);
        deliveries_for(&tenant, device, rules, message, chrono::Utc::now())
            .into_iter()
            .map(|d| d.rule_id)
            .collect()
    }

    #[test]
    fn conditions_filter_matches_after_the_topic() {
        let device = DeviceId::generate();
        let hot = route("$devices/+/events/#", None, Some("payload.celsius > 30"));
        let mine = route(
            "$devices/+/events/#",
            None,
            Some(&format!("device_id == \"{}\"", device.as_str())),
        );
        let always = route("$devices/+/events/#", None, None);
        let index = RuleIndex::build(1, vec![hot.clone(), mine.clone(), always.clone()]);
        let topic = format!("$devices/{}/events/t", device.as_str());

        let mut expected = vec![hot.id.clone(), mine.id.clone(), always.id.clone()];
        expected.sort();
        let warm = message(&topic, r#"{"celsius": 31}"#, None);
        assert_eq!(matched_rules(&index, Some(&device), &warm), expected);

        let cool = message(&topic, r#"{"celsius": 20}"#, None);
        let other_device = DeviceId::generate();
        assert_eq!(
            matched_rules(&index, Some(&other_device), &cool),
            vec![always.id.clone()]
        );
        // Not JSON: payload paths are null, so only the unconditional rule matches.
        let binary = message(&topic, "\u{1}\u{2}", None);
        assert_eq!(
            matched_rules(&index, None, &binary),
            vec![always.id.clone()]
        );
    }

    #[tokio::test]
    async fn concurrent_loads_of_a_tenant_run_once() {
        use futures_util::FutureExt;
        use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
        let loads = RuleLoads::default();
        let tenant = TenantId::generate();
        let version = AtomicI64::new(0);
        let runs = AtomicUsize::new(0);
        let answer = tokio::sync::Semaphore::new(0);
        let wanted = 3;
        let needed = || version.load(Ordering::SeqCst) < wanted;
        let load = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = answer.acquire().await;
            version.store(wanted, Ordering::SeqCst);
        };
        let mut all = Box::pin(futures_util::future::join_all(
            (0..20).map(|_| loads.load_once(&tenant, needed, load)),
        ));
        assert!((&mut all).now_or_never().is_none(), "the first load waits");
        answer.add_permits(1);
        all.await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(lock(&loads.tenants).is_empty(), "nothing kept once done");
        // A newer generation is loaded again.
        version.store(1, Ordering::SeqCst);
        loads.load_once(&tenant, needed, load).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn registry_scope_and_unparsable_conditions() {
        let registry = RegistryId::generate();
        let scoped = route("a/#", Some(&registry), None);
        let broken = route("a/#", None, Some("payload.x >"));
        let index = RuleIndex::build(1, vec![scoped.clone(), broken]);
        let inside = message("a/b", "{}", Some(&registry));
        assert_eq!(matched_rules(&index, None, &inside), vec![scoped.id]);
        let outside = message("a/b", "{}", Some(&RegistryId::generate()));
        assert!(matched_rules(&index, None, &outside).is_empty());
        assert!(index.matching_topic("b/c", None).is_empty());
    }
}
