//! The first packet of a connection: CONNECT, authentication, the client id rule and the
//! CONNACK (SPEC §3.3, §4.1).

use crate::auth::{AuthFailure, Principal};
use crate::broker::Shared;
use crate::limits::{ConnectionSlot, Refusal};
use crate::policies::LiveAcl;
use crate::publish;
use crate::router::Message;
use crate::transport::tls::ClientCertificate;
use iotcore_codec::{
    connack_v3, ConnAck, Connect, Packet, Properties, ProtocolVersion, ReasonCode,
};
use iotcore_store::auth::PrincipalKind;
use iotcore_topic::TopicName;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// A CONNECT that was accepted.
pub struct Accepted {
    /// Shared with the connection's [`LiveAcl`], not copied.
    pub principal: Arc<Principal>,
    /// The connection's rights, kept current as policies change (SPEC §4.2).
    pub acl: LiveAcl,
    /// PUBLISH packets refused by the ACL so far (`mqtt.max_denied_publishes`).
    pub denied_publishes: u32,
    pub client_id: String,
    /// Set when the broker chose the client id (MQTT 5 Assigned Client Identifier).
    pub assigned: bool,
    pub keep_alive: u16,
    /// Set when the broker lowered the client's keep alive (MQTT 5 Server Keep Alive).
    pub server_keep_alive: Option<u16>,
    /// How long the session outlives the connection, seconds (0: it ends with it).
    pub session_expiry: u32,
    /// Set when the broker lowered the client's Session Expiry Interval.
    pub session_expiry_capped: bool,
    /// The will, checked against the ACL, and how long after an abnormal disconnect it is
    /// published (MQTT 5 Will Delay Interval, bounded by the session's life). Boxed: most
    /// connections have none, and the connection's task would keep room for one.
    pub will: Option<Box<(Message, Duration)>>,
    /// This connection's place in its tenant's connection quota, held until it ends; also
    /// the way to the tenant's message and byte rates.
    pub slot: ConnectionSlot,
}

/// A refused CONNECT, with the return code (3.x) or reason code (5.0) to answer.
pub struct Refused {
    pub code: u8,
    pub reason: &'static str,
}

/// Decides on a CONNECT. Never trusts anything in it but the credential for the tenant.
pub async fn accept(
    shared: &Shared,
    connect: &Connect,
    peer: std::net::IpAddr,
    client_certificate: Option<&ClientCertificate>,
) -> Result<Accepted, Refused> {
    let v5 = connect.protocol == ProtocolVersion::V5;
    let refuse = |v3: u8, v5_code: ReasonCode, reason: &'static str| Refused {
        code: if v5 { v5_code.0 } else { v3 },
        reason,
    };
    if connect.properties.authentication_method.is_some() {
        // Enhanced authentication (AUTH) is not supported (SPEC §3.1 allows this answer).
        return Err(refuse(
            0,
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "enhanced authentication is not supported",
        ));
    }
    let limited = |refusal: Refusal| Refused {
        code: if v5 {
            refusal.reason_code().0
        } else {
            connack_v3::SERVER_UNAVAILABLE
        },
        reason: refusal.as_str(),
    };
    // A certificate that names a principal decides; one that names nobody leaves it to
    // the password (SPEC §4.1).
    let certified = match client_certificate {
        Some(chain) => {
            crate::x509::authenticate(
                &shared.store,
                &shared.auth.certificates,
                &shared.quotas,
                chain,
            )
            .await
        }
        None => Ok(None),
    };
    let authenticated = match certified {
        Ok(Some(found)) => Ok(found),
        // A certificate that names nobody, and nothing else to go by: not authorized
        // (3.1.1: 5; 5.0: 0x87) rather than a bad password that was never given.
        Ok(None)
            if client_certificate.is_some()
                && connect.username.is_none()
                && connect.password.is_none()
                && shared
                    .config
                    .anonymous_broker
                    .as_deref()
                    .is_none_or(str::is_empty) =>
        {
            Err(AuthFailure::NotAuthorized)
        }
        Ok(None) => {
            shared
                .auth
                .authenticate(
                    connect.username.as_deref(),
                    connect.password.as_deref(),
                    peer,
                    &shared.quotas,
                )
                .await
        }
        Err(failure) => Err(failure),
    };
    let (principal, tenant) = authenticated.map_err(|failure| match failure {
        AuthFailure::BadCredentials => refuse(
            connack_v3::BAD_USER_NAME_OR_PASSWORD,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "bad user name or password",
        ),
        AuthFailure::NotAuthorized => refuse(
            connack_v3::NOT_AUTHORIZED,
            ReasonCode::NOT_AUTHORIZED,
            "not authorized",
        ),
        AuthFailure::Unavailable => refuse(
            connack_v3::SERVER_UNAVAILABLE,
            ReasonCode::SERVER_UNAVAILABLE,
            "server unavailable",
        ),
        AuthFailure::Limited(refusal) => limited(refusal),
    })?;
    let principal = shared.policies.shared_principal(principal);
    let (client_id, assigned) = client_id_for(&principal, &connect.client_id).ok_or_else(|| {
        refuse(
            connack_v3::IDENTIFIER_REJECTED,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client identifier not valid",
        )
    })?;
    // MQTT-3.1.3-8: a 3.1.1 client without a client id must ask for a clean session.
    if assigned && !v5 && !connect.clean_start {
        return Err(refuse(
            connack_v3::IDENTIFIER_REJECTED,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "empty client id",
        ));
    }
    let max = shared.config.max_keep_alive_secs;
    let (keep_alive, server_keep_alive) =
        if v5 && (connect.keep_alive == 0 || connect.keep_alive > max) {
            (max, Some(max))
        } else {
            (connect.keep_alive, None)
        };
    let acl = shared
        .policies
        .live_acl(&shared.store, &principal, &client_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "loading policies failed");
            refuse(
                connack_v3::SERVER_UNAVAILABLE,
                ReasonCode::SERVER_UNAVAILABLE,
                "server unavailable",
            )
        })?;
    let max_expiry = shared.config.max_session_expiry_secs;
    let requested_expiry = match connect.protocol {
        ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
        // MQTT 3.1.1 Clean Session 0: kept for the configured maximum.
        _ if connect.clean_start => 0,
        _ => max_expiry,
    };
    let session_expiry = requested_expiry.min(max_expiry);
    // A CONNECT refused below gives its slot back as `slot` is dropped.
    let slot = tenant.open_connection().map_err(|refusal| {
        tenant.refused(refusal);
        limited(refusal)
    })?;
    let will = match &connect.will {
        None => None,
        Some(will) => {
            // A will is published with the client's rights: one it could not publish itself
            // is refused at CONNECT rather than dropped silently later.
            TopicName::parse(&will.topic, shared.limits).map_err(|_| {
                refuse(
                    connack_v3::NOT_AUTHORIZED,
                    ReasonCode::TOPIC_NAME_INVALID,
                    "invalid will topic",
                )
            })?;
            if !publish::allowed(shared, &principal, &acl.current(), &will.topic).await {
                return Err(refuse(
                    connack_v3::NOT_AUTHORIZED,
                    ReasonCode::NOT_AUTHORIZED,
                    "will topic not allowed",
                ));
            }
            let message = publish::message_from(
                will.topic.clone(),
                will.payload.clone(),
                will.qos,
                will.retain,
                will.properties.clone(),
                None,
                &principal,
            );
            // A will is published when the session ends if that comes before the will
            // delay (MQTT-3.1.3-9).
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            let delay = Duration::from_secs(u64::from(delay.min(session_expiry)));
            Some(Box::new((message, delay)))
        }
    };
    Ok(Accepted {
        principal,
        acl,
        denied_publishes: 0,
        client_id,
        assigned,
        keep_alive,
        server_keep_alive,
        session_expiry,
        session_expiry_capped: session_expiry < requested_expiry,
        will,
        slot,
    })
}

/// The client id rule of SPEC §3.3. Returns the id to use and whether it was assigned.
fn client_id_for(principal: &Principal, requested: &str) -> Option<(String, bool)> {
    match &principal.kind {
        // A device's client id is its device id, so one device can never take over
        // another's session.
        PrincipalKind::Device { device_id, .. } => match requested {
            "" => Some((device_id.to_string(), true)),
            id if id == device_id.as_str() => Some((id.to_owned(), false)),
            _ => None,
        },
        PrincipalKind::Registry { registry_id } => match requested {
            "" => Some((registry_id.to_string(), true)),
            id if id == registry_id.as_str() => Some((id.to_owned(), false)),
            id => {
                let suffix = id.strip_prefix(registry_id.as_str())?.strip_prefix(':')?;
                valid_suffix(suffix).then(|| (id.to_owned(), false))
            }
        },
        PrincipalKind::Broker { .. } => match requested {
            "" => Some((generated_client_id(), true)),
            id => Some((id.to_owned(), false)),
        },
    }
}

fn valid_suffix(suffix: &str) -> bool {
    !suffix.is_empty()
        && suffix.len() <= 64
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn generated_client_id() -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("auto-{n:016x}")
}

/// The CONNACK for an accepted CONNECT, with the MQTT 5 properties that tell the client
/// what this broker supports.
pub fn connack(
    shared: &Shared,
    version: ProtocolVersion,
    accepted: &Accepted,
    session_present: bool,
) -> Packet {
    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 {
        if accepted.assigned {
            properties.assigned_client_identifier = Some(accepted.client_id.clone());
        }
        properties.server_keep_alive = accepted.server_keep_alive;
        if accepted.session_expiry_capped {
            properties.session_expiry_interval = Some(accepted.session_expiry);
        }
        properties.maximum_packet_size = Some(shared.config.max_packet_size);
        properties.receive_maximum = Some(shared.config.inflight_window);
        properties.topic_alias_maximum = Some(shared.config.topic_alias_maximum);
        properties.retain_available = Some(1);
        properties.wildcard_subscription_available = Some(1);
        properties.subscription_identifier_available = Some(1);
        properties.shared_subscription_available = Some(1);
    }
    Packet::ConnAck(ConnAck {
        session_present,
        code: 0,
        properties,
    })
}

pub fn refusal(refused: &Refused, version: ProtocolVersion) -> Packet {
    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 {
        properties.reason_string = Some(refused.reason.to_owned());
    }
    Packet::ConnAck(ConnAck {
        session_present: false,
        code: refused.code,
        properties,
    })
}
