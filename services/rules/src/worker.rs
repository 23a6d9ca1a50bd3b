//! The claim loop: leases due deliveries from the queue, sends each request (one delivery,
//! or one batch of a batching rule's deliveries) in its own task and records the outcome.
//!
//! Deliveries that their webhook accepted leave the queue through one completion task that
//! removes everything accepted meanwhile in one statement (group commit), rather than one
//! transaction, and one update of the rule's statistics row, per request.
//!
//! Concurrency is bounded twice: per rule (the rule's `max_in_flight` requests of up to
//! `batch_max_messages` deliveries, enforced in the claim itself, so a slow webhook's
//! backlog stays in the queue rather than occupying this process) and per process
//! (`max_in_flight_total` requests and deliveries held in filling batches together). Every
//! request runs independently, so a webhook that hangs only holds its own rule's slots.

use crate::backoff::Backoff;
use crate::batch::Batches;
use crate::breaker::{Attempt, Breakers};
use crate::deliver::{Deliverer, Outcome};
use crate::metrics;
use crate::RulesConfig;
use chrono::Utc;
use iotcore_store::deliveries::{ClaimedDelivery, DeliveryListener};
use iotcore_store::{MessageId, RuleId, Store, StoreError, TenantId};
use iotcore_telemetry::metrics::rules::{OUTCOME_DEAD_LETTER, OUTCOME_RETRY, OUTCOME_SUCCESS};
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long to wait before reconnecting a lost LISTEN connection.
const LISTEN_RETRY: Duration = Duration::from_secs(1);
/// Longest pause between claims after database errors.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(10);
/// Most requests whose deliveries one completion statement removes from the queue.
const MAX_COMPLETIONS_PER_STATEMENT: usize = 256;

/// Why the outcome of a request could not be recorded (its deliveries stay leased, and are
/// sent again when the leases expire).
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Completion(Arc<StoreError>),
    #[error("the completion task has ended")]
    CompleterGone,
}

/// The deliveries of one request that its webhook accepted, to be removed from the queue.
struct Completion {
    tenant: TenantId,
    ids: Vec<MessageId>,
    done: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

/// Removes accepted deliveries from the queue: whatever requests finished while the last
/// statement ran go together into the next one, so that under load the queue costs one
/// transaction per group rather than per request, and concurrent requests of one rule do
/// not queue up on its statistics row. Ends when every sender is gone.
async fn complete(store: Store, mut requests: mpsc::Receiver<Completion>) {
    let mut group = Vec::with_capacity(MAX_COMPLETIONS_PER_STATEMENT);
    while requests
        .recv_many(&mut group, MAX_COMPLETIONS_PER_STATEMENT)
        .await
        > 0
    {
        let deliveries: Vec<(&TenantId, &MessageId)> = group
            .iter()
            .flat_map(|c: &Completion| c.ids.iter().map(move |id| (&c.tenant, id)))
            .collect();
        let result = store
            .complete_deliveries_of(&deliveries)
            .await
            .map(|_| ())
            .map_err(Arc::new);
        for completion in group.drain(..) {
            let _ = completion.done.send(result.clone());
        }
    }
}

/// One claim loop and what its delivery tasks share.
pub(crate) struct Worker {
    /// Written into `leased_by`; unique per process start, so leases are never confused.
    id: String,
    store: Store,
    completions: mpsc::Sender<Completion>,
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
    /// The rule's capacity in deliveries: `max_in_flight` requests of `batch_max_messages`.
    rule_limit: u32,
    /// The capacity the request takes: a whole batch's, however many it carries.
    weight: u32,
}

impl Worker {
    /// A worker, and the task that completes its deliveries (to be spawned; it ends when
    /// the worker is dropped).
    pub(crate) fn new(
        config: &RulesConfig,
        store: Store,
        deliverer: Deliverer,
    ) -> (Worker, impl std::future::Future<Output = ()>) {
        let suffix: u64 = rand::thread_rng().gen();
        // Each running request sends at most one completion.
        let capacity = usize::try_from(config.max_in_flight_total.max(1)).unwrap_or(1024);
        let (completions, requests) = mpsc::channel(capacity);
        let completer = complete(store.clone(), requests);
        let worker = Worker {
            id: format!("rules-{}-{suffix:016x}", std::process::id()),
            store,
            completions,
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
        };
        (worker, completer)
    }

    /// Claims and delivers until `shutdown`, then gives running deliveries the grace
    /// period to finish.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.store.clone(), wake.clone(), shutdown.clone()));
        let mut tasks: JoinSet<Attempt> = JoinSet::new();
        let mut breakers = Breakers::new(self.breaker_failures, self.breaker_open_for);
        let mut batches = Batches::default();
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
                    &batches,
                    &mut breakers,
                );
            }
            for batch in batches.take_due(Instant::now()) {
                self.spawn(batch, &mut tasks, &mut running, &mut in_flight);
            }
            // Held deliveries count like requests: each becomes at most one request.
            let free = self
                .max_in_flight_total
                .saturating_sub(len_u32(tasks.len()))
                .saturating_sub(len_u32(batches.held()));
            // With no free capacity `claim_now` stays set and is served when a task ends;
            // claiming (or looping) before that would only spin.
            if claim_now && free > 0 {
                let limit = free.min(self.claim_batch);
                let (busy, probes) = claim_limits(&in_flight, &batches, &mut breakers);
                let claim = self
                    .store
                    .claim_deliveries(&self.id, limit, self.lease, &busy)
                    .await;
                let mut pause = self.poll_interval;
                match claim {
                    Ok(mut claimed) => {
                        claim_failures = 0;
                        // Batches list their messages in the order they were received, and
                        // a retried batch keeps its order (and so its Idempotency-Key).
                        claimed.sort_by(|a, b| {
                            (a.received_at, a.id.as_str()).cmp(&(b.received_at, b.id.as_str()))
                        });
                        // A full batch suggests more is due right now.
                        claim_now = len_u32(claimed.len()) == limit;
                        for rule in &probes {
                            if !claimed.iter().any(|d| &d.rule_id == rule) {
                                breakers.probe_not_started(rule);
                            }
                        }
                        let now = Instant::now();
                        for delivery in claimed {
                            let ready = if delivery.webhook.batch_max_messages > 1 {
                                batches.add(delivery, now)
                            } else {
                                vec![vec![delivery]]
                            };
                            for request in ready {
                                self.spawn(request, &mut tasks, &mut running, &mut in_flight);
                            }
                        }
                        // Batches without a wait go out with what this claim found.
                        for batch in batches.take_due(now) {
                            self.spawn(batch, &mut tasks, &mut running, &mut in_flight);
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
            let batch_due = batches.next_deadline();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    claim_now |= finished(done, &mut running, &mut in_flight, self.max_in_flight_total, &batches, &mut breakers);
                }
                _ = wake.notified() => claim_now = true,
                _ = tokio::time::sleep_until(next_poll), if free > 0 => claim_now = true,
                // Sent at the top of the loop; claiming too may fill other batches.
                _ = tokio::time::sleep_until(batch_due.unwrap_or(next_poll)), if batch_due.is_some() => {}
            }
        }

        listener.abort();
        // Filling batches are sent now rather than left to their leases' expiry.
        for batch in batches.take_all() {
            self.spawn(batch, &mut tasks, &mut running, &mut in_flight);
        }
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

    /// Starts the task that sends `request` (deliveries of one rule) and counts it against
    /// its rule's capacity.
    fn spawn(
        self: &Arc<Self>,
        request: Vec<ClaimedDelivery>,
        tasks: &mut JoinSet<Attempt>,
        running: &mut HashMap<Id, Running>,
        in_flight: &mut HashMap<RuleId, u32>,
    ) {
        let Some(first) = request.first() else {
            return;
        };
        let webhook = &first.webhook;
        let weight = webhook.batch_max_messages.max(1);
        let entry = Running {
            rule: first.rule_id.clone(),
            rule_limit: webhook.max_in_flight.saturating_mul(weight),
            weight,
        };
        let count = in_flight.entry(entry.rule.clone()).or_default();
        *count = count.saturating_add(weight);
        let handle = tasks.spawn(self.clone().process(request));
        running.insert(handle.id(), entry);
    }

    /// Makes one attempt at `request` (one delivery, or a batch of one rule's) and records
    /// what became of each of its deliveries.
    async fn process(self: Arc<Self>, request: Vec<ClaimedDelivery>) -> Attempt {
        let Some(first) = request.first() else {
            return Attempt::Neutral;
        };
        // `outcome` is the attempt's (`success`, `retry`, `dead_letter`; a retry of a
        // message too old to wait is dead-lettered all the same), and the status is the
        // webhook's, when it answered.
        let span = tracing::info_span!(
            "delivery",
            otel.name = "rule delivery",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            tenant_id = %first.tenant_id,
            rule_id = %first.rule_id,
            message_id = %first.id,
            messages = request.len(),
            attempt = first.attempts.saturating_add(1),
            outcome = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        async move {
            let outcome = self.deliverer.deliver_batch(&request).await;
            let span = tracing::Span::current();
            let attempt = match &outcome {
                Outcome::Delivered => {
                    span.record("outcome", OUTCOME_SUCCESS);
                    Attempt::Delivered
                }
                Outcome::Retry { error, .. } => {
                    span.record("outcome", OUTCOME_RETRY);
                    span.record("error", error.as_str());
                    span.record("otel.status_code", "error");
                    Attempt::Failed
                }
                Outcome::Reject { error } => {
                    span.record("outcome", OUTCOME_DEAD_LETTER);
                    span.record("error", error.as_str());
                    span.record("otel.status_code", "error");
                    Attempt::Neutral
                }
            };
            if let Err(err) = self.record(&request, outcome).await {
                tracing::warn!(error = %err, "could not record the delivery outcome; it will be retried when its lease expires");
            }
            attempt
        }
        .instrument(span)
        .await
    }

    /// Records the outcome of one request for each of its deliveries: a batch is
    /// delivered, retried or dead-lettered as a whole.
    async fn record(
        &self,
        request: &[ClaimedDelivery],
        outcome: Outcome,
    ) -> Result<(), RecordError> {
        let Some(first) = request.first() else {
            return Ok(());
        };
        let store = &self.store;
        let tenant = &first.tenant_id;
        let ids: Vec<MessageId> = request.iter().map(|d| d.id.clone()).collect();
        match outcome {
            Outcome::Delivered => {
                let count = ids.len();
                let (done, completed) = oneshot::channel();
                let completion = Completion {
                    tenant: tenant.clone(),
                    ids,
                    done,
                };
                self.completions
                    .send(completion)
                    .await
                    .map_err(|_| RecordError::CompleterGone)?;
                completed
                    .await
                    .map_err(|_| RecordError::CompleterGone)?
                    .map_err(RecordError::Completion)?;
                metrics::delivered(tenant, OUTCOME_SUCCESS, count);
                tracing::debug!("delivered");
            }
            Outcome::Retry { error, retry_after } => {
                // One delay for the whole batch, so that its messages come due together
                // and are likely to travel together again.
                let attempts = request.iter().map(|d| d.attempts).max().unwrap_or(0);
                let failures = attempts.saturating_add(1);
                let delay = self
                    .backoff
                    .delay(failures, retry_after, &mut rand::thread_rng());
                let next = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|delay| Utc::now().checked_add_signed(delay));
                let (retry, too_old): (Vec<&ClaimedDelivery>, Vec<&ClaimedDelivery>) =
                    request.iter().partition(|d| {
                        let deadline = d.received_at.checked_add_signed(self.max_age);
                        matches!((next, deadline), (Some(next), Some(deadline)) if next <= deadline)
                    });
                if let (Some(next), false) = (next, retry.is_empty()) {
                    let ids: Vec<MessageId> = retry.iter().map(|d| d.id.clone()).collect();
                    store
                        .reschedule_deliveries(tenant, &ids, &self.id, next, &error)
                        .await?;
                    metrics::delivered(tenant, OUTCOME_RETRY, ids.len());
                    tracing::debug!(%error, retry_in_ms = delay.as_millis(), "delivery failed, will retry");
                }
                for delivery in too_old {
                    let failures = delivery.attempts.saturating_add(1);
                    let error =
                        format!("{error} (gave up after {failures} attempts: message too old)");
                    store
                        .dead_letter_delivery(tenant, &delivery.id, &self.id, &error)
                        .await?;
                    metrics::delivered(tenant, OUTCOME_DEAD_LETTER, 1);
                    tracing::info!(message_id = %delivery.id, %error, "dead-lettered");
                }
            }
            Outcome::Reject { error } => {
                store
                    .dead_letter_deliveries(tenant, &ids, &self.id, &error)
                    .await?;
                metrics::delivered(tenant, OUTCOME_DEAD_LETTER, ids.len());
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
    batches: &Batches,
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
    let process_was_full =
        len_u32(running.len()).saturating_add(len_u32(batches.held())) >= max_in_flight_total;
    let Some(entry) = running.remove(&id) else {
        return false;
    };
    breakers.record(&entry.rule, attempt, entry.rule_limit, Instant::now());
    let mut rule_was_full = false;
    if let Some(count) = in_flight.get_mut(&entry.rule) {
        let held = len_u32(batches.held_of(&entry.rule));
        rule_was_full = count.saturating_add(held) >= entry.rule_limit;
        *count = count.saturating_sub(entry.weight);
        if *count == 0 {
            in_flight.remove(&entry.rule);
        }
    }
    rule_was_full || process_was_full
}

/// What the claim query is told about each rule's capacity in use (in deliveries: those
/// of running requests, a whole batch each, and those held in a filling batch), and for
/// rules whose breaker is open a count that leaves no room (or, for the probe of a
/// half-open breaker, room for one delivery). Returns the map and the rules given a probe.
fn claim_limits(
    in_flight: &HashMap<RuleId, u32>,
    batches: &Batches,
    breakers: &mut Breakers,
) -> (HashMap<RuleId, u32>, Vec<RuleId>) {
    let mut busy = in_flight.clone();
    for (rule, held) in batches.held_by_rule() {
        let count = busy.entry(rule.clone()).or_default();
        *count = count.saturating_add(len_u32(held));
    }
    let mut probes = Vec::new();
    let now = Instant::now();
    for (rule, limit) in breakers.limited() {
        let running = busy.get(&rule).copied().unwrap_or(0);
        match breakers.allowance(&rule, now) {
            Some(0) => {
                // The claim subtracts this from the rule's capacity (at most 102,400).
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
