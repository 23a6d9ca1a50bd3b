//! Messages published through the control plane (SPEC §6.2): the api writes them to
//! PostgreSQL and notifies; every broker process claims what it can (each message goes to
//! exactly one broker) and publishes it through the same path as a client's message. This
//! works whether the api runs in the same process or not.
//!
//! A message claimed by a broker that crashes before routing it is lost, like a QoS 0
//! message; the API answers 202 (accepted), never "delivered".

use crate::broker::Shared;
use crate::publish;
use crate::router::{Message, MessageProperties, Namespace};
use iotcore_codec::QoS;
use iotcore_store::notify::Wakeups;
use iotcore_store::publishes::{ApiPublish, CHANNEL};
use std::sync::Arc;
use std::time::Duration;

/// How many messages one claim takes.
const CLAIM_BATCH: i64 = 100;
/// How often to look for messages when notifications are not available.
const POLL: Duration = Duration::from_secs(1);

pub async fn relay(shared: Arc<Shared>) {
    let mut wakeups: Option<Wakeups> = None;
    loop {
        if wakeups.is_none() {
            wakeups = Wakeups::connect(&shared.store, CHANNEL)
                .await
                .map_err(
                    |e| tracing::warn!(error = %e, "listening for API publishes failed; polling"),
                )
                .ok();
        }
        drain(&shared).await;
        let woken = async {
            match wakeups.as_mut() {
                Some(w) => w.wait().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ok = woken => if !ok { wakeups = None },
            _ = tokio::time::sleep(POLL) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

async fn drain(shared: &Shared) {
    loop {
        match shared.store.claim_api_publishes(CLAIM_BATCH).await {
            Ok(batch) if batch.is_empty() => return,
            Ok(batch) => {
                for published in batch {
                    route(shared, published).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming API publishes failed");
                return;
            }
        }
    }
}

async fn route(shared: &Shared, published: ApiPublish) {
    let namespace = Namespace::Tenant(published.tenant_id);
    let routes = shared.routes_for_namespace(&namespace).await;
    let message = Message {
        topic: published.topic,
        payload: published.payload.into(),
        qos: QoS::from_u8(published.qos).unwrap_or(QoS::AtMostOnce),
        retain: published.retain,
        properties: MessageProperties {
            content_type: published.content_type,
            ..MessageProperties::default()
        },
        origin: None,
        origin_registry: None,
    };
    if let Err(e) = publish::publish(shared, &routes, None, Arc::new(message)).await {
        tracing::warn!(error = %e, "API publish not routed");
    }
}
