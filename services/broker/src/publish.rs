//! The one path every accepted message takes, whoever published it (a client, a will, the
//! API): rule matches made durable first, then the retained store, then the subscribers.

use crate::auth::Principal;
use crate::broker::Shared;
use crate::limits::Refusal;
use crate::router::{Message, NamespaceRoutes, RouteOutcome, Writes};
use crate::rules::{deliveries_for, EnqueueError};
use iotcore_codec::QoS;
use iotcore_store::auth::PrincipalKind;
use std::sync::Arc;

/// Publishes `message` in `routes`' namespace on behalf of `principal` (`None` for the
/// API). For QoS 1 and 2 the rule matches are committed before this returns, so the caller
/// may acknowledge the publisher; an `Err` means nothing was routed and the publisher must
/// not be told the message was accepted.
pub async fn publish(
    shared: &Shared,
    routes: &NamespaceRoutes,
    principal: Option<&Principal>,
    message: Arc<Message>,
) -> Result<RouteOutcome, EnqueueError> {
    publish_with(shared, routes, principal, message, Writes::Queued).await
}

/// [`publish`], with `writes` saying whether a QoS 0 message may be written to idle plain
/// TCP subscribers' sockets directly ([`crate::mailbox`]).
pub async fn publish_with(
    shared: &Shared,
    routes: &NamespaceRoutes,
    principal: Option<&Principal>,
    message: Arc<Message>,
    writes: Writes,
) -> Result<RouteOutcome, EnqueueError> {
    enqueue_rule_matches(shared, routes, principal, &message).await?;
    if message.retain {
        // The tenant's quota (SPEC §7.3) applies to each of its namespaces, within the
        // operator's bound per namespace.
        let tenant = shared.quotas.loaded(routes.namespace().tenant_id());
        let max = tenant
            .as_ref()
            .map_or(usize::MAX, |tenant| tenant.max_retained())
            .min(shared.config.max_retained_per_namespace);
        if routes.retain(&message, max) {
            shared.retained.record(routes.namespace(), &message);
        } else if !message.payload.is_empty() {
            if let Some(tenant) = &tenant {
                tenant.refused(Refusal::TenantRetained);
            }
            tracing::warn!(
                topic = message.topic,
                "retained message limit reached; not retained"
            );
        }
    }
    let outcome = routes.route_with(&message, writes);
    if outcome.dropped > 0 {
        // Counted here, once per publish, for every kind of publisher (clients, wills, the
        // API): QoS 0 messages to full queues and the oldest messages that QoS 1/2 ones
        // pushed out (SPEC §3.1).
        routes.count_queue_full_drops(outcome.dropped);
    }
    Ok(outcome)
}

async fn enqueue_rule_matches(
    shared: &Shared,
    routes: &NamespaceRoutes,
    principal: Option<&Principal>,
    message: &Message,
) -> Result<(), EnqueueError> {
    let Some(index) = routes.rule_index() else {
        return Ok(());
    };
    let rules = index.matching(message);
    if rules.is_empty() {
        return Ok(());
    }
    let Some(tenant) = routes.tenant() else {
        return Ok(());
    };
    let device = principal.and_then(|p| match &p.kind {
        PrincipalKind::Device { device_id, .. } => Some(device_id),
        _ => None,
    });
    let deliveries = deliveries_for(tenant, device, rules, message, chrono::Utc::now());
    if message.qos == QoS::AtMostOnce {
        // QoS 0 matches may be lost on a crash (SPEC §5); they never hold up the publisher.
        if !shared.rules.enqueue_best_effort(deliveries) {
            if let Some(dropped) = SATURATED.note(std::time::Instant::now()) {
                // Once per interval, not once per message: a saturated writer would
                // otherwise flood the log at the publish rate.
                tracing::warn!(dropped, "rule writer saturated; QoS 0 rule matches dropped");
            }
        }
        return Ok(());
    }
    // Boxed: it waits on the store, rarely; unboxed, every connection's task would keep
    // room for it for its whole life (its packet handling is part of the task's state).
    Box::pin(shared.rules.enqueue_durable(deliveries)).await
}

/// QoS 0 messages whose rule matches were dropped because the rule writer was saturated.
static SATURATED: Throttled = Throttled::new(std::time::Duration::from_secs(10));

/// Counts events and says how many there were at most once per `every`, so that an event
/// that can happen per message is logged per interval.
struct Throttled {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttled {
    const fn new(every: std::time::Duration) -> Throttled {
        Throttled {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Records one event at `now`; the events counted since the last report (this one
    /// included) when a report is due: the first event, then once per `every`.
    fn note(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, count) = &mut *state;
        *count += 1;
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }
}

/// The ACL decision for a PUBLISH (or a will) to `topic`, including the registry scope of
/// registry clients (SPEC §3.4), which needs the store to know a device's registry.
pub async fn allowed(
    shared: &Shared,
    principal: &Principal,
    acl: &crate::acl::Acl,
    topic: &str,
) -> bool {
    if !acl.allows_publish(topic) {
        return false;
    }
    match acl.scoped_device(topic) {
        None => true,
        Some(Err(())) => false,
        Some(Ok(device)) => {
            // Boxed for the same reason as the durable rule matches above.
            let registry = Box::pin(shared.device_registry(&principal.tenant_id, &device)).await;
            registry.is_some() && registry.as_ref() == acl.registry_scope.as_ref()
        }
    }
}

/// The message a PUBLISH packet (or a will) carries, with the properties passed through.
pub fn message_from(
    topic: String,
    payload: bytes::Bytes,
    qos: QoS,
    retain: bool,
    properties: iotcore_codec::Properties,
    origin: Option<crate::router::ConnectionId>,
    principal: &Principal,
) -> Message {
    let expires_at = properties
        .message_expiry_interval
        .map(|secs| std::time::Instant::now() + std::time::Duration::from_secs(u64::from(secs)));
    Message {
        topic,
        payload,
        qos,
        retain,
        properties: crate::router::MessageProperties {
            payload_format_indicator: properties.payload_format_indicator,
            content_type: properties.content_type,
            response_topic: properties.response_topic,
            correlation_data: properties.correlation_data,
            user_properties: properties.user_properties,
            expires_at,
        },
        origin,
        origin_registry: match &principal.kind {
            PrincipalKind::Device { registry_id, .. } | PrincipalKind::Registry { registry_id } => {
                Some(registry_id.clone())
            }
            PrincipalKind::Broker { .. } => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_throttled_event_is_reported_first_then_once_per_interval_with_its_count() {
        let throttled = Throttled::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttled.note(start), Some(1));
        for second in 1..10 {
            assert_eq!(throttled.note(start + Duration::from_secs(second)), None);
        }
        assert_eq!(throttled.note(start + Duration::from_secs(10)), Some(10));
        assert_eq!(throttled.note(start + Duration::from_secs(11)), None);
        assert_eq!(throttled.note(start + Duration::from_secs(25)), Some(2));
    }
}
