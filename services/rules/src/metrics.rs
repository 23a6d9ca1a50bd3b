//! The rules service's side of the metrics contract (`iotcore_telemetry::metrics::rules`).

use iotcore_store::{Store, TenantId};
use iotcore_telemetry::metrics::rules::{
    DEAD_LETTERS, DELIVERIES, OUTCOME_DEAD_LETTER, QUEUE_DEPTH,
};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the queue depth is counted. Each count is one query over the queue, so not
/// at every scrape; Prometheus sees a value at most this old.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(15);

/// Counts the `messages` of one recorded attempt (one request) by its outcome; dead
/// letters also in the dead letters. The metrics count messages, not requests.
pub fn delivered(tenant: &TenantId, outcome: &'static str, messages: usize) {
    let messages = u64::try_from(messages).unwrap_or(u64::MAX);
    DELIVERIES.with(&[tenant.as_str(), outcome]).add(messages);
    if outcome == OUTCOME_DEAD_LETTER {
        DEAD_LETTERS.with(&[tenant.as_str()]).add(messages);
    }
}

/// Keeps `iotcore_rules_queue_depth` current until `shutdown`. Every rules process reports
/// the whole queue (it is shared), so dashboards take the maximum over processes.
pub async fn track_queue_depth(store: Store, shutdown: CancellationToken) {
    let mut seen: HashSet<TenantId> = HashSet::new();
    loop {
        match store.queue_depth_per_tenant().await {
            Ok(depths) => {
                let mut now_seen = HashSet::with_capacity(depths.len());
                for (tenant, depth) in depths {
                    QUEUE_DEPTH.with(&[tenant.as_str()]).set(depth);
                    now_seen.insert(tenant);
                }
                // A tenant whose queue emptied has no row any more: show zero, not the
                // last depth seen.
                for gone in seen.difference(&now_seen) {
                    QUEUE_DEPTH.with(&[gone.as_str()]).set(0);
                }
                seen = now_seen;
            }
            Err(err) => tracing::debug!(error = %err, "counting the delivery queue failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(QUEUE_DEPTH_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
