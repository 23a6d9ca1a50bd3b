//! The iotcore MQTT broker: connections, authentication, ACLs, routing, retained messages
//! and rule matching (SPEC §3, §4, §5).
//!
//! A PUBLISH goes one way: socket → codec → session (auth and ACL decided at CONNECT) →
//! router (the namespace's trie) → subscribers' bounded mailboxes → their sockets; and,
//! beside the router, rule matches → durable queue (group commit) → rules workers.

mod acl;
mod api_publishes;
mod auth;
mod auth_cache;
mod batch;
mod broker;
pub mod config;
mod connection;
mod handshake;
mod inbound;
mod limits;
mod mailbox;
mod metrics;
mod outbound;
mod policies;
mod publish;
mod retained_store;
mod router;
mod rules;
mod session_store;
mod sessions;
mod status;
mod subscriptions;
mod topic_aliases;
mod transport;
mod wills;
mod x509;

pub use broker::run;
pub use config::BrokerConfig;
pub use limits::TenantQuotaDefaults;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    /// A setting that cannot be used, such as an unreadable certificate file.
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] iotcore_store::StoreError),
}
