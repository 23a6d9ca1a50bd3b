//! Will messages (MQTT-3.1.2-8..17, MQTT 5 Will Delay Interval): published when a
//! connection ends other than by a normal DISCONNECT, through the same path as any other
//! message, after the will delay unless the client comes back first.

use crate::connection::Session;
use crate::publish;
use crate::router::Message;
use std::sync::Arc;
use std::time::Duration;

/// Publishes `message` now, or after `delay` in a task of its own (one per disconnected
/// client with a delayed will, never one per message). The tasks are tracked, so that a
/// stopping broker writes what they publish before its writers stop.
pub fn publish_later(session: &Session, message: Message, delay: Duration) {
    let shared = session.shared.clone();
    let wills = shared.wills.clone();
    let routes = session.routes.clone();
    let principal = session.accepted.principal.clone();
    let client_id = session.accepted.client_id.clone();
    let connection = session.id;
    let message = Arc::new(message);
    if delay.is_zero() {
        wills.spawn(async move {
            if let Err(e) = publish::publish(&shared, &routes, Some(&principal), message).await {
                tracing::warn!(error = %e, "will not published");
            }
        });
        return;
    }
    let resumed = shared
        .sessions
        .delay_will(&principal.namespace, &client_id, connection);
    wills.spawn(async move {
        let publish_it = tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            // A new connection with Clean Start 0 resumes the session: no will
            // (MQTT-3.1.3-9); a clean one ends it: the will goes out now.
            answer = resumed => !answer.unwrap_or(false),
            _ = shared.shutdown.cancelled() => true,
        };
        shared
            .sessions
            .forget_will(&principal.namespace, &client_id, connection);
        if publish_it {
            if let Err(e) = publish::publish(&shared, &routes, Some(&principal), message).await {
                tracing::warn!(error = %e, "will not published");
            }
        }
    });
}
