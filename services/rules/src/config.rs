use serde::{Deserialize, Serialize};

/// The `[rules]` section of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Allow webhooks on loopback, private, link-local and metadata addresses (dev only).
    pub allow_private_destinations: bool,
    /// First retry delay; doubles on every failure (with full jitter).
    pub retry_initial_ms: u64,
    /// Largest retry delay.
    pub retry_max_ms: u64,
    /// A message still undelivered after this long is dead-lettered.
    pub max_age_secs: u64,
    /// How long a worker holds a claimed delivery before another may take it.
    pub lease_secs: u64,
    /// Deliveries claimed per query.
    pub claim_batch: i64,
    /// How often an idle worker looks for due deliveries. New deliveries wake workers at
    /// once (LISTEN/NOTIFY); polling finds retries that came due and covers lost wake-ups.
    pub poll_interval_ms: u64,
    /// Requests one process has in flight at once, over all rules, counting each message
    /// held in a filling batch as one (each rule is also bounded by its own
    /// `max_in_flight`).
    pub max_in_flight_total: u32,
    /// On shutdown, how long in-flight requests may still finish before they are dropped
    /// (their leases then expire and another worker delivers them).
    pub shutdown_grace_ms: u64,
    /// Consecutive failed attempts (connection errors, timeouts, 408, 429, 5xx) at one
    /// rule's endpoint after which this process stops sending to it for a while.
    pub breaker_failures: u32,
    /// How long an open circuit breaker waits before one probe delivery is let through.
    pub breaker_open_ms: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            allow_private_destinations: false,
            retry_initial_ms: 1000,
            retry_max_ms: 300_000,
            max_age_secs: 86_400,
            lease_secs: 60,
            claim_batch: 100,
            poll_interval_ms: 500,
            max_in_flight_total: 1024,
            shutdown_grace_ms: 10_000,
            breaker_failures: 5,
            breaker_open_ms: 30_000,
        }
    }
}
