//! Batches that are still filling: the claimed deliveries of rules that batch
//! (`batch_max_messages` above 1), held until their batch is full or has waited
//! `batch_max_wait_ms` (SPEC §5).
//!
//! Each held delivery is leased (the claim made its lease long enough for the wait), so a
//! crash loses nothing: the leases expire and another worker sends the messages. The claim
//! loop counts held deliveries against the process's `max_in_flight_total` and the rule's
//! capacity, so what is held here stays bounded.

use iotcore_store::deliveries::ClaimedDelivery;
use iotcore_store::RuleId;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// A batch is closed once its payloads add up to this many bytes, so that one request
/// stays a reasonable size whatever the rule's `batch_max_messages` and the payloads.
pub(crate) const MAX_BATCH_PAYLOAD_BYTES: usize = 1024 * 1024;

/// One rule's batch that is still filling.
struct Forming {
    deliveries: Vec<ClaimedDelivery>,
    payload_bytes: usize,
    /// When it is sent even if not full: its first delivery's claim plus the rule's wait.
    deadline: Instant,
}

/// The filling batches of every batching rule, at most one per rule.
#[derive(Default)]
pub(crate) struct Batches {
    forming: HashMap<RuleId, Forming>,
    held: usize,
}

impl Batches {
    /// Adds a claimed delivery of a batching rule; returns the batches this completed
    /// (full by count or by size), ready to be sent.
    pub(crate) fn add(
        &mut self,
        delivery: ClaimedDelivery,
        now: Instant,
    ) -> Vec<Vec<ClaimedDelivery>> {
        let mut complete = Vec::new();
        let max_messages = usize::try_from(delivery.webhook.batch_max_messages)
            .unwrap_or(usize::MAX)
            .max(1);
        let wait = Duration::from_millis(u64::from(delivery.webhook.batch_max_wait_ms));
        let rule = delivery.rule_id.clone();
        let size = delivery.payload.len();
        if let Some(forming) = self.forming.get(&rule) {
            if forming.payload_bytes.saturating_add(size) > MAX_BATCH_PAYLOAD_BYTES {
                complete.extend(self.take(&rule));
            }
        }
        let forming = self.forming.entry(rule.clone()).or_insert_with(|| Forming {
            deliveries: Vec::with_capacity(max_messages.min(128)),
            payload_bytes: 0,
            deadline: now + wait,
        });
        forming.deliveries.push(delivery);
        forming.payload_bytes = forming.payload_bytes.saturating_add(size);
        self.held += 1;
        if forming.deliveries.len() >= max_messages
            || forming.payload_bytes >= MAX_BATCH_PAYLOAD_BYTES
        {
            complete.extend(self.take(&rule));
        }
        complete
    }

    /// The batches whose wait is over at `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Vec<ClaimedDelivery>> {
        let due: Vec<RuleId> = self
            .forming
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(rule, _)| rule.clone())
            .collect();
        due.iter().filter_map(|rule| self.take(rule)).collect()
    }

    /// Every filling batch, whatever its wait (at shutdown: send rather than hold).
    pub(crate) fn take_all(&mut self) -> Vec<Vec<ClaimedDelivery>> {
        let rules: Vec<RuleId> = self.forming.keys().cloned().collect();
        rules.iter().filter_map(|rule| self.take(rule)).collect()
    }

    /// When the next filling batch is due, if any is filling.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.forming.values().map(|f| f.deadline).min()
    }

    /// Deliveries held over all rules.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Deliveries of `rule` held.
    pub(crate) fn held_of(&self, rule: &RuleId) -> usize {
        self.forming.get(rule).map_or(0, |f| f.deliveries.len())
    }

    /// The rules with a filling batch and how many deliveries each holds.
    pub(crate) fn held_by_rule(&self) -> impl Iterator<Item = (&RuleId, usize)> {
        self.forming
            .iter()
            .map(|(rule, f)| (rule, f.deliveries.len()))
    }

    fn take(&mut self, rule: &RuleId) -> Option<Vec<ClaimedDelivery>> {
        let forming = self.forming.remove(rule)?;
        self.held = self.held.saturating_sub(forming.deliveries.len());
        Some(forming.deliveries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use iotcore_store::deliveries::Webhook;
    use iotcore_store::{MessageId, TenantId};

    fn delivery(rule: &RuleId, max_messages: u32, wait_ms: u32, size: usize) -> ClaimedDelivery {
        ClaimedDelivery {
            id: MessageId::generate(),
            tenant_id: TenantId::generate(),
            rule_id: rule.clone(),
            registry_id: None,
            device_id: None,
            topic: "t".into(),
            qos: 1,
            retain: false,
            payload: vec![b'x'; size],
            content_type: None,
            user_properties: Vec::new(),
            received_at: Utc::now(),
            attempts: 0,
            webhook: Webhook {
                url: "http://example.com".into(),
                headers: Vec::new(),
                secret: None,
                timeout_ms: 1000,
                max_in_flight: 1,
                batch_max_messages: max_messages,
                batch_max_wait_ms: wait_ms,
            },
        }
    }

    #[test]
    fn a_batch_is_sent_when_full_or_when_its_wait_is_over() {
        let (a, b) = (RuleId::generate(), RuleId::generate());
        let mut batches = Batches::default();
        let t0 = Instant::now();
        assert!(batches.add(delivery(&a, 3, 100, 1), t0).is_empty());
        assert!(batches.add(delivery(&a, 3, 100, 1), t0).is_empty());
        assert!(batches.add(delivery(&b, 3, 50, 1), t0).is_empty());
        assert_eq!((batches.held(), batches.held_of(&a)), (3, 2));
        assert_eq!(
            batches.next_deadline(),
            Some(t0 + Duration::from_millis(50))
        );

        let full = batches.add(delivery(&a, 3, 100, 1), t0);
        assert_eq!(full.iter().map(Vec::len).collect::<Vec<_>>(), [3]);
        assert_eq!((batches.held(), batches.held_of(&a)), (1, 0));

        assert!(batches.take_due(t0 + Duration::from_millis(49)).is_empty());
        let due = batches.take_due(t0 + Duration::from_millis(50));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0][0].rule_id, b);
        assert_eq!(batches.held(), 0);
        assert_eq!(batches.next_deadline(), None);
    }

    #[test]
    fn a_batch_is_closed_before_its_payloads_exceed_the_size_bound() {
        let rule = RuleId::generate();
        let mut batches = Batches::default();
        let now = Instant::now();
        let big = MAX_BATCH_PAYLOAD_BYTES / 2 + 1;
        assert!(batches.add(delivery(&rule, 100, 1000, big), now).is_empty());
        let closed = batches.add(delivery(&rule, 100, 1000, big), now);
        assert_eq!(closed.iter().map(Vec::len).collect::<Vec<_>>(), [1]);
        assert_eq!(batches.held_of(&rule), 1);
        // A payload as large as the bound is a batch of its own.
        let alone = batches.add(delivery(&rule, 100, 1000, MAX_BATCH_PAYLOAD_BYTES), now);
        assert_eq!(alone.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(batches.held(), 0);
        assert!(batches.take_all().is_empty());
    }
}
