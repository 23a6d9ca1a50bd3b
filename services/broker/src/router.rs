//! The router: who is subscribed to what, per namespace, and the retained messages.
//!
//! Every topic lives in a [`Namespace`] (a tenant's registry namespace, or one virtual
//! broker of a tenant), and each namespace has its own trie and retained store. There is
//! no code path from one namespace's state to another's: tenant isolation (SPEC §3.2)
//! follows from the data structure, not from checks that could be forgotten.

use crate::rules::RuleIndex;
use bytes::Bytes;
use iotcore_codec::QoS;
use iotcore_store::{BrokerId, RegistryId, TenantId};
use iotcore_topic::{matches, TopicFilter, TopicTrie};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

/// An isolated topic space.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// The tenant's registries and devices, with the `$devices/…` and `$registries/…` topics.
    Tenant(TenantId),
    /// A virtual broker of the tenant (SPEC §3.6).
    Broker(TenantId, BrokerId),
}

impl Namespace {
    pub fn tenant_id(&self) -> &TenantId {
        match self {
            Namespace::Tenant(t) | Namespace::Broker(t, _) => t,
        }
    }
}

/// Identifies one live connection within the process.
pub type ConnectionId = u64;

/// An application message as accepted from a publisher. Shared (behind an `Arc`) by every
/// subscriber it is delivered to: the payload is never copied per subscriber.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub content_type: Option<String>,
    pub payload_format_indicator: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    /// The connection that published it (for MQTT 5 No Local); `None` for the API.
    pub origin: Option<ConnectionId>,
    /// The registry the message comes from: the publishing device's or registry client's.
    /// Registry clients receive `$devices/…` messages only from their own registry.
    pub origin_registry: Option<RegistryId>,
}

/// One message on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub message: Arc<Message>,
    /// The QoS it is delivered with: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// The RETAIN flag as sent: set for retained messages sent on subscribe.
    pub retain: bool,
}

/// The sending side of a connection's bounded outbound queue.
pub type Mailbox = mpsc::Sender<Outgoing>;

/// A subscription as the router sees it.
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub mailbox: Mailbox,
    pub qos: QoS,
    pub no_local: bool,
    /// For registry clients: deliver `$devices/…` messages only from this registry.
    pub registry_scope: Option<RegistryId>,
}

impl Subscriber {
    fn accepts(&self, connection: ConnectionId, message: &Message) -> bool {
        if self.no_local && message.origin == Some(connection) {
            return false;
        }
        match &self.registry_scope {
            Some(scope) if message.topic.starts_with("$devices/") => message.origin_registry.as_ref() == Some(scope),
            _ => true,
        }
    }
}

/// The routing state of one namespace.
#[derive(Default)]
pub struct NamespaceRoutes {
    subscriptions: RwLock<TopicTrie<ConnectionId, Subscriber>>,
    retained: Mutex<HashMap<String, Arc<Message>>>,
    /// Rule filters of the tenant (only for [`Namespace::Tenant`]).
    pub rules: RwLock<Option<Arc<RuleIndex>>>,
}

/// How a publish fared, for metrics and MQTT 5 reason codes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteOutcome {
    pub delivered: usize,
    /// Subscribers whose outbound queue was full.
    pub dropped: usize,
}

impl NamespaceRoutes {
    pub fn subscribe(&self, filter: &TopicFilter, connection: ConnectionId, subscriber: Subscriber) {
        write(&self.subscriptions).insert(filter, connection, subscriber);
    }

    pub fn unsubscribe(&self, filter: &str, connection: ConnectionId) -> bool {
        write(&self.subscriptions).remove(filter, &connection).is_some()
    }

    /// Hands `message` to every matching subscriber's queue without waiting: a full queue
    /// drops the message for that subscriber only (SPEC §3.1, slow consumers).
    pub fn route(&self, message: &Arc<Message>) -> RouteOutcome {
        let mut targets: Vec<(ConnectionId, Subscriber)> = Vec::new();
        {
            let trie = read(&self.subscriptions);
            trie.for_each_match(&message.topic, |connection, subscriber| {
                if subscriber.accepts(*connection, message) {
                    targets.push((*connection, subscriber.clone()));
                }
            });
        }
        // A connection whose filters overlap gets the message once, with the highest QoS
        // of its matching subscriptions (MQTT-3.3.5-1 allows either; once is what clients
        // of AWS IoT Core and Mosquitto observe).
        targets.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.qos.cmp(&a.1.qos)));
        targets.dedup_by_key(|t| t.0);
        let mut outcome = RouteOutcome::default();
        for (_, subscriber) in targets {
            let outgoing = Outgoing { message: message.clone(), qos: message.qos.min(subscriber.qos), retain: false };
            match subscriber.mailbox.try_send(outgoing) {
                Ok(()) => outcome.delivered += 1,
                // A closed mailbox belongs to a connection that is going away; its
                // subscriptions are removed as it ends.
                Err(_) => outcome.dropped += 1,
            }
        }
        outcome
    }

    /// Stores, replaces or (with an empty payload) deletes the retained message of a topic.
    pub fn retain(&self, message: &Arc<Message>) {
        let mut retained = lock(&self.retained);
        if message.payload.is_empty() {
            retained.remove(&message.topic);
        } else {
            retained.insert(message.topic.clone(), message.clone());
        }
    }

    /// The retained messages whose topic matches `filter`.
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        lock(&self.retained)
            .values()
            .filter(|m| matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    pub fn rule_index(&self) -> Option<Arc<RuleIndex>> {
        read(&self.rules).clone()
    }
}

/// All namespaces of this process.
#[derive(Default)]
pub struct Router {
    namespaces: RwLock<HashMap<Namespace, Arc<NamespaceRoutes>>>,
    next_connection: AtomicU64,
}

impl Router {
    pub fn namespace(&self, namespace: &Namespace) -> Arc<NamespaceRoutes> {
        if let Some(routes) = read(&self.namespaces).get(namespace) {
            return routes.clone();
        }
        write(&self.namespaces).entry(namespace.clone()).or_default().clone()
    }

    /// The namespaces that exist now, for reloading rule indexes.
    pub fn loaded(&self) -> Vec<(Namespace, Arc<NamespaceRoutes>)> {
        read(&self.namespaces).iter().map(|(n, r)| (n.clone(), r.clone())).collect()
    }

    pub fn next_connection_id(&self) -> ConnectionId {
        self.next_connection.fetch_add(1, Ordering::Relaxed) + 1
    }
}

// A poisoned lock means a thread panicked while holding it; the data structures here stay
// consistent across a panic (every update is a single insert or remove), so keep serving.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}
