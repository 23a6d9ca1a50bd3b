//! Device connection status and lifecycle events (SPEC §6.3).
//!
//! Status rows are written by one task in batches (a transaction every few milliseconds at
//! most, never one per packet). Lifecycle events are ordinary messages on
//! `$registries/{registry_id}/lifecycle/{device_id}`, published by the broker only, so
//! registry clients and rules see them like any other message.

use crate::broker::Shared;
use crate::publish;
use crate::router::{Message, MessageProperties, NamespaceRoutes};
use chrono::{DateTime, SubsecRound, Utc};
use iotcore_codec::{ProtocolVersion, QoS};
use iotcore_store::auth::PrincipalKind;
use iotcore_store::connections::ConnectionEvent;
use iotcore_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events queued beyond this are dropped (and logged) rather than held in memory.
const QUEUE: usize = 16 * 1024;
const MAX_BATCH: usize = 512;
const MAX_WAIT: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct StatusWriter {
    events: mpsc::Sender<ConnectionEvent>,
}

impl StatusWriter {
    pub fn start(store: Store, shutdown: CancellationToken) -> StatusWriter {
        let (events, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, rx, shutdown));
        StatusWriter { events }
    }

    fn record(&self, event: ConnectionEvent) {
        if self.events.try_send(event).is_err() {
            tracing::warn!("connection status writer saturated; status update dropped");
        }
    }
}

async fn write_batches(
    store: Store,
    mut rx: mpsc::Receiver<ConnectionEvent>,
    shutdown: CancellationToken,
) {
    while let Some(batch) = crate::batch::next(&mut rx, &shutdown, MAX_BATCH, MAX_WAIT).await {
        if let Err(e) = store.record_connection_events(&batch).await {
            tracing::warn!(error = %e, events = batch.len(), "writing connection status failed");
        }
    }
}

/// What a connection remembers to report its end.
pub struct Connected {
    at: DateTime<Utc>,
}

fn version_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

/// Records that a device connected and publishes its `connected` lifecycle event. Returns
/// `None` for principals that are not devices.
pub async fn connected(
    shared: &Shared,
    routes: &NamespaceRoutes,
    principal: &crate::auth::Principal,
    version: ProtocolVersion,
    peer: std::net::SocketAddr,
) -> Option<Connected> {
    let PrincipalKind::Device {
        device_id,
        registry_id,
        ..
    } = &principal.kind
    else {
        return None;
    };
    let at = Utc::now().trunc_subsecs(6);
    shared.status.record(ConnectionEvent::Connected {
        tenant_id: principal.tenant_id.clone(),
        device_id: device_id.clone(),
        connected_at: at,
        protocol_version: version_name(version).to_owned(),
        client_address: peer.to_string(),
    });
    let event = serde_json::json!({
        "event": "connected",
        "tenant_id": principal.tenant_id,
        "registry_id": registry_id,
        "device_id": device_id,
        "at": at.to_rfc3339(),
        "protocol_version": version_name(version),
        "client_address": peer.to_string(),
    });
    lifecycle(shared, routes, principal, event).await;
    Some(Connected { at })
}

/// Records that a device's connection ended and publishes its `disconnected` event.
pub async fn disconnected(
    shared: &Shared,
    routes: &NamespaceRoutes,
    principal: &crate::auth::Principal,
    connected: Connected,
    reason: &str,
) {
    let PrincipalKind::Device {
        device_id,
        registry_id,
        ..
    } = &principal.kind
    else {
        return;
    };
    let at = Utc::now().trunc_subsecs(6);
    shared.status.record(ConnectionEvent::Disconnected {
        tenant_id: principal.tenant_id.clone(),
        device_id: device_id.clone(),
        connected_at: connected.at,
        disconnected_at: at,
        last_activity_at: at,
        reason: reason.to_owned(),
    });
    let event = serde_json::json!({
        "event": "disconnected",
        "tenant_id": principal.tenant_id,
        "registry_id": registry_id,
        "device_id": device_id,
        "at": at.to_rfc3339(),
        "reason": reason,
    });
    lifecycle(shared, routes, principal, event).await;
}

async fn lifecycle(
    shared: &Shared,
    routes: &NamespaceRoutes,
    principal: &crate::auth::Principal,
    event: serde_json::Value,
) {
    let PrincipalKind::Device {
        device_id,
        registry_id,
        ..
    } = &principal.kind
    else {
        return;
    };
    let message = Message {
        topic: format!("$registries/{registry_id}/lifecycle/{device_id}"),
        payload: serde_json::to_vec(&event).unwrap_or_default().into(),
        // QoS 1, so rules forwarding lifecycle events get them durably.
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties {
            content_type: Some("application/json".into()),
            payload_format_indicator: Some(1),
            ..MessageProperties::default()
        },
        origin: None,
        origin_registry: Some(registry_id.clone()),
    };
    if let Err(e) = publish::publish(shared, routes, Some(principal), Arc::new(message)).await {
        tracing::warn!(error = %e, "lifecycle event not published");
    }
}
