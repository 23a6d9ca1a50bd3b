//! SUBSCRIBE and UNSUBSCRIBE: the ACL's containment check, the router's trie, and the
//! retained messages a new subscription receives (SPEC §3.1, §4.2).

use crate::connection::{Io, Session};
use crate::router::{Outgoing, Subscriber};
use iotcore_codec::{
    Packet, Properties, ProtocolVersion, QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use iotcore_store::sessions::StoredSubscription;
use iotcore_topic::{Subscription, TopicFilter};
use tokio::io::{AsyncRead, AsyncWrite};

impl Session {
    pub fn on_subscribe<R, W>(&mut self, subscribe: Subscribe, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let v5 = self.version == ProtocolVersion::V5;
        let failure = |code: ReasonCode| if v5 { code } else { ReasonCode(0x80) };
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        let acl = self.accepted.acl.current();
        for (raw, options) in &subscribe.filters {
            let reason = match TopicFilter::parse_subscription(raw, self.shared.limits) {
                Err(_) => failure(ReasonCode::TOPIC_FILTER_INVALID),
                Ok(Subscription { filter, .. }) if !acl.allows_subscribe(filter.as_str()) => {
                    failure(ReasonCode::NOT_AUTHORIZED)
                }
                Ok(Subscription { .. })
                    if !self.subscriptions.contains_key(raw)
                        && self.subscriptions.len() >= self.shared.config.max_subscriptions =>
                {
                    failure(ReasonCode::QUOTA_EXCEEDED)
                }
                Ok(subscription) => {
                    let subscriber = Subscriber {
                        mailbox: self.mailbox.clone(),
                        qos: options.qos,
                        // No Local on a shared subscription never gets here: it is a
                        // protocol error (MQTT-3.8.3-4), refused before the SUBSCRIBE.
                        no_local: options.no_local,
                        retain_as_published: options.retain_as_published,
                        subscription_id,
                        registry_scope: acl.registry_scope.clone(),
                        acl: Some(self.accepted.acl.clone()),
                        delivers_all: self.accepted.acl.delivers_all(subscription.filter.as_str()),
                    };
                    let existed = self
                        .subscriptions
                        .insert(raw.clone(), subscription.clone())
                        .is_some();
                    if !existed {
                        self.metrics.subscriptions().inc();
                    }
                    // MQTT-3.8.4-3: a subscription to the same filter replaces the old one.
                    self.routes
                        .subscribe(&subscription, self.id, subscriber.clone());
                    if let Some(journal) = self.mailbox.journal() {
                        journal.subscribed(StoredSubscription {
                            filter: raw.clone(),
                            qos: options.qos as u8,
                            no_local: subscriber.no_local,
                            retain_as_published: subscriber.retain_as_published,
                            subscription_id,
                        });
                    }
                    // Retain Handling: 0 always, 1 only for a new subscription, 2 never; and
                    // never for a shared subscription (MQTT 5 §4.8.2).
                    let wants_retained =
                        options.retain_handling == 0 || (options.retain_handling == 1 && !existed);
                    if wants_retained && subscription.share_group.is_none() {
                        retained.push((subscription.filter, subscriber));
                    }
                    ReasonCode(options.qos as u8)
                }
            };
            reasons.push(reason);
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties: Properties::default(),
        };
        self.reply(&Packet::SubAck(suback), io);
        // MQTT-3.3.1-6: retained messages follow the SUBACK, with RETAIN set.
        for (filter, subscriber) in retained {
            for message in self.routes.retained_matching(filter.as_str()) {
                if !subscriber.in_scope(&message) {
                    continue;
                }
                let outgoing = Outgoing {
                    qos: message.qos.min(subscriber.qos),
                    message,
                    retain: true,
                    subscription_ids: subscriber.subscription_id.into_iter().collect(),
                    seq: 0,
                };
                // Through our own bounded mailbox, so they obey the in-flight window.
                self.mailbox.push(outgoing);
            }
        }
    }

    /// Brings the session's subscriptions in line with its current rights (SPEC §4.2):
    /// those no longer granted are removed (they stop receiving at once), and the others
    /// follow this connection's rights from now on (a resumed session's subscriptions
    /// were made under an earlier connection).
    pub fn recheck_subscriptions(&mut self) {
        let acl = self.accepted.acl.current();
        let mut revoked = Vec::new();
        for (raw, subscription) in &self.subscriptions {
            if !acl.allows_subscribe(subscription.filter.as_str()) {
                revoked.push(raw.clone());
                continue;
            }
            if let Some(mut subscriber) = self.routes.subscriber(subscription, self.id) {
                let delivers_all = self.accepted.acl.delivers_all(subscription.filter.as_str());
                if !subscriber
                    .acl
                    .as_ref()
                    .is_some_and(|live| live.same(&self.accepted.acl))
                    || subscriber.delivers_all != delivers_all
                {
                    subscriber.acl = Some(self.accepted.acl.clone());
                    subscriber.delivers_all = delivers_all;
                    self.routes.subscribe(subscription, self.id, subscriber);
                }
            }
        }
        for raw in revoked {
            tracing::info!(filter = raw, "subscription no longer allowed; removed");
            if let Some(subscription) = self.subscriptions.remove(&raw) {
                self.metrics.subscriptions().dec();
                self.routes.unsubscribe(&subscription, self.id);
            }
            if let Some(journal) = self.mailbox.journal() {
                journal.unsubscribed(&raw);
            }
        }
    }

    pub fn on_unsubscribe<R, W>(&mut self, unsubscribe: Unsubscribe, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for raw in &unsubscribe.filters {
            let existed = match self.subscriptions.remove(raw) {
                Some(subscription) => {
                    self.metrics.subscriptions().dec();
                    self.routes.unsubscribe(&subscription, self.id)
                }
                None => false,
            };
            if let Some(journal) = self.mailbox.journal() {
                journal.unsubscribed(raw);
            }
            reasons.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        if self.version != ProtocolVersion::V5 {
            reasons.clear();
        }
        let properties = Properties::default();
        let unsuback = UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
            properties,
        };
        self.reply(&Packet::UnsubAck(unsuback), io);
    }
}

/// QoS is carried as its number in SUBACK (MQTT-3.9.3).
const _: () = assert!(QoS::ExactlyOnce as u8 == 2);
