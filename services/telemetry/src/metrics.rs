//! The metrics of the operations contract: `deploy/README.md` ("Metrics contract") lists
//! them, and the Grafana dashboard and alerts rely on exactly these names and labels.
//! Change a name or a label here only together with those.
//!
//! `tenant` is the tenant id; it is left off where the tenant is not known yet (a refused
//! CONNECT) or where it would multiply series for little use (histograms, HTTP, database).

use crate::DEFAULT_SECONDS_BUCKETS;
use crate::{counter, gauge, histogram, Counter, Family, Gauge, Histogram};
use std::sync::LazyLock;

/// The MQTT broker's metrics.
pub mod mqtt {
    use super::*;

    /// `tenant`, `transport` (`tcp`, `tls`, `ws`, `wss`).
    pub static CONNECTIONS: LazyLock<Family<Gauge>> = LazyLock::new(|| {
        gauge(
            "iotcore_mqtt_connections",
            "Open MQTT connections",
            &["tenant", "transport"],
        )
    });

    /// `result`: `accepted`, or why the CONNECT was refused (see [`connect_result`]).
    pub static CONNECTS: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_mqtt_connects_total",
            "CONNECT attempts by result",
            &["result"],
        )
    });

    /// `reason`: `unknown_device`, `bad_password`, `bad_certificate`, `rate_limited`, ...
    pub static AUTH_FAILURES: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_mqtt_auth_failures_total",
            "Failed device authentications by reason",
            &["reason"],
        )
    });

    /// `tenant`, `qos`.
    pub static MESSAGES_IN: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_mqtt_messages_in_total",
            "PUBLISH packets received from clients",
            &["tenant", "qos"],
        )
    });

    /// `tenant`, `qos`.
    pub static MESSAGES_OUT: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_mqtt_messages_out_total",
            "PUBLISH packets sent to clients",
            &["tenant", "qos"],
        )
    });

    /// `tenant`.
    pub static BYTES_IN: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_mqtt_bytes_in_total",
            "MQTT bytes received from clients",
            &["tenant"],
        )
    });

    /// `tenant`.
    pub static BYTES_OUT: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_mqtt_bytes_out_total",
            "MQTT bytes sent to clients",
            &["tenant"],
        )
    });

    /// `tenant`, `reason` (one of the `DROP_*` constants, or another short fixed word).
    pub static DROPPED: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_mqtt_dropped_total",
            "Messages discarded by reason",
            &["tenant", "reason"],
        )
    });

    /// `tenant`.
    pub static SUBSCRIPTIONS: LazyLock<Family<Gauge>> = LazyLock::new(|| {
        gauge(
            "iotcore_mqtt_subscriptions",
            "Subscriptions held",
            &["tenant"],
        )
    });

    /// `tenant`.
    pub static RETAINED_MESSAGES: LazyLock<Family<Gauge>> = LazyLock::new(|| {
        gauge(
            "iotcore_mqtt_retained_messages",
            "Retained messages stored",
            &["tenant"],
        )
    });

    /// A subscriber's outbound queue was full (a slow consumer).
    pub const DROP_QUEUE_FULL: &str = "queue_full";
    /// The message expired before it could be sent (MQTT 5 Message Expiry Interval).
    pub const DROP_EXPIRED: &str = "expired";
    /// The message is larger than the receiver's Maximum Packet Size.
    pub const DROP_TOO_LARGE: &str = "too_large";
    /// A tenant quota (rate, retained messages) refused it.
    pub const DROP_QUOTA: &str = "quota";
    /// The publisher may not publish to the topic.
    pub const DROP_NOT_AUTHORIZED: &str = "not_authorized";

    /// The `result` label of [`CONNECTS`] for a CONNACK reason: `accepted`, or the reason
    /// in snake case (`bad_credentials`, `not_authorized`, `quota_exceeded`, ...).
    pub const ACCEPTED: &str = "accepted";

    /// The `qos` label values, indexed by QoS.
    const QOS: [&str; 3] = ["0", "1", "2"];

    /// One connection's handles on the per-tenant MQTT series, resolved once at CONNECT so
    /// that counting a message is a few atomic adds. Holding it counts the connection in
    /// [`CONNECTIONS`] until it is dropped.
    pub struct ConnectionMetrics {
        tenant: String,
        messages_in: [Counter; 3],
        messages_out: [Counter; 3],
        bytes_in: Counter,
        bytes_out: Counter,
        subscriptions: Gauge,
        _open: crate::GaugeGuard,
    }

    impl ConnectionMetrics {
        /// `transport` is `tcp`, `tls`, `ws` or `wss`.
        pub fn new(tenant: &str, transport: &'static str) -> ConnectionMetrics {
            let per_qos = |family: &Family<Counter>| QOS.map(|qos| family.with(&[tenant, qos]));
            ConnectionMetrics {
                tenant: tenant.to_owned(),
                messages_in: per_qos(&MESSAGES_IN),
                messages_out: per_qos(&MESSAGES_OUT),
                bytes_in: BYTES_IN.with(&[tenant]),
                bytes_out: BYTES_OUT.with(&[tenant]),
                subscriptions: SUBSCRIPTIONS.with(&[tenant]),
                _open: CONNECTIONS.with(&[tenant, transport]).guard(),
            }
        }

        /// A PUBLISH received from the client (`qos` 0–2).
        pub fn message_in(&self, qos: u8) {
            if let Some(counter) = self.messages_in.get(usize::from(qos)) {
                counter.inc();
            }
        }

        /// A PUBLISH sent to the client (`qos` 0–2).
        pub fn message_out(&self, qos: u8) {
            if let Some(counter) = self.messages_out.get(usize::from(qos)) {
                counter.inc();
            }
        }

        /// This connection's `iotcore_mqtt_messages_out_total` series of `qos`, for a
        /// message written to it from elsewhere.
        pub fn message_out_counter(&self, qos: u8) -> Option<Counter> {
            self.messages_out.get(usize::from(qos)).cloned()
        }

        /// The tenant's `iotcore_mqtt_bytes_in_total` and `iotcore_mqtt_bytes_out_total`,
        /// for the socket layer to count what it reads and writes.
        pub fn byte_counters(&self) -> (Counter, Counter) {
            (self.bytes_in.clone(), self.bytes_out.clone())
        }

        /// A message dropped for another reason (one of the `DROP_*` constants); rarer, so
        /// the series is looked up.
        pub fn dropped(&self, reason: &str) {
            DROPPED.with(&[&self.tenant, reason]).inc();
        }

        /// The tenant's subscription gauge, to add or remove this connection's subscriptions.
        pub fn subscriptions(&self) -> &Gauge {
            &self.subscriptions
        }
    }
}

/// The rules service's metrics.
pub mod rules {
    use super::*;

    /// `tenant`.
    pub static QUEUE_DEPTH: LazyLock<Family<Gauge>> = LazyLock::new(|| {
        gauge(
            "iotcore_rules_queue_depth",
            "Rule matches waiting for delivery",
            &["tenant"],
        )
    });

    /// `tenant`, `outcome` (`success`, `retry`, `dead_letter`).
    pub static DELIVERIES: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_rules_deliveries_total",
            "Webhook delivery attempts by outcome",
            &["tenant", "outcome"],
        )
    });

    /// One webhook request, send to response.
    pub static DELIVERY_SECONDS: LazyLock<Family<Histogram>> = LazyLock::new(|| {
        histogram(
            "iotcore_rules_delivery_seconds",
            "One webhook request, send to response",
            &[],
            DEFAULT_SECONDS_BUCKETS,
        )
    });

    /// `tenant`.
    pub static DEAD_LETTERS: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_rules_dead_letters_total",
            "Deliveries given up and dead-lettered",
            &["tenant"],
        )
    });

    pub const OUTCOME_SUCCESS: &str = "success";
    pub const OUTCOME_RETRY: &str = "retry";
    pub const OUTCOME_DEAD_LETTER: &str = "dead_letter";
}

/// The control plane's metrics.
pub mod http {
    use super::*;

    /// `route` (the route template, never the raw path), `status`.
    pub static REQUESTS: LazyLock<Family<Counter>> = LazyLock::new(|| {
        counter(
            "iotcore_http_requests_total",
            "API requests by route template and status",
            &["route", "status"],
        )
    });

    /// `route`.
    pub static REQUEST_SECONDS: LazyLock<Family<Histogram>> = LazyLock::new(|| {
        histogram(
            "iotcore_http_request_seconds",
            "API request duration",
            &["route"],
            DEFAULT_SECONDS_BUCKETS,
        )
    });
}

/// The database pool's metrics.
pub mod db {
    use super::*;

    /// `state` (`idle`, `in_use`).
    pub static POOL_CONNECTIONS: LazyLock<Family<Gauge>> = LazyLock::new(|| {
        gauge(
            "iotcore_db_pool_connections",
            "PostgreSQL pool connections of this process",
            &["state"],
        )
    });
}

/// Registers every family above, so that `/metrics` lists them before first use.
pub(crate) fn touch_all() {
    use std::sync::LazyLock as L;
    L::force(&mqtt::CONNECTIONS);
    L::force(&mqtt::CONNECTS);
    L::force(&mqtt::AUTH_FAILURES);
    L::force(&mqtt::MESSAGES_IN);
    L::force(&mqtt::MESSAGES_OUT);
    L::force(&mqtt::BYTES_IN);
    L::force(&mqtt::BYTES_OUT);
    L::force(&mqtt::DROPPED);
    L::force(&mqtt::SUBSCRIPTIONS);
    L::force(&mqtt::RETAINED_MESSAGES);
    L::force(&rules::QUEUE_DEPTH);
    L::force(&rules::DELIVERIES);
    L::force(&rules::DELIVERY_SECONDS);
    L::force(&rules::DEAD_LETTERS);
    L::force(&http::REQUESTS);
    L::force(&http::REQUEST_SECONDS);
    L::force(&db::POOL_CONNECTIONS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_family_is_rendered_before_use() {
        let text = crate::render();
        for name in [
            "iotcore_mqtt_connections",
            "iotcore_mqtt_connects_total",
            "iotcore_mqtt_auth_failures_total",
            "iotcore_mqtt_messages_in_total",
            "iotcore_mqtt_messages_out_total",
            "iotcore_mqtt_bytes_in_total",
            "iotcore_mqtt_bytes_out_total",
            "iotcore_mqtt_dropped_total",
            "iotcore_mqtt_subscriptions",
            "iotcore_mqtt_retained_messages",
            "iotcore_rules_queue_depth",
            "iotcore_rules_deliveries_total",
            "iotcore_rules_delivery_seconds",
            "iotcore_rules_dead_letters_total",
            "iotcore_http_requests_total",
            "iotcore_http_request_seconds",
            "iotcore_db_pool_connections",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains("iotcore_rules_delivery_seconds_count 0\n"));
    }

    #[test]
    fn a_connection_counts_itself_until_dropped() {
        let tenant = "tnt_connection_metrics_test";
        let open = mqtt::CONNECTIONS.with(&[tenant, "tcp"]);
        let connection = mqtt::ConnectionMetrics::new(tenant, "tcp");
        assert_eq!(open.get(), 1);
        connection.message_in(1);
        connection.message_in(7);
        connection.dropped(mqtt::DROP_EXPIRED);
        assert_eq!(mqtt::MESSAGES_IN.with(&[tenant, "1"]).get(), 1);
        assert_eq!(mqtt::DROPPED.with(&[tenant, mqtt::DROP_EXPIRED]).get(), 1);
        drop(connection);
        assert_eq!(open.get(), 0);
    }
}
