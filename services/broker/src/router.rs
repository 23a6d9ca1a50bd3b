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

/// Identifies one live connection within the process.
pub type ConnectionId = u64;

/// An application message as accepted from a publisher. Shared (behind an `Arc`) by every
/// subscriber it is delivered to: the payload is never copied per subscriber.
#[derive(Clone, Debug)]
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
            Some(scope) if message.topic.starts_with("$devices/") => {
                message.origin_registry.as_ref() == Some(scope)
            }
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
    pub fn subscribe(
        &self,
        filter: &TopicFilter,
        connection: ConnectionId,
        subscriber: Subscriber,
    ) {
        write(&self.subscriptions).insert(filter, connection, subscriber);
    }

    pub fn unsubscribe(&self, filter: &str, connection: ConnectionId) -> bool {
        write(&self.subscriptions)
            .remove(filter, &connection)
            .is_some()
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
            let outgoing = Outgoing {
                message: message.clone(),
                qos: message.qos.min(subscriber.qos),
                retain: false,
            };
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
        write(&self.namespaces)
            .entry(namespace.clone())
            .or_default()
            .clone()
    }

    /// The namespaces that exist now, for reloading rule indexes.
    pub fn loaded(&self) -> Vec<(Namespace, Arc<NamespaceRoutes>)> {
        read(&self.namespaces)
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use iotcore_topic::TopicLimits;

    fn message(topic: &str, qos: QoS, origin_registry: Option<&RegistryId>) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"p"),
            qos,
            retain: false,
            content_type: None,
            payload_format_indicator: None,
            user_properties: Vec::new(),
            origin: Some(1),
            origin_registry: origin_registry.cloned(),
        })
    }

    fn subscriber(qos: QoS, scope: Option<RegistryId>) -> (Subscriber, mpsc::Receiver<Outgoing>) {
        let (mailbox, rx) = mpsc::channel(2);
        (
            Subscriber {
                mailbox,
                qos,
                no_local: false,
                registry_scope: scope,
            },
            rx,
        )
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s, TopicLimits::default()).expect("valid filter")
    }

    #[test]
    fn overlapping_filters_deliver_once_with_the_highest_qos() {
        let routes = NamespaceRoutes::default();
        let (sub0, mut rx) = subscriber(QoS::AtMostOnce, None);
        let sub1 = Subscriber {
            qos: QoS::AtLeastOnce,
            ..sub0.clone()
        };
        routes.subscribe(&filter("a/#"), 7, sub0);
        routes.subscribe(&filter("a/+"), 7, sub1);
        let outcome = routes.route(&message("a/b", QoS::AtLeastOnce, None));
        assert_eq!(
            outcome,
            RouteOutcome {
                delivered: 1,
                dropped: 0
            }
        );
        assert_eq!(rx.try_recv().map(|o| o.qos).ok(), Some(QoS::AtLeastOnce));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_mailbox_drops_for_that_subscriber_only() {
        let routes = NamespaceRoutes::default();
        let (slow, _slow_rx) = subscriber(QoS::AtMostOnce, None);
        let (fast, mut fast_rx) = subscriber(QoS::AtMostOnce, None);
        routes.subscribe(&filter("t"), 1, slow);
        routes.subscribe(&filter("t"), 2, fast);
        for _ in 0..2 {
            routes.route(&message("t", QoS::AtMostOnce, None));
            assert!(fast_rx.try_recv().is_ok());
        }
        let outcome = routes.route(&message("t", QoS::AtMostOnce, None));
        assert_eq!(
            outcome,
            RouteOutcome {
                delivered: 1,
                dropped: 1
            }
        );
    }

    #[test]
    fn registry_scoped_subscribers_get_device_topics_of_their_registry_only() {
        let mine = RegistryId::generate();
        let theirs = RegistryId::generate();
        let routes = NamespaceRoutes::default();
        let (sub, mut rx) = subscriber(QoS::AtMostOnce, Some(mine.clone()));
        routes.subscribe(&filter("$devices/+/events/#"), 1, sub);
        routes.route(&message(
            "$devices/x/events",
            QoS::AtMostOnce,
            Some(&theirs),
        ));
        assert!(rx.try_recv().is_err());
        routes.route(&message("$devices/x/events", QoS::AtMostOnce, Some(&mine)));
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn retained_messages_are_replaced_and_deleted_by_an_empty_payload() {
        let routes = NamespaceRoutes::default();
        routes.retain(&message("s/1", QoS::AtMostOnce, None));
        routes.retain(&message("s/2", QoS::AtMostOnce, None));
        assert_eq!(routes.retained_matching("s/#").len(), 2);
        let empty = Arc::new(Message {
            payload: Bytes::new(),
            ..(*message("s/1", QoS::AtMostOnce, None)).clone()
        });
        routes.retain(&empty);
        let left: Vec<_> = routes
            .retained_matching("#")
            .iter()
            .map(|m| m.topic.clone())
            .collect();
        assert_eq!(left, vec!["s/2".to_owned()]);
    }

    #[test]
    fn namespaces_do_not_share_state() {
        let router = Router::default();
        let a = Namespace::Tenant(TenantId::generate());
        let b = Namespace::Tenant(TenantId::generate());
        let (sub, mut rx) = subscriber(QoS::AtMostOnce, None);
        router.namespace(&a).subscribe(&filter("#"), 1, sub);
        router
            .namespace(&a)
            .retain(&message("r", QoS::AtMostOnce, None));
        assert_eq!(
            router
                .namespace(&b)
                .route(&message("x", QoS::AtMostOnce, None))
                .delivered,
            0
        );
        assert!(router.namespace(&b).retained_matching("#").is_empty());
        assert!(rx.try_recv().is_err());
    }
}
