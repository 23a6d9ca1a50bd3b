//! Authentication of MQTT clients at CONNECT (SPEC §4.1): username and password against
//! the store's argon2id hashes.

use crate::auth_cache::{AuthCache, CertificateCache, FailureThrottle};
use crate::limits::{Limits, Refusal, TenantLimits};
use crate::router::Namespace;
use iotcore_store::auth::{decoy_hash, verify_password, PasswordPrincipal, PrincipalKind};
use iotcore_store::{BrokerId, Store, TenantId};
use std::net::IpAddr;
use std::sync::Arc;

/// Who a connection acts as, decided once at CONNECT from its credential and never from
/// anything else the client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: TenantId,
    pub namespace: Namespace,
    pub kind: PrincipalKind,
    /// Whether the built-in rights of SPEC §4.2 apply.
    pub default_policy: bool,
    /// The tenant's rule generation when the credential was checked.
    pub rules_version: i64,
    /// The subject CN of the client certificate it authenticated with, for
    /// `${cert.subject.cn}` in policies (SPEC §4.2).
    pub cert_cn: Option<String>,
    /// The certificate it authenticated with, if it did (SPEC §4.1, item 1).
    pub certificate: Option<crate::x509::CertificateCredential>,
}

impl Principal {
    /// The id the client authenticated as: a device, registry or virtual broker id.
    pub fn id(&self) -> &str {
        match &self.kind {
            PrincipalKind::Device { device_id, .. } => device_id.as_str(),
            PrincipalKind::Registry { registry_id } => registry_id.as_str(),
            PrincipalKind::Broker { broker_id } => broker_id.as_str(),
        }
    }

    /// The subject CN of the client certificate the connection authenticated with, for
    /// `${cert.subject.cn}` in policies; `None` for password authentication.
    pub fn cert_cn(&self) -> Option<&str> {
        self.cert_cn.as_deref()
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown principal or wrong password: the same answer for both (3.1.1: 4; 5.0: 0x86).
    BadCredentials,
    /// Disabled device or suspended tenant (3.1.1: 5; 5.0: 0x87).
    NotAuthorized,
    /// The store could not be asked (3.1.1: 3; 5.0: 0x88).
    Unavailable,
    /// The tenant's CONNECT rate or authentications in flight (SPEC §3.5; 3.1.1: 3).
    Limited(Refusal),
}

pub struct Authenticator {
    store: Store,
    /// The virtual broker anonymous clients are mapped to (SPEC §3.6), if the operator
    /// chose one.
    anonymous_broker: Option<BrokerId>,
    /// Successful password checks, so that reconnecting clients cost no query or hash.
    pub cache: AuthCache,
    /// What client certificates resolved to, so that reconnecting clients cost no query or
    /// chain verification.
    pub certificates: CertificateCache,
    /// Recent failures per address and username, which slow further attempts down.
    throttle: FailureThrottle,
}

impl Authenticator {
    pub fn new(
        store: Store,
        anonymous_broker: Option<BrokerId>,
        cache: AuthCache,
        certificates: CertificateCache,
        throttle: FailureThrottle,
    ) -> Authenticator {
        Authenticator {
            store,
            anonymous_broker,
            cache,
            certificates,
            throttle,
        }
    }

    /// Forgets what was remembered about `tenant`'s credentials (the control plane
    /// changed its credentials, devices, registries, CAs or the tenant itself).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        self.cache.forget_tenant(tenant);
        self.certificates.forget_tenant(tenant);
    }

    /// Forgets every remembered credential (change notifications may have been missed).
    pub fn forget_all(&self) {
        self.cache.clear();
        self.certificates.clear();
    }

    /// Authenticates a CONNECT. Once the username has named a tenant, the tenant's CONNECT
    /// rate and authentications in flight are checked before the (costly) password hash,
    /// so that a reconnect storm of one tenant does not starve the others.
    ///
    /// A username and password that authenticated before (and whose tenant has not changed
    /// since) are answered from memory; otherwise, after repeated failures from `peer` or for
    /// `username`, the check waits first.
    pub async fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        peer: IpAddr,
        limits: &Limits,
    ) -> Result<(Principal, Arc<TenantLimits>), AuthFailure> {
        if let (None, Some(broker)) = (username, &self.anonymous_broker) {
            let principal = self.anonymous(broker).await?;
            let tenant = limits.tenant(&self.store, &principal.tenant_id).await;
            admit(limits, &tenant)?;
            return Ok((principal, tenant));
        }
        // Credentials that authenticated before skip the wait below, so that clients behind
        // one address (a NAT) are not held up by another one's failures when they reconnect.
        if let (Some(username), Some(password)) = (username, password) {
            if let Some(found) = self.cache.get(username, password) {
                crate::metrics::auth_answered(crate::metrics::PASSWORD, crate::metrics::CACHE);
                let tenant = limits.tenant(&self.store, &found.tenant_id).await;
                admit(limits, &tenant)?;
                return Ok((into_principal(found)?, tenant));
            }
        }
        let (delay, by) = self.throttle.delay_by(peer, username);
        if !delay.is_zero() {
            crate::metrics::auth_throttled(by);
            tokio::time::sleep(delay).await;
        }
        let result = self.verify(username, password, limits).await;
        match &result {
            Err(AuthFailure::BadCredentials) => self.throttle.failed(peer, username),
            Ok(_) => self.throttle.succeeded(username),
            Err(_) => {}
        }
        result
    }

    /// Looks the username up and verifies the password against its hashes (or a decoy).
    async fn verify(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        limits: &Limits,
    ) -> Result<(Principal, Arc<TenantLimits>), AuthFailure> {
        let generation = self.cache.generation();
        let found = match username {
            Some(username) => self
                .store
                .find_password_principal(username)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "looking up a principal failed");
                    failed("store_unavailable");
                    AuthFailure::Unavailable
                })?,
            None => None,
        };
        if username.is_some() {
            crate::metrics::auth_answered(crate::metrics::PASSWORD, crate::metrics::STORE);
        }
        let tenant = match &found {
            Some(principal) => Some(limits.tenant(&self.store, &principal.tenant_id).await),
            None => None,
        };
        let _permit = match &tenant {
            Some(tenant) => Some(admit(limits, tenant)?),
            None => None,
        };
        let password = password.unwrap_or_default().to_vec();
        let password_copy = password.clone();
        let hashes = match &found {
            Some(principal) if !principal.hashes.is_empty() => principal.hashes.clone(),
            // Unknown principals and principals without passwords still pay for one hash
            // verification, so that timing does not tell which usernames exist.
            _ => vec![decoy_hash().to_owned()],
        };
        let verified = {
            let _running = verifications().acquire().await;
            // In a storm, clients that gave up waiting close and try again: a verification
            // for a connection that is already gone would only delay the ones still there.
            if client_gone() {
                failed("client_gone");
                return Err(AuthFailure::Unavailable);
            }
            tokio::task::spawn_blocking(move || {
                hashes.iter().any(|hash| verify_password(hash, &password))
            })
            .await
            .unwrap_or(false)
        };
        match (found, tenant) {
            (Some(principal), Some(tenant)) if verified => {
                if let Some(username) = username {
                    self.cache
                        .insert(username, &password_copy, principal.clone(), generation);
                }
                Ok((into_principal(principal)?, tenant))
            }
            (Some(_), _) => {
                failed("bad_password");
                Err(AuthFailure::BadCredentials)
            }
            (None, _) => {
                failed("unknown_principal");
                Err(AuthFailure::BadCredentials)
            }
        }
    }
}

/// Bounds the argon2id verifications running at once to the number of cores. Each takes
/// 19 MiB while it runs and keeps a core busy, so more at once finish no sooner, while a
/// storm of CONNECTs would otherwise hold one 19 MiB block per blocking thread (up to 512).
fn verifications() -> &'static tokio::sync::Semaphore {
    static RUNNING: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    RUNNING.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

tokio::task_local! {
    /// The TCP socket of the connection this task serves (under TLS and WebSocket too). The
    /// transport layer sets it around the connection, which owns the socket for as long.
    pub static CLIENT_SOCKET: std::os::fd::RawFd;
}

/// Whether the client of this connection task has closed or reset its TCP connection.
/// Bytes it sent after its CONNECT (pipelined packets, or a TLS alert) do not count: a
/// client is gone once its side of the connection is shut (or reset), whatever is left
/// to read.
fn client_gone() -> bool {
    CLIENT_SOCKET
        .try_with(|fd| closed_by_peer(*fd))
        .unwrap_or(false)
}

#[cfg(target_os = "linux")]
fn closed_by_peer(fd: std::os::fd::RawFd) -> bool {
    let mut socket = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `poll` is given one initialized `pollfd` that lives across the call and a
    // timeout of 0: it writes `revents` and returns at once, keeping no pointer. `fd` is
    // only a number to it; were it closed meanwhile, `poll` would report POLLNVAL.
    let ready = unsafe { libc::poll(&mut socket, 1, 0) };
    ready > 0
        && socket.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

#[cfg(not(target_os = "linux"))]
fn closed_by_peer(_fd: std::os::fd::RawFd) -> bool {
    false
}

fn admit(
    limits: &Limits,
    tenant: &Arc<TenantLimits>,
) -> Result<crate::limits::AuthPermit, AuthFailure> {
    limits.admit_connect(tenant).map_err(|refusal| {
        tenant.refused(refusal);
        AuthFailure::Limited(refusal)
    })
}

impl Authenticator {
    /// A client without a username, in the operator's anonymous virtual broker: that
    /// broker's rights apply, nothing else.
    async fn anonymous(&self, broker: &BrokerId) -> Result<Principal, AuthFailure> {
        match self.store.find_password_principal(broker.as_str()).await {
            Ok(Some(principal)) => into_principal(principal),
            Ok(None) => {
                tracing::warn!(broker_id = %broker, "mqtt.anonymous_broker names no virtual broker");
                failed("unknown_principal");
                Err(AuthFailure::NotAuthorized)
            }
            Err(e) => {
                tracing::error!(error = %e, "looking up the anonymous broker failed");
                failed("store_unavailable");
                Err(AuthFailure::Unavailable)
            }
        }
    }
}

pub(crate) fn into_principal(found: PasswordPrincipal) -> Result<Principal, AuthFailure> {
    if !found.tenant_active {
        failed("tenant_suspended");
        return Err(AuthFailure::NotAuthorized);
    }
    let namespace = match &found.kind {
        PrincipalKind::Device { enabled: false, .. } => {
            failed("device_disabled");
            return Err(AuthFailure::NotAuthorized);
        }
        PrincipalKind::Device { .. } | PrincipalKind::Registry { .. } => {
            Namespace::Tenant(found.tenant_id.clone())
        }
        PrincipalKind::Broker { broker_id } => {
            Namespace::Broker(found.tenant_id.clone(), broker_id.clone())
        }
    };
    Ok(Principal {
        tenant_id: found.tenant_id,
        namespace,
        kind: found.kind,
        default_policy: found.default_policy,
        rules_version: found.rules_version,
        cert_cn: None,
        certificate: None,
    })
}

/// Counts a failed authentication in `iotcore_mqtt_auth_failures_total` by `reason`.
fn failed(reason: &'static str) {
    iotcore_telemetry::metrics::mqtt::AUTH_FAILURES
        .with(&[reason])
        .inc();
}
