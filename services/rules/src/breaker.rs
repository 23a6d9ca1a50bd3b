//! A circuit breaker per rule endpoint, in each rules process (SPEC §5: one failing
//! endpoint never delays another).
//!
//! After `threshold` consecutive retryable failures (connection errors, timeouts, 408, 429,
//! 5xx) the breaker opens: the process stops claiming the rule's deliveries, which wait in
//! the queue without using attempts or capacity. After `open_for` one delivery is let
//! through as a probe (half-open); its success closes the breaker, its failure opens it
//! again.

use iotcore_store::RuleId;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// What one attempt told the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The endpoint answered 2xx.
    Delivered,
    /// The endpoint looks unwell: worth counting toward opening.
    Failed,
    /// Says nothing about the endpoint's health (a 4xx, a bad URL, a store error).
    Neutral,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight; nothing else is claimed until it ends.
    HalfOpen,
}

/// The breakers of every rule this process has delivered for recently.
#[derive(Debug)]
pub(crate) struct Breakers {
    threshold: u32,
    open_for: Duration,
    states: HashMap<RuleId, State>,
    limits: HashMap<RuleId, u32>,
}

impl Breakers {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Breakers {
        Breakers {
            threshold: threshold.max(1),
            open_for,
            states: HashMap::new(),
            limits: HashMap::new(),
        }
    }

    /// Records the outcome of an attempt for `rule`, whose capacity (in deliveries:
    /// `max_in_flight` requests of `batch_max_messages`) is `limit`.
    pub(crate) fn record(&mut self, rule: &RuleId, attempt: Attempt, limit: u32, now: Instant) {
        self.limits.insert(rule.clone(), limit);
        let open = State::Open {
            until: now + self.open_for,
        };
        let state = self
            .states
            .entry(rule.clone())
            .or_insert(State::Closed { failures: 0 });
        match (attempt, &*state) {
            (Attempt::Delivered, _) => {
                self.states.remove(rule);
                self.limits.remove(rule);
            }
            (Attempt::Failed, State::HalfOpen) => *state = open,
            (Attempt::Failed, State::Closed { failures }) => {
                let failures = failures + 1;
                *state = if failures >= self.threshold {
                    tracing::warn!(rule_id = %rule, failures, "endpoint failing; circuit opened");
                    open
                } else {
                    State::Closed { failures }
                };
            }
            // Attempts that were already running when the breaker opened.
            (Attempt::Failed, State::Open { .. }) => {}
            (Attempt::Neutral, State::HalfOpen) => *state = open,
            (Attempt::Neutral, _) => {}
        }
    }

    /// How many more deliveries of `rule` may be claimed beyond those in flight: `None`
    /// for no limit from the breaker, `Some(0)` while open, `Some(1)` for the probe. A
    /// breaker whose time is up turns half-open here, so call this only when claiming.
    pub(crate) fn allowance(&mut self, rule: &RuleId, now: Instant) -> Option<u32> {
        match self.states.get(rule)? {
            State::Closed { .. } => None,
            State::HalfOpen => Some(0),
            State::Open { until } if *until > now => Some(0),
            State::Open { .. } => {
                self.states.insert(rule.clone(), State::HalfOpen);
                Some(1)
            }
        }
    }

    /// A probe was allowed but nothing of the rule was due: probe at the next claim.
    pub(crate) fn probe_not_started(&mut self, rule: &RuleId) {
        if let Some(state @ State::HalfOpen) = self.states.get_mut(rule) {
            *state = State::Open {
                until: Instant::now(),
            };
        }
    }

    /// The rules whose claims the breaker limits now, with their capacity.
    pub(crate) fn limited(&self) -> Vec<(RuleId, u32)> {
        self.states
            .iter()
            .filter(|(_, s)| !matches!(s, State::Closed { .. }))
            .map(|(r, _)| (r.clone(), self.limits.get(r).copied().unwrap_or(1)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let rule = RuleId::generate();
        let mut breakers = Breakers::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            breakers.record(&rule, Attempt::Failed, 4, t0);
        }
        assert_eq!(breakers.allowance(&rule, t0), None, "still closed");
        // A success in between resets the count.
        breakers.record(&rule, Attempt::Delivered, 4, t0);
        for _ in 0..2 {
            breakers.record(&rule, Attempt::Failed, 4, t0);
        }
        assert_eq!(breakers.allowance(&rule, t0), None);
        breakers.record(&rule, Attempt::Failed, 4, t0);
        assert_eq!(breakers.allowance(&rule, t0), Some(0), "open");
        assert_eq!(breakers.limited(), vec![(rule.clone(), 4)]);

        let later = t0 + Duration::from_secs(11);
        assert_eq!(breakers.allowance(&rule, later), Some(1), "one probe");
        assert_eq!(breakers.allowance(&rule, later), Some(0), "only one");
        breakers.record(&rule, Attempt::Failed, 4, later);
        assert_eq!(breakers.allowance(&rule, later), Some(0), "open again");

        let much_later = later + Duration::from_secs(11);
        assert_eq!(breakers.allowance(&rule, much_later), Some(1));
        breakers.record(&rule, Attempt::Delivered, 4, much_later);
        assert_eq!(breakers.allowance(&rule, much_later), None, "closed");
        assert!(breakers.limited().is_empty());
    }

    #[test]
    fn rules_have_breakers_of_their_own() {
        let (sick, healthy) = (RuleId::generate(), RuleId::generate());
        let mut breakers = Breakers::new(1, Duration::from_secs(10));
        let now = Instant::now();
        breakers.record(&sick, Attempt::Failed, 4, now);
        breakers.record(&healthy, Attempt::Neutral, 4, now);
        assert_eq!(breakers.allowance(&sick, now), Some(0));
        assert_eq!(breakers.allowance(&healthy, now), None);
    }
}
