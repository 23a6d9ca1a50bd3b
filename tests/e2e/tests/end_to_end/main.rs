//! End-to-end tests: the real `iotcore` binary, real PostgreSQL, real MQTT clients
//! (rumqttc 3.1.1 and 5, mosquitto_pub and mosquitto_sub) and a real HTTP webhook receiver.

mod acknowledgements;
mod acl;
mod api_publish;
mod authentication;
mod conformance_document;
mod connect_and_subscribe;
mod direct_writes;
mod durability;
mod isolation;
mod lifecycle;
mod limits;
mod metrics;
mod mosquitto_interop;
mod mqtt5_conformance;
mod mqtt_features;
mod otlp;
mod outbound_aliases;
mod policies;
mod protocol;
mod proxy_protocol;
mod quickstart;
mod revocation;
mod session_restarts;
mod sessions;
mod stuck_clients;
mod virtual_brokers;
mod webhook_retry;
mod wills;
