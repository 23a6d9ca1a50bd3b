//! Group commit: the broker's writers (rule matches, connection status, retained messages)
//! each own a bounded channel and write what it holds in batches, one transaction per
//! batch.

use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The next batch: waits for a first item, then gathers more until `max` items or until
/// `max_wait` after the first, so that a lone item waits at most `max_wait`. `None` once
/// `shutdown` is cancelled and nothing is queued (what was queued before is still
/// returned, so writers drain on shutdown), or when every sender is gone.
pub async fn next<T>(
    rx: &mut mpsc::Receiver<T>,
    shutdown: &CancellationToken,
    max: usize,
    max_wait: Duration,
) -> Option<Vec<T>> {
    let first = tokio::select! {
        first = rx.recv() => first,
        _ = shutdown.cancelled(), if rx.is_empty() => None,
    }?;
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max.max(1) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => batch.push(item),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gathers_what_is_queued_up_to_the_maximum_and_drains_on_shutdown() {
        let (tx, mut rx) = mpsc::channel(10);
        let shutdown = CancellationToken::new();
        for i in 0..5 {
            tx.send(i).await.expect("send");
        }
        let wait = Duration::from_millis(1);
        assert_eq!(next(&mut rx, &shutdown, 3, wait).await, Some(vec![0, 1, 2]));
        shutdown.cancel();
        assert_eq!(next(&mut rx, &shutdown, 3, wait).await, Some(vec![3, 4]));
        assert_eq!(next(&mut rx, &shutdown, 3, wait).await, None);
    }
}
