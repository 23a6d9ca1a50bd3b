//! The claim loop: leases due deliveries from the queue, sends each in its own task and
//! records the outcome.
//!
//! Concurrency is bounded twice: per rule (the rule's `max_in_flight`, enforced in the
//! claim itself, so a slow webhook's backlog stays in the queue rather than occupying this
//! process) and per process (`max_in_flight_total`). Every delivery runs independently,
//! so a webhook that hangs only holds its own rule's slots.

use crate::backoff::Backoff;
use crate::breaker::{Attempt, Breakers};
use crate::deliver::{Deliverer, Outcome};
use crate::metrics;
use crate::RulesConfig;
use chrono::Utc;
use iotcore_store::deliveries::{ClaimedDelivery, DeliveryListener};
use iotcore_store::{RuleId, Store};
use iotcore_telemetry::metrics::rules::{OUTCOME_DEAD_LETTER, OUTCOME_RETRY, OUTCOME_SUCCESS};
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long to wait before reconnecting a lost LISTEN connection.
const LISTEN_RETRY: Duration = Duration::from_secs(1);
/// Longest pause between claims after database errors.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(10);

/// One claim loop and what its delivery tasks share.
pub(crate) struct Worker {
    /// Written into `leased_by`; unique per process start, so leases are never confused.
    id: String,
    store: Store,
    deliverer: Deliverer,
    backoff: Backoff,
    max_age: chrono::Duration,
    lease: Duration,
    claim_batch: u32,
    max_in_flight_total: u32,
    poll_interval: Duration,
    shutdown_grace: Duration,
    breaker_failures: u32,
    breaker_open_for: Duration,
}

/// What the loop remembers about a running delivery task.
struct Running {
    rule: RuleId,
    rule_limit: u32,
}

impl Worker {
    pub(crate) fn new(config: &RulesConfig, store: Store, deliverer: Deliverer) -> Worker {
        let suffix: u64 = rand::thread_rng().gen();
        Worker {
            id: format!("rules-{}-{suffix:016x}", std::process::id()),
            store,
            deliverer,
            backoff: Backoff::new(
                Duration::from_millis(config.retry_initial_ms),
                Duration::from_millis(config.retry_max_ms),
            ),
            max_age: chrono::Duration::seconds(
                i64::try_from(config.max_age_secs).unwrap_or(i64::MAX / 1000),
            ),
            lease: Duration::from_secs(config.lease_secs.max(1)),
            claim_batch: u32::try_from(config.claim_batch.max(1)).unwrap_or(u32::MAX),
            max_in_flight_total: config.max_in_flight_total.max(1),
            // Zero would turn an idle worker into a busy loop against the database.
            poll_interval: Duration::from_millis(config.poll_interval_ms.max(10)),
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            breaker_failures: config.breaker_failures,
            breaker_open_for: Duration::from_millis(config.breaker_open_ms),
        }
    }

    /// Claims and delivers until `shutdown`, then gives running deliveries the grace
    /// period to finish.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.store.clone(), wake.clone(), shutdown.clone()));
        let mut tasks: JoinSet<Attempt> = JoinSet::new();
        let mut breakers = Breakers::new(self.breaker_failures, self.breaker_open_for);
        let mut running: HashMap<Id, Running> = HashMap::new();
        let mut in_flight: HashMap<RuleId, u32> = HashMap::new();
        let mut claim_failures: u32 = 0;
        let mut claim_now = true;
        // A deadline rather than a sleep per loop turn, so that a steady stream of
        // completions cannot keep postponing the poll that finds retries coming due.
        let mut next_poll = Instant::now();
        tracing::info!(worker = %self.id, "rules worker started");

        while !shutdown.is_cancelled() {
            while let Some(done) = tasks.try_join_next_with_id() {
                claim_now |= finished(
                    done,
                    &mut running,
                    &mut in_flight,
                    self.max_in_flight_total,
                    &mut breakers,
                );
            }
            let free = self
                .max_in_flight_total
                .saturating_sub(len_u32(tasks.len()));
            // With no free capacity `claim_now` stays set and is served when a task ends;
            // claiming (or looping) before that would only spin.
            if claim_now && free > 0 {
                let limit = free.min(self.claim_batch);
                let (busy, probes) = claim_limits(&in_flight, &mut breakers);
                let claim = self
                    .store
                    .claim_deliveries(&self.id, limit, self.lease, &busy)
                    .await;
                let mut pause = self.poll_interval;
                match claim {
                    Ok(claimed) => {
                        claim_failures = 0;
                        // A full batch suggests more is due right now.
                        claim_now = len_u32(claimed.len()) == limit;
                        for rule in &probes {
                            if !claimed.iter().any(|d| &d.rule_id == rule) {
                                breakers.probe_not_started(rule);
                            }
                        }
                        for delivery in claimed {
                            *in_flight.entry(delivery.rule_id.clone()).or_default() += 1;
                            let entry = Running {
                                rule: delivery.rule_id.clone(),
                                rule_limit: delivery.webhook.max_in_flight,
                            };
                            let handle = tasks.spawn(self.clone().process(delivery));
                            running.insert(handle.id(), entry);
                        }
                    }
                    Err(err) => {
                        claim_now = false;
                        claim_failures = claim_failures.saturating_add(1);
                        pause = self
                            .poll_interval
                            .saturating_mul(claim_failures)
                            .min(MAX_CLAIM_BACKOFF);
                        tracing::warn!(error = %err, "claiming deliveries failed");
                    }
                }
                next_poll = Instant::now() + pause;
                if claim_now {
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    claim_now |= finished(done, &mut running, &mut in_flight, self.max_in_flight_total, &mut breakers);
                }
                _ = wake.notified() => claim_now = true,
                _ = tokio::time::sleep_until(next_poll), if free > 0 => claim_now = true,
            }
        }

        listener.abort();
        let still_running = tasks.len();
        if still_running > 0 {
            tracing::info!(deliveries = still_running, "waiting for running deliveries");
            let drained = tokio::time::timeout(self.shutdown_grace, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                // Their leases expire and another worker delivers them: at least once.
                tracing::warn!(
                    deliveries = tasks.len(),
                    "abandoning deliveries at shutdown"
                );
                tasks.shutdown().await;
            }
        }
        tracing::info!(worker = %self.id, "rules worker stopped");
    }

    /// Makes one attempt at `delivery` and records what became of it.
    async fn process(self: Arc<Self>, delivery: ClaimedDelivery) -> Attempt {
        let span = tracing::info_span!(
            "delivery",
            tenant_id = %delivery.tenant_id,
            rule_id = %delivery.rule_id,
            message_id = %delivery.id,
            attempt = delivery.attempts.saturating_add(1),
        );
        async move {
            let outcome = self.deliverer.deliver(&delivery).await;
            let attempt = match &outcome {
                Outcome::Delivered => Attempt::Delivered,
                Outcome::Retry { .. } => Attempt::Failed,
                Outcome::Reject { .. } => Attempt::Neutral,
            };
            if let Err(err) = self.record(&delivery, outcome).await {
                tracing::warn!(error = %err, "could not record the delivery outcome; it will be retried when its lease expires");
            }
            attempt
        }
        .instrument(span)
        .await
    }

    async fn record(
        &self,
        delivery: &ClaimedDelivery,
        outcome: Outcome,
    ) -> iotcore_store::Result<()> {
        let store = &self.store;
        let (tenant, id) = (&delivery.tenant_id, &delivery.id);
        match outcome {
            Outcome::Delivered => {
                store.complete_delivery(tenant, id).await?;
                metrics::delivered(tenant, OUTCOME_SUCCESS);
                tracing::debug!("delivered");
            }
            Outcome::Retry { error, retry_after } => {
                let failures = delivery.attempts.saturating_add(1);
                let delay = self
                    .backoff
                    .delay(failures, retry_after, &mut rand::thread_rng());
                let next = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|delay| Utc::now().checked_add_signed(delay));
                let deadline = delivery.received_at.checked_add_signed(self.max_age);
                match (next, deadline) {
                    (Some(next), Some(deadline)) if next <= deadline => {
                        store
                            .reschedule_delivery(tenant, id, &self.id, next, &error)
                            .await?;
                        metrics::delivered(tenant, OUTCOME_RETRY);
                        tracing::debug!(%error, retry_in_ms = delay.as_millis(), "delivery failed, will retry");
                    }
                    _ => {
                        let error =
                            format!("{error} (gave up after {failures} attempts: message too old)");
                        store
                            .dead_letter_delivery(tenant, id, &self.id, &error)
                            .await?;
                        metrics::delivered(tenant, OUTCOME_DEAD_LETTER);
                        tracing::info!(%error, "dead-lettered");
                    }
                }
            }
            Outcome::Reject { error } => {
                store
                    .dead_letter_delivery(tenant, id, &self.id, &error)
                    .await?;
                metrics::delivered(tenant, OUTCOME_DEAD_LETTER);
                tracing::info!(%error, "dead-lettered");
            }
        }
        Ok(())
    }
}

/// Forgets a finished task; says whether its end freed capacity that claims were waiting
/// for (its rule or the whole process was at its limit), so claiming again is worthwhile.
fn finished(
    done: Result<(Id, Attempt), JoinError>,
    running: &mut HashMap<Id, Running>,
    in_flight: &mut HashMap<RuleId, u32>,
    max_in_flight_total: u32,
    breakers: &mut Breakers,
) -> bool {
    let attempt = match &done {
        Ok((_, attempt)) => *attempt,
        Err(_) => Attempt::Neutral,
    };
    let id = match &done {
        Ok((id, _)) => *id,
        Err(err) => {
            if err.is_panic() {
                tracing::error!(
                    "a delivery task panicked; its lease will expire and it will be retried"
                );
            }
            err.id()
        }
    };
    let process_was_full = len_u32(running.len()) >= max_in_flight_total;
    let Some(entry) = running.remove(&id) else {
        return false;
    };
    breakers.record(&entry.rule, attempt, entry.rule_limit, Instant::now());
    let mut rule_was_full = false;
    if let Some(count) = in_flight.get_mut(&entry.rule) {
        rule_was_full = *count >= entry.rule_limit;
        *count = count.saturating_sub(1);
        if *count == 0 {
            in_flight.remove(&entry.rule);
        }
    }
    rule_was_full || process_was_full
}

/// What the claim query is told about each rule's deliveries in flight: the real counts,
/// and for rules whose breaker is open a count that leaves no room (or, for the probe of a
/// half-open breaker, room for one). Returns the map and the rules given a probe.
fn claim_limits(
    in_flight: &HashMap<RuleId, u32>,
    breakers: &mut Breakers,
) -> (HashMap<RuleId, u32>, Vec<RuleId>) {
    let mut busy = in_flight.clone();
    let mut probes = Vec::new();
    let now = Instant::now();
    for (rule, limit) in breakers.limited() {
        let running = in_flight.get(&rule).copied().unwrap_or(0);
        match breakers.allowance(&rule, now) {
            Some(0) => {
                // The claim subtracts this from the rule's max_in_flight (at most 1024).
                busy.insert(rule, u32::MAX / 2);
            }
            Some(_) => {
                busy.insert(rule.clone(), running.max(limit.saturating_sub(1)));
                probes.push(rule);
            }
            None => {}
        }
    }
    (busy, probes)
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Turns enqueue notifications into wake-ups of the claim loop, reconnecting as needed.
async fn listen(store: Store, wake: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match DeliveryListener::connect(&store).await {
            Ok(mut listener) => {
                // Deliveries may have been enqueued while there was no listener.
                wake.notify_one();
                loop {
                    match listener.wait().await {
                        Ok(()) => wake.notify_one(),
                        Err(err) => {
                            tracing::warn!(error = %err, "lost the delivery notification channel");
                            break;
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not listen for new deliveries"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(LISTEN_RETRY) => {}
        }
    }
}
