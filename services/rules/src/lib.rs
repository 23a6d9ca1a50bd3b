//! The iotcore rules service (SPEC §5): delivers the rule matches that brokers made
//! durable in the delivery queue to the rules' webhooks, at least once.
//!
//! Data flows one way: queue ([`iotcore_store::deliveries`]) → claim loop (`worker`) →
//! one task per delivery: envelope (`envelope`), signature (`signature`), HTTP
//! (`deliver`) → outcome back to the queue (complete, retry with `backoff`, or dead
//! letter). Any number of processes can run this against one database; leases keep them
//! from sending the same message at the same time, and a crashed process's leases expire.

pub mod backoff;
mod batch;
mod breaker;
pub mod config;
pub mod deliver;
pub mod destination;
pub mod envelope;
mod metrics;
pub mod signature;
mod worker;

pub use config::RulesConfig;

use iotcore_store::Store;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs delivery workers until `shutdown` is cancelled, then lets running deliveries
/// finish for up to `shutdown_grace_ms`. Database outages are waited out, not returned.
pub async fn run(
    config: RulesConfig,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), RulesError> {
    let deliverer = deliver::Deliverer::new(config.allow_private_destinations)
        .map_err(RulesError::HttpClient)?;
    tokio::spawn(metrics::track_queue_depth(store.clone(), shutdown.clone()));
    let (worker, completer) = worker::Worker::new(&config, store, deliverer);
    tokio::spawn(completer);
    Arc::new(worker).run(shutdown).await;
    Ok(())
}

/// Why the rules service could not run.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(transparent)]
    Store(#[from] iotcore_store::StoreError),
    /// The HTTP client could not be set up (for example, no TLS roots).
    #[error("cannot create the HTTP client: {0}")]
    HttpClient(reqwest::Error),
}
