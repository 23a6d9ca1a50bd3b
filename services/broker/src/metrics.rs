//! The broker's side of the metrics contract (`iotcore_telemetry::metrics::mqtt`): what the
//! connection task needs to resolve its label set once, and the gauges read at each scrape.
//!
//! Series are per tenant; a virtual broker's traffic counts for the tenant that owns it.

use crate::broker::Shared;
use crate::connection::{self, Close};
use iotcore_codec::{ProtocolVersion, ReasonCode};
use iotcore_store::TenantId;
use iotcore_telemetry::metrics::mqtt;
use iotcore_telemetry::{Counter, Family};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};

/// Authentications at CONNECT by `method` and by what answered them (`source`): `cache`
/// for a credential remembered from an earlier CONNECT, `store` for one looked up in
/// PostgreSQL (then verified: argon2id for a password, the chain for a certificate).
static AUTH_LOOKUPS: LazyLock<Family<Counter>> = LazyLock::new(|| {
    iotcore_telemetry::counter(
        "iotcore_mqtt_auth_lookups_total",
        "CONNECT authentications by method and by whether the cache or the store answered",
        &["method", "source"],
    )
});

/// The `method` label of [`auth_answered`].
pub const PASSWORD: &str = "password";
pub const CERTIFICATE: &str = "certificate";
/// The `source` label of [`auth_answered`].
pub const CACHE: &str = "cache";
pub const STORE: &str = "store";

/// CONNECTs held back before their password was checked, after repeated failures from
/// their address or for their username (`by`: `address`, `username`; SPEC §4.1).
static AUTH_THROTTLED: LazyLock<Family<Counter>> = LazyLock::new(|| {
    iotcore_telemetry::counter(
        "iotcore_mqtt_auth_throttled_total",
        "CONNECTs slowed down after repeated authentication failures, by address or username",
        &["by"],
    )
});

/// Counts one CONNECT slowed down because of the failures of its address or username.
pub fn auth_throttled(by: &'static str) {
    AUTH_THROTTLED.with(&[by]).inc();
}

/// Counts one authentication of `method` answered by `source`.
pub fn auth_answered(method: &'static str, source: &'static str) {
    AUTH_LOOKUPS.with(&[method, source]).inc();
}

/// Ends of accepted connections, by tenant and [`disconnect_label`] (`deploy/README.md`,
/// metrics).
static DISCONNECTS: LazyLock<Family<Counter>> = LazyLock::new(|| {
    iotcore_telemetry::counter(
        "iotcore_mqtt_disconnects_total",
        "Accepted MQTT connections that ended, by reason",
        &["tenant", "reason"],
    )
});

/// Registers the broker's own families, so that `/metrics` lists them before first use.
pub fn register() {
    LazyLock::force(&DISCONNECTS);
}

/// Counts the end of an accepted connection.
pub fn disconnected(tenant: &TenantId, close: &Close) {
    DISCONNECTS
        .with(&[tenant.as_str(), disconnect_label(close)])
        .inc();
}

fn disconnect_label(close: &Close) -> &'static str {
    match close.reason {
        None if close.why == connection::CLIENT_DISCONNECT => "client_disconnect",
        None if close.why == connection::WRITE_TIMEOUT => "write_timeout",
        None => "connection_lost",
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT) => "keep_alive_timeout",
        Some(ReasonCode::SESSION_TAKEN_OVER) => "session_taken_over",
        Some(ReasonCode::NOT_AUTHORIZED) => "not_authorized",
        Some(ReasonCode::SERVER_SHUTTING_DOWN) => "server_shutting_down",
        Some(ReasonCode::QUOTA_EXCEEDED | ReasonCode::MESSAGE_RATE_TOO_HIGH) => "limit",
        Some(_) => "protocol_error",
    }
}

tokio::task_local! {
    /// The `transport` label of the connection this task serves; set by the transport
    /// layer around the connection so that nothing in between has to carry it.
    pub static TRANSPORT: &'static str;
}

/// The `transport` label of the current connection task (`tcp` outside any scope).
pub fn transport() -> &'static str {
    TRANSPORT.try_with(|transport| *transport).unwrap_or("tcp")
}

/// Counts a refused CONNECT by its CONNACK code (a 3.1.1 return code or an MQTT 5 reason
/// code, depending on `version`).
pub fn connect_refused(code: u8, version: ProtocolVersion) {
    mqtt::CONNECTS.with(&[refusal_label(code, version)]).inc();
}

fn refusal_label(code: u8, version: ProtocolVersion) -> &'static str {
    if version != ProtocolVersion::V5 {
        return match code {
            1 => "unsupported_protocol_version",
            2 => "client_identifier_not_valid",
            3 => "server_unavailable",
            4 => "bad_credentials",
            5 => "not_authorized",
            _ => "other",
        };
    }
    match ReasonCode(code) {
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => "bad_credentials",
        ReasonCode::NOT_AUTHORIZED => "not_authorized",
        ReasonCode::SERVER_UNAVAILABLE => "server_unavailable",
        ReasonCode::BAD_AUTHENTICATION_METHOD => "bad_authentication_method",
        ReasonCode::QUOTA_EXCEEDED => "quota_exceeded",
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => "client_identifier_not_valid",
        ReasonCode::SERVER_BUSY => "server_busy",
        ReasonCode::BANNED => "banned",
        ReasonCode::CONNECTION_RATE_EXCEEDED => "connection_rate_exceeded",
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => "unsupported_protocol_version",
        _ => "other",
    }
}

/// Keeps `iotcore_mqtt_retained_messages` current: counted from the router at each scrape,
/// so that storing a retained message costs nothing extra.
pub fn count_retained_at_scrape(shared: &Arc<Shared>) {
    let shared: Weak<Shared> = Arc::downgrade(shared);
    iotcore_telemetry::registry().on_collect(move || {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut per_tenant: HashMap<TenantId, usize> = HashMap::new();
        for (namespace, routes) in shared.router.loaded() {
            *per_tenant.entry(namespace.tenant_id().clone()).or_default() +=
                routes.retained_count();
        }
        for (tenant, count) in per_tenant {
            mqtt::RETAINED_MESSAGES
                .with(&[tenant.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    });
}

/// Fills the connection span's `registry_id` and `device_id` (SPEC §7.1: log lines carry
/// them), as far as the principal has them.
pub fn record_principal(span: &tracing::Span, kind: &iotcore_store::auth::PrincipalKind) {
    use iotcore_store::auth::PrincipalKind;
    match kind {
        PrincipalKind::Device {
            device_id,
            registry_id,
            ..
        } => {
            span.record("registry_id", registry_id.as_str());
            span.record("device_id", device_id.as_str());
        }
        PrincipalKind::Registry { registry_id } => {
            span.record("registry_id", registry_id.as_str());
        }
        PrincipalKind::Broker { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_labelled_the_same_in_both_protocol_versions() {
        assert_eq!(
            refusal_label(4, ProtocolVersion::V3_1_1),
            refusal_label(0x86, ProtocolVersion::V5)
        );
        assert_eq!(refusal_label(0x87, ProtocolVersion::V5), "not_authorized");
        assert_eq!(refusal_label(0x97, ProtocolVersion::V5), "quota_exceeded");
        assert_eq!(refusal_label(0x42, ProtocolVersion::V5), "other");
    }

    #[test]
    fn disconnects_are_labelled_by_what_ended_them() {
        let label = |close: Close| disconnect_label(&close);
        assert_eq!(
            label(Close::silently(connection::WRITE_TIMEOUT)),
            "write_timeout"
        );
        assert_eq!(label(Close::silently("read error")), "connection_lost");
        assert_eq!(
            label(Close::with(ReasonCode::SESSION_TAKEN_OVER, "taken over")),
            "session_taken_over"
        );
        assert_eq!(
            label(Close::with(ReasonCode::MALFORMED_PACKET, "malformed")),
            "protocol_error"
        );
    }
}
