//! The router: who is subscribed to what, per namespace, and the retained messages.
//!
//! Every topic lives in a [`Namespace`] (a tenant's registry namespace, or one virtual
//! broker of a tenant), and each namespace has its own trie and retained store. There is
//! no code path from one namespace's state to another's: tenant isolation (SPEC §3.2)
//! follows from the data structure, not from checks that could be forgotten.

pub use crate::mailbox::Mailbox;
use crate::mailbox::Pushed;
use crate::rules::RuleIndex;
use bytes::Bytes;
use iotcore_codec::QoS;
use iotcore_store::{BrokerId, RegistryId, TenantId};
use iotcore_telemetry::metrics::mqtt::{DROPPED, DROP_QUEUE_FULL};
use iotcore_telemetry::Counter;
#[cfg(test)]
use iotcore_topic::TopicFilter;
use iotcore_topic::{matches, Subscription, TopicTrie};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

/// Whether a routed QoS 0 message may be written to idle plain TCP subscribers' sockets by
/// the publisher's task ([`crate::mailbox`]), or goes through their queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// A message on its own (the last packet of its read): written directly where the
    /// subscriber is idle, which spares waking its task.
    Direct,
    /// Part of a burst, or from a will or the API: queued, so that each subscriber's task
    /// writes many messages with one write.
    Queued,
}

/// The most subscribers a message is written to directly by its publisher's task.
pub const MAX_DIRECT_TARGETS: usize = 4;

/// An isolated topic space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// The tenant's registries and devices, with the `$devices/…` and `$registries/…` topics.
    Tenant(TenantId),
    /// A virtual broker of the tenant (SPEC §3.6).
    Broker(TenantId, BrokerId),
}

impl Namespace {
    pub fn tenant_id(&self) -> &TenantId {
        match self {
            Namespace::Tenant(tenant) | Namespace::Broker(tenant, _) => tenant,
        }
    }
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
    pub properties: MessageProperties,
    /// The connection that published it (for MQTT 5 No Local); `None` for the API.
    pub origin: Option<ConnectionId>,
    /// The registry the message comes from: the publishing device's or registry client's.
    /// Registry clients receive `$devices/…` messages only from their own registry.
    pub origin_registry: Option<RegistryId>,
}

/// The MQTT 5 properties a message carries from publisher to subscribers unchanged
/// (MQTT-3.3.2-4, -15, -16, -17, -18).
#[derive(Clone, Debug, Default)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    /// When the message expires (MQTT 5 Message Expiry Interval); `None` never.
    pub expires_at: Option<Instant>,
}

impl MessageProperties {
    /// No property is passed on (an MQTT 5 PUBLISH carries none of them).
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.expires_at.is_none()
    }
}

impl Message {
    /// Whether the message's expiry interval has passed (MQTT-3.3.2-5).
    pub fn expired(&self, now: Instant) -> bool {
        self.properties.expires_at.is_some_and(|at| at <= now)
    }

    /// The Message Expiry Interval to send on: what is left of it (MQTT-3.3.2-6).
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let left = self.properties.expires_at?.saturating_duration_since(now);
        Some(u32::try_from(left.as_secs()).unwrap_or(u32::MAX).max(1))
    }
}

/// One message on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub message: Arc<Message>,
    /// The QoS it is delivered with: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// The RETAIN flag as sent: set for retained messages sent on subscribe, and on live
    /// messages only for Retain As Published subscriptions (MQTT-3.3.1-12/13).
    pub retain: bool,
    /// MQTT 5 Subscription Identifiers of the matching subscriptions (MQTT-3.3.4-3).
    pub subscription_ids: Vec<u32>,
    /// Its place in the session's queue, set by the [`Mailbox`] (persistent sessions store
    /// messages under it).
    pub seq: u64,
}

/// A subscription as the router sees it.
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub mailbox: Mailbox,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub subscription_id: Option<u32>,
    /// For registry clients: deliver `$devices/…` messages only from this registry.
    pub registry_scope: Option<RegistryId>,
    /// The session's current rights: topics of a denied subscribe filter are not
    /// delivered (SPEC §4.2). `None` for a session restored from the store until its
    /// client is back.
    pub acl: Option<crate::policies::LiveAcl>,
    /// The generation of `acl` under which every topic of the subscription's filter is
    /// delivered ([`crate::policies::LiveAcl::delivers_all`]): no check per message while
    /// it is current.
    pub delivers_all: Option<u64>,
}

impl Subscriber {
    fn accepts(&self, connection: ConnectionId, message: &Message) -> bool {
        if self.no_local && message.origin == Some(connection) {
            return false;
        }
        self.in_scope(message)
    }

    /// The registry scope of SPEC §3.4 and the denied subscribe filters of SPEC §4.2,
    /// also applied to retained messages.
    pub fn in_scope(&self, message: &Message) -> bool {
        let scoped = match &self.registry_scope {
            Some(scope) if message.topic.starts_with("$devices/") => {
                message.origin_registry.as_ref() == Some(scope)
            }
            _ => true,
        };
        scoped
            && self
                .acl
                .as_ref()
                .is_none_or(|acl| acl.delivers_from(self.delivers_all, &message.topic))
    }
}

/// A member of a shared subscription: its group and its session.
type SharedKey = (Arc<str>, ConnectionId);

/// The routing state of one namespace.
pub struct NamespaceRoutes {
    namespace: Namespace,
    subscriptions: RwLock<TopicTrie<ConnectionId, Subscriber>>,
    /// Shared subscriptions (`$share/{group}/{filter}`), keyed by group and session; the
    /// value carries the filter, since a message goes to one member of each
    /// (group, filter) pair.
    shared: RwLock<TopicTrie<SharedKey, (Arc<str>, Subscriber)>>,
    /// Picks the member of a shared subscription that gets the next message.
    round_robin: AtomicU64,
    retained: Mutex<HashMap<String, Arc<Message>>>,
    /// Set once the namespace's retained messages were loaded from the store.
    pub retained_loaded: tokio::sync::OnceCell<()>,
    /// Rule filters of the tenant (only for [`Namespace::Tenant`]).
    pub rules: RwLock<Option<Arc<RuleIndex>>>,
    /// The tenant's `iotcore_mqtt_dropped_total{reason="queue_full"}`, looked up once.
    queue_full_drops: OnceLock<Counter>,
}

/// How a publish fared, for metrics and MQTT 5 reason codes.
#[derive(Debug, Default, Clone)]
pub struct RouteOutcome {
    pub delivered: usize,
    /// Messages dropped because a subscriber's queue was full: this one (QoS 0, or every
    /// member of a shared subscription full), or an older one it pushed out (QoS 1/2).
    /// Counted in `iotcore_mqtt_dropped_total{reason="queue_full"}` by
    /// [`crate::publish::publish`].
    pub dropped: usize,
    /// A subscriber's queue that was full, whose consumer is not stalled: the publisher
    /// waits for it to make room before reading more ([`Mailbox::room`]).
    pub full: Option<Mailbox>,
}

impl RouteOutcome {
    fn count(&mut self, mailbox: &Mailbox, (pushed, full): (Pushed, bool)) {
        if full && self.full.is_none() {
            self.full = Some(mailbox.clone());
        }
        match pushed {
            Pushed::Queued => self.delivered += 1,
            // A slow consumer or an absent client: the oldest message waiting for it made
            // room (SPEC §3.1).
            Pushed::QueuedDroppingOldest => {
                self.delivered += 1;
                self.dropped += 1;
            }
            // A full mailbox (QoS 0), or a closed one that belongs to a connection that is
            // going away (its subscriptions are removed as it ends).
            Pushed::Dropped => self.dropped += 1,
        }
    }
}

impl NamespaceRoutes {
    pub fn new(namespace: Namespace) -> NamespaceRoutes {
        NamespaceRoutes {
            namespace,
            subscriptions: RwLock::default(),
            shared: RwLock::default(),
            round_robin: AtomicU64::new(0),
            retained: Mutex::default(),
            retained_loaded: tokio::sync::OnceCell::new(),
            rules: RwLock::default(),
            queue_full_drops: OnceLock::new(),
        }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Counts messages dropped because a subscriber's queue was full (SPEC §3.1).
    pub fn count_queue_full_drops(&self, dropped: usize) {
        self.queue_full_drops
            .get_or_init(|| DROPPED.with(&[self.namespace.tenant_id().as_str(), DROP_QUEUE_FULL]))
            .add(dropped as u64);
    }

    /// The tenant whose rules apply to this namespace: only a tenant's registry namespace
    /// has rules.
    pub fn tenant(&self) -> Option<&TenantId> {
        match &self.namespace {
            Namespace::Tenant(tenant) => Some(tenant),
            Namespace::Broker(..) => None,
        }
    }

    /// Adds or replaces a subscription of `connection`; `share` is the group of a shared
    /// subscription.
    pub fn subscribe(
        &self,
        subscription: &Subscription,
        connection: ConnectionId,
        subscriber: Subscriber,
    ) {
        match &subscription.share_group {
            None => {
                write(&self.subscriptions).insert(&subscription.filter, connection, subscriber);
            }
            Some(group) => {
                let filter: Arc<str> = subscription.filter.as_str().into();
                write(&self.shared).insert(
                    &subscription.filter,
                    (group.as_str().into(), connection),
                    (filter, subscriber),
                );
            }
        }
    }

    /// The subscriber `connection` registered for `subscription`, if any.
    pub fn subscriber(
        &self,
        subscription: &Subscription,
        connection: ConnectionId,
    ) -> Option<Subscriber> {
        let filter = subscription.filter.as_str();
        match &subscription.share_group {
            None => read(&self.subscriptions).get(filter, &connection).cloned(),
            Some(group) => read(&self.shared)
                .get(filter, &(group.as_str().into(), connection))
                .map(|(_, subscriber)| subscriber.clone()),
        }
    }

    pub fn unsubscribe(&self, subscription: &Subscription, connection: ConnectionId) -> bool {
        let filter = subscription.filter.as_str();
        match &subscription.share_group {
            None => write(&self.subscriptions)
                .remove(filter, &connection)
                .is_some(),
            Some(group) => write(&self.shared)
                .remove(filter, &(group.as_str().into(), connection))
                .is_some(),
        }
    }

    /// [`NamespaceRoutes::route_with`] through the queues only.
    #[cfg(test)]
    pub fn route(&self, message: &Arc<Message>) -> RouteOutcome {
        self.route_with(message, Writes::Queued)
    }

    /// Hands `message` to every matching subscriber's queue without waiting: a full queue
    /// drops the message for that subscriber only (SPEC §3.1, slow consumers). With
    /// [`Writes::Direct`], a QoS 0 message for at most [`MAX_DIRECT_TARGETS`] subscribers may
    /// be written to their sockets by the caller instead.
    ///
    /// The subscribers are used in place, under the trie's read lock (a push never waits):
    /// nothing of a subscriber is copied per message, only the message's `Arc`.
    pub fn route_with(&self, message: &Arc<Message>, writes: Writes) -> RouteOutcome {
        let mut outcome = RouteOutcome::default();
        {
            let trie = read(&self.subscriptions);
            let mut targets: Vec<(ConnectionId, &Subscriber)> = Vec::new();
            trie.for_each_match(&message.topic, |connection, subscriber| {
                if subscriber.accepts(*connection, message) {
                    targets.push((*connection, subscriber));
                }
            });
            // A connection whose filters overlap gets the message once, with the highest QoS
            // of its matching subscriptions and all their subscription identifiers
            // (MQTT-3.3.4-2/3 allow one copy; it is what clients of AWS IoT Core and
            // Mosquitto observe).
            if targets.len() > 1 {
                targets.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.qos.cmp(&a.1.qos)));
            }
            // Writing to many sockets from the publisher's task would serialize a fan-out on
            // one thread, one syscall per subscriber; their own tasks write in parallel.
            let direct = writes == Writes::Direct && targets.len() <= MAX_DIRECT_TARGETS;
            let mut i = 0;
            while i < targets.len() {
                let (connection, best) = targets[i];
                let mut subscription_ids = Vec::new();
                let mut j = i;
                while j < targets.len() && targets[j].0 == connection {
                    subscription_ids.extend(targets[j].1.subscription_id);
                    j += 1;
                }
                let outgoing = Outgoing {
                    message: message.clone(),
                    qos: message.qos.min(best.qos),
                    retain: message.retain && best.retain_as_published,
                    subscription_ids,
                    seq: 0,
                };
                outcome.count(&best.mailbox, best.mailbox.push_full(outgoing, direct));
                i = j;
            }
        }
        self.route_shared(message, &mut outcome);
        outcome
    }

    /// MQTT-4.8.2: each (group, filter) pair of shared subscriptions that matches gets the
    /// message once, delivered to one of its members in turn (skipping members whose queue
    /// is full).
    fn route_shared(&self, message: &Arc<Message>, outcome: &mut RouteOutcome) {
        let trie = read(&self.shared);
        let mut groups: Vec<(&str, &str, ConnectionId, &Subscriber)> = Vec::new();
        trie.for_each_match(
            &message.topic,
            |(group, connection), (filter, subscriber)| {
                if subscriber.in_scope(message) {
                    groups.push((&**group, &**filter, *connection, subscriber));
                }
            },
        );
        if groups.is_empty() {
            return;
        }
        // Members in a stable order, so that the turn moves fairly from one to the next.
        groups.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
        let turn = self.round_robin.fetch_add(1, Ordering::Relaxed) as usize;
        let mut start = 0;
        while start < groups.len() {
            let mut end = start;
            while end < groups.len()
                && groups[end].0 == groups[start].0
                && groups[end].1 == groups[start].1
            {
                end += 1;
            }
            let members = &groups[start..end];
            let outgoing_to = |subscriber: &Subscriber| Outgoing {
                message: message.clone(),
                qos: message.qos.min(subscriber.qos),
                retain: message.retain && subscriber.retain_as_published,
                subscription_ids: subscriber.subscription_id.into_iter().collect(),
                seq: 0,
            };
            let mut delivered = false;
            for k in 0..members.len() {
                let (_, _, _, subscriber) = members[(turn + k) % members.len()];
                if subscriber.mailbox.try_push(outgoing_to(subscriber)).is_ok() {
                    delivered = true;
                    break;
                }
            }
            if delivered {
                outcome.delivered += 1;
            } else {
                // Every member is full: the member whose turn it is drops its oldest
                // message for a QoS 1/2 one (SPEC §3.1), and a QoS 0 one is dropped.
                let (_, _, _, subscriber) = members[turn % members.len()];
                match subscriber.mailbox.push(outgoing_to(subscriber)) {
                    Pushed::Dropped => {}
                    _ => outcome.delivered += 1,
                }
                outcome.dropped += 1;
            }
            start = end;
        }
    }

    /// Stores, replaces or (with an empty payload) deletes the retained message of a topic.
    ///
    /// At most `max` topics are retained per namespace, so that no client can grow the
    /// broker's memory (or the database) without bound: beyond it a message for a new topic
    /// is not retained (it is still delivered), while retained topics can still be replaced
    /// or deleted. Returns whether the retained store changed.
    pub fn retain(&self, message: &Arc<Message>, max: usize) -> bool {
        let mut retained = lock(&self.retained);
        if message.payload.is_empty() {
            retained.remove(&message.topic).is_some()
        } else if retained.len() >= max && !retained.contains_key(&message.topic) {
            false
        } else {
            retained.insert(message.topic.clone(), message.clone());
            true
        }
    }

    /// How many topics have a retained message.
    pub fn retained_count(&self) -> usize {
        lock(&self.retained).len()
    }

    /// The retained messages whose topic matches `filter`.
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        lock(&self.retained)
            .values()
            .filter(|m| matches(filter, &m.topic) && !m.expired(Instant::now()))
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
            .or_insert_with(|| Arc::new(NamespaceRoutes::new(namespace.clone())))
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
            properties: MessageProperties::default(),
            origin: Some(1),
            origin_registry: origin_registry.cloned(),
        })
    }

    fn subscriber(qos: QoS, scope: Option<RegistryId>) -> (Subscriber, crate::mailbox::Queue) {
        let (mailbox, rx) = crate::mailbox::channel(2, None);
        let subscriber = Subscriber {
            mailbox,
            qos,
            no_local: false,
            retain_as_published: false,
            subscription_id: None,
            registry_scope: scope,
            acl: None,
            delivers_all: None,
        };
        (subscriber, rx)
    }

    fn filter(s: &str) -> Subscription {
        let filter = TopicFilter::parse(s, TopicLimits::default()).expect("valid filter");
        Subscription {
            share_group: None,
            filter,
        }
    }

    fn shared(group: &str, s: &str) -> Subscription {
        Subscription {
            share_group: Some(group.into()),
            ..filter(s)
        }
    }

    #[test]
    fn a_shared_subscription_gets_each_message_once_in_turn() {
        let routes = NamespaceRoutes::new(Namespace::Tenant(TenantId::generate()));
        let (a, mut rx_a) = subscriber(QoS::AtMostOnce, None);
        let (b, mut rx_b) = subscriber(QoS::AtMostOnce, None);
        let (other_group, mut rx_other) = subscriber(QoS::AtMostOnce, None);
        routes.subscribe(&shared("g", "t/#"), 1, a);
        routes.subscribe(&shared("g", "t/#"), 2, b);
        routes.subscribe(&shared("h", "t/#"), 3, other_group);
        for _ in 0..2 {
            assert_eq!(
                routes
                    .route(&message("t/x", QoS::AtMostOnce, None))
                    .delivered,
                2
            );
        }
        // Each member of group g got one of the two; group h got both.
        assert!(rx_a.try_recv().is_ok() && rx_b.try_recv().is_ok());
        assert!(rx_a.try_recv().is_err() && rx_b.try_recv().is_err());
        assert!(rx_other.try_recv().is_ok() && rx_other.try_recv().is_ok());
        assert!(routes.unsubscribe(&shared("g", "t/#"), 1));
        assert!(
            !routes.unsubscribe(&filter("t/#"), 2),
            "a shared subscription is not an ordinary one"
        );
    }

    /// A lone QoS 0 message is written straight to the sockets of at most
    /// `MAX_DIRECT_TARGETS` idle subscribers; for more, or when it is part of a burst, every
    /// subscriber gets it through its queue.
    #[test]
    fn direct_writes_are_for_lone_messages_to_few_subscribers() {
        use crate::mailbox::tests::{direct_to, socket_pair};
        let queued = |count: usize, writes: Writes| -> usize {
            let routes = NamespaceRoutes::new(Namespace::Tenant(TenantId::generate()));
            let mut queues = Vec::new();
            let mut sockets = Vec::new();
            for connection in 0..count {
                let (subscriber, queue) = subscriber(QoS::AtMostOnce, None);
                let (server, client) = socket_pair();
                queue.attach(|| Some(direct_to(&server, iotcore_codec::ProtocolVersion::V3_1_1)));
                routes.subscribe(&filter("t"), connection as ConnectionId + 10, subscriber);
                queues.push(queue);
                sockets.push((server, client));
            }
            let outcome = routes.route_with(&message("t", QoS::AtMostOnce, None), writes);
            assert_eq!(outcome.delivered, count);
            let queued = queues
                .iter_mut()
                .map(|queue| queue.try_recv().is_ok())
                .filter(|&got| got)
                .count();
            for queue in &queues {
                queue.detach();
            }
            queued
        };
        assert_eq!(queued(MAX_DIRECT_TARGETS, Writes::Direct), 0, "written");
        assert_eq!(
            queued(MAX_DIRECT_TARGETS + 1, Writes::Direct),
            MAX_DIRECT_TARGETS + 1
        );
        assert_eq!(queued(1, Writes::Queued), 1);
    }

    #[test]
    fn overlapping_filters_deliver_once_with_the_highest_qos() {
        let routes = NamespaceRoutes::new(Namespace::Tenant(TenantId::generate()));
        let (sub0, mut rx) = subscriber(QoS::AtMostOnce, None);
        let sub0 = Subscriber {
            subscription_id: Some(10),
            ..sub0
        };
        let sub1 = Subscriber {
            qos: QoS::AtLeastOnce,
            subscription_id: Some(11),
            ..sub0.clone()
        };
        routes.subscribe(&filter("a/#"), 7, sub0);
        routes.subscribe(&filter("a/+"), 7, sub1);
        let outcome = routes.route(&message("a/b", QoS::AtLeastOnce, None));
        assert_eq!((outcome.delivered, outcome.dropped), (1, 0));
        assert!(outcome.full.is_none());
        let outgoing = rx.try_recv().expect("one copy");
        assert_eq!(outgoing.qos, QoS::AtLeastOnce);
        let mut ids = outgoing.subscription_ids.clone();
        ids.sort();
        assert_eq!(ids, vec![10, 11], "MQTT-3.3.4-3: every matching identifier");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_mailbox_drops_for_that_subscriber_only() {
        let routes = NamespaceRoutes::new(Namespace::Tenant(TenantId::generate()));
        let (slow, _slow_rx) = subscriber(QoS::AtMostOnce, None);
        let (fast, mut fast_rx) = subscriber(QoS::AtMostOnce, None);
        routes.subscribe(&filter("t"), 1, slow);
        routes.subscribe(&filter("t"), 2, fast);
        for _ in 0..2 {
            routes.route(&message("t", QoS::AtMostOnce, None));
            assert!(fast_rx.try_recv().is_ok());
        }
        let outcome = routes.route(&message("t", QoS::AtMostOnce, None));
        assert_eq!((outcome.delivered, outcome.dropped), (1, 1));
        // The publisher is told which queue was full, to wait for room before reading on.
        assert!(outcome.full.is_some());
    }

    #[test]
    fn registry_scoped_subscribers_get_device_topics_of_their_registry_only() {
        let mine = RegistryId::generate();
        let theirs = RegistryId::generate();
        let routes = NamespaceRoutes::new(Namespace::Tenant(TenantId::generate()));
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
        let routes = NamespaceRoutes::new(Namespace::Tenant(TenantId::generate()));
        routes.retain(&message("s/1", QoS::AtMostOnce, None), usize::MAX);
        routes.retain(&message("s/2", QoS::AtMostOnce, None), usize::MAX);
        assert_eq!(routes.retained_matching("s/#").len(), 2);
        let empty = Arc::new(Message {
            payload: Bytes::new(),
            ..(*message("s/1", QoS::AtMostOnce, None)).clone()
        });
        routes.retain(&empty, usize::MAX);
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
            .retain(&message("r", QoS::AtMostOnce, None), usize::MAX);
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

    #[test]
    fn the_retained_store_of_a_namespace_is_bounded() {
        let routes = NamespaceRoutes::new(Namespace::Tenant(TenantId::generate()));
        assert!(routes.retain(&message("a", QoS::AtMostOnce, None), 2));
        assert!(routes.retain(&message("b", QoS::AtMostOnce, None), 2));
        assert!(
            !routes.retain(&message("c", QoS::AtMostOnce, None), 2),
            "a third topic is refused"
        );
        assert!(
            routes.retain(&message("a", QoS::AtMostOnce, None), 2),
            "a retained topic is replaced"
        );
        let empty = Arc::new(Message {
            payload: Bytes::new(),
            ..(*message("b", QoS::AtMostOnce, None)).clone()
        });
        assert!(routes.retain(&empty, 2), "and deleted");
        assert!(
            routes.retain(&message("c", QoS::AtMostOnce, None), 2),
            "which makes room"
        );
        assert_eq!(routes.retained_matching("#").len(), 2);
    }
}
