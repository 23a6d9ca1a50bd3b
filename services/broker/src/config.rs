use crate::limits::TenantQuotaDefaults;
use serde::{Deserialize, Serialize};

/// The `[mqtt]` section of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Plain MQTT over TCP (dev profile; empty to disable).
    pub tcp_listen: Option<String>,
    /// A connection that has not sent a valid CONNECT within this time is closed.
    pub connect_timeout_secs: u64,
    /// The longest one write to a client may wait for the client to take it (a client whose
    /// TCP receive window stays full), seconds; then the connection is closed as on a
    /// network loss, and its will is published. At least 1.
    pub write_timeout_secs: u64,
    /// The largest packet accepted or sent, in bytes (MQTT 5 Maximum Packet Size).
    pub max_packet_size: u32,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    /// Messages queued towards one connection before QoS 0 messages are dropped.
    pub outbound_queue: usize,
    /// Unacknowledged QoS 1/2 messages sent to one client at a time.
    pub inflight_window: u16,
    /// Connections this process accepts at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// Topic aliases a client may set up towards the broker (MQTT 5 Topic Alias Maximum),
    /// and the most the broker sets up towards a client that accepts them.
    pub topic_alias_maximum: u16,
    /// Longest a persistent session is kept while its client is away, seconds: the cap on
    /// MQTT 5 Session Expiry Interval, and the expiry of MQTT 3.1.1 Clean Session 0 sessions.
    pub max_session_expiry_secs: u32,
    /// A virtual broker id (`brk_…`) that clients connecting without a username are mapped
    /// to (SPEC §3.6), for local development and third-party test suites. Unset: anonymous
    /// clients are refused.
    pub anonymous_broker: Option<String>,
    /// Topics with a retained message one namespace (a tenant's registries, or a virtual
    /// broker) may hold; beyond it, messages for new topics are delivered but not retained.
    pub max_retained_per_namespace: usize,
    /// Sessions of absent clients one namespace (a tenant's registries, or a virtual
    /// broker) keeps; beyond it the one that would expire first ends early.
    pub max_parked_sessions_per_namespace: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// PUBLISH packets one client may send per second, with bursts of as many (0:
    /// unlimited). A client beyond it is disconnected (MQTT 5: DISCONNECT 0x96).
    pub max_publishes_per_second_per_client: u64,
    /// CONNECTs one tenant's clients may make per second, counted before the password is
    /// checked (0: unlimited); beyond it CONNACK 0x9F.
    pub max_connects_per_second_per_tenant: u64,
    /// CONNECTs of one tenant whose password is being checked at once (0: unlimited);
    /// beyond it CONNACK 0x89, so that one tenant cannot hold every hashing thread.
    pub max_auth_in_flight_per_tenant: usize,
    /// PUBLISH packets refused by the ACL after which a client is disconnected (MQTT 5:
    /// DISCONNECT 0x87); 0: never.
    pub max_denied_publishes: u32,
    /// Successful password checks remembered (principal and a hash of the password), so
    /// that a reconnect storm does not cost an argon2 verification per CONNECT.
    pub auth_cache_entries: usize,
    /// How long a remembered password check stays valid, seconds; control-plane changes of
    /// the tenant's credentials, devices or the tenant itself forget it at once.
    pub auth_cache_ttl_secs: u64,
    /// Failed authentications from one address, or for one username, before further
    /// attempts are slowed down.
    pub auth_failures_before_delay: u32,
    /// The longest delay a CONNECT after repeated failures waits before it is answered,
    /// milliseconds (the delay doubles with each further failure up to it).
    pub auth_failure_max_delay_ms: u64,
    /// The tenant quota defaults (`[api.quotas]`), copied here by the binary; each tenant's
    /// own overrides are read from the store.
    #[serde(skip)]
    pub tenant_quotas: TenantQuotaDefaults,
    /// Upper bound on the keep alive the broker accepts (MQTT 5 Server Keep Alive), seconds.
    pub max_keep_alive_secs: u16,
    /// How long the broker waits to group rule matches into one transaction.
    pub rule_commit_max_wait_ms: u64,
    /// Largest number of rule matches written in one transaction.
    pub rule_commit_max_batch: usize,

    /// MQTT over TLS; started only when `tls_cert_file` is set (empty to disable).
    pub tls_listen: Option<String>,
    /// MQTT over WebSocket on `/mqtt`, subprotocol `mqtt` (empty to disable).
    pub ws_listen: Option<String>,
    /// MQTT over WebSocket over TLS on `/mqtt`; started only when `tls_cert_file` is set
    /// (empty to disable).
    pub wss_listen: Option<String>,
    /// Whether connections to `tcp_listen` start with a PROXY protocol v2 header (behind a
    /// load balancer that sends one); the client address is taken from it, and a
    /// connection without a valid header is closed.
    pub tcp_proxy_protocol: bool,
    /// The same for `tls_listen` (the header comes before the TLS handshake).
    pub tls_proxy_protocol: bool,
    /// The same for `ws_listen`.
    pub ws_proxy_protocol: bool,
    /// The same for `wss_listen`.
    pub wss_proxy_protocol: bool,
    /// PEM file with the server's certificate chain, leaf first, for both TLS listeners.
    pub tls_cert_file: Option<String>,
    /// PEM file with the private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            tcp_listen: Some("0.0.0.0:1883".into()),
            connect_timeout_secs: 10,
            write_timeout_secs: 30,
            max_packet_size: 256 * 1024 + 1024,
            max_topic_length: 1024,
            max_topic_levels: 16,
            outbound_queue: 1024,
            inflight_window: 64,
            max_connections: 100_000,
            topic_alias_maximum: 32,
            max_session_expiry_secs: 3600,
            anonymous_broker: None,
            max_retained_per_namespace: 100_000,
            max_parked_sessions_per_namespace: 10_000,
            max_subscriptions: 100,
            max_publishes_per_second_per_client: 1000,
            max_connects_per_second_per_tenant: 500,
            max_auth_in_flight_per_tenant: 16,
            max_denied_publishes: 100,
            auth_cache_entries: 100_000,
            auth_cache_ttl_secs: 300,
            auth_failures_before_delay: 5,
            auth_failure_max_delay_ms: 5000,
            tenant_quotas: TenantQuotaDefaults::default(),
            max_keep_alive_secs: 3600,
            rule_commit_max_wait_ms: 2,
            rule_commit_max_batch: 512,

            tls_listen: Some("0.0.0.0:8883".into()),
            ws_listen: Some("0.0.0.0:8083".into()),
            wss_listen: Some("0.0.0.0:8084".into()),
            tcp_proxy_protocol: false,
            tls_proxy_protocol: false,
            ws_proxy_protocol: false,
            wss_proxy_protocol: false,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}
