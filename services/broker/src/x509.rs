//! Certificate authentication at CONNECT (SPEC §4.1, item 1). The TLS layer has already
//! checked that the client holds the key of the certificate it presented (the handshake
//! signature); here the certificate is matched to a principal, in order:
//!
//! a. its SHA-256 fingerprint is registered on a device, registry or virtual broker;
//! b. otherwise its chain verifies against an active CA certificate of a registry and its
//!    subject CN (or a DNS/URI alternative name) names a device of that registry — by id
//!    or by name — or, when there is none and the CA has `auto_register`, a device of
//!    that name is created with the certificate registered on it (just in time);
//! c. otherwise it names nobody: the CONNECT's password decides, and without one the
//!    connection is refused.
//!
//! A registered certificate that is revoked, outside its validity period or issued by a
//! deleted CA is refused outright, whatever else the CONNECT carries.

use crate::auth::{AuthFailure, Principal};
use crate::auth_cache::{CertificateCache, CertifiedPrincipal};
use crate::limits::{Limits, Refusal, TenantLimits};
use crate::transport::tls::ClientCertificate;
use chrono::{DateTime, Utc};
use iotcore_pki::{verify_chain, Certificate, ChainError, Validity};
use iotcore_store::auth::PrincipalKind;
use iotcore_store::certificates::NewCertificate;
use iotcore_store::{CaCertificateId, DeviceId, Store, StoreError, TenantId};
use std::sync::Arc;
use std::time::Duration;

/// Separates a principal id from the certificate in a session's principal key.
const KEY_MARK: &str = "#x509:";

/// The certificate a connection authenticated with, kept so that revoking it (or deleting
/// its CA) disconnects the connection, and so that its expiry does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateCredential {
    pub fingerprint: String,
    /// The registry CA the chain verified against, when the certificate itself is not
    /// registered (a device named by a CA-signed certificate).
    pub ca_id: Option<CaCertificateId>,
    /// When the credential stops being valid: the certificate's `not_after`, or, when it
    /// was verified through a registry CA, the earliest `not_after` of the chain.
    pub not_after: DateTime<Utc>,
}

impl CertificateCredential {
    /// The key live sessions are recorded under: the principal id, then the certificate,
    /// so that re-checking it after a change looks at the certificate, not at passwords.
    pub fn session_key(&self, principal_id: &str) -> String {
        match &self.ca_id {
            Some(ca) => format!("{principal_id}{KEY_MARK}{}@{ca}", self.fingerprint),
            None => format!("{principal_id}{KEY_MARK}{}", self.fingerprint),
        }
    }
}

/// The longest a connection's certificate expiry timer waits before it looks at the clock
/// again (timers this far out are coarse, and the wall clock may be set meanwhile).
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(86_400);

/// How long the connection may wait before it checks `not_after` again, or `None` once the
/// certificate has expired (SPEC §4.1: a certificate outside its validity is refused; a
/// connection whose certificate expires is disconnected, MQTT 5: 0x87).
pub fn time_left(not_after: DateTime<Utc>, now: DateTime<Utc>) -> Option<Duration> {
    // `None` exactly when `Validity::at` calls the certificate expired.
    match (not_after - now).to_std() {
        Ok(left) if !left.is_zero() => Some(left.min(EXPIRY_CHECK_EVERY)),
        _ => None,
    }
}

/// Authenticates a CONNECT by the certificate the client presented. `Ok(None)`: the
/// certificate names nobody, and other credentials may be tried.
///
/// A certificate that named a principal before is answered from `cache` (no query, no
/// chain verification) until its tenant changes, the cache's TTL passes or the certificate
/// expires.
pub async fn authenticate(
    store: &Store,
    cache: &CertificateCache,
    limits: &Limits,
    chain: &ClientCertificate,
) -> Result<Option<(Principal, Arc<TenantLimits>)>, AuthFailure> {
    let Some(leaf_der) = chain.first() else {
        return Ok(None);
    };
    let fingerprint = iotcore_pki::fingerprint(leaf_der);
    let now = Utc::now();
    let generation = cache.generation();
    let (found, cached) = match cache.get(&fingerprint, now) {
        Some(found) => {
            crate::metrics::auth_answered(crate::metrics::CERTIFICATE, crate::metrics::CACHE);
            (found, true)
        }
        None => {
            crate::metrics::auth_answered(crate::metrics::CERTIFICATE, crate::metrics::STORE);
            let Some(found) = identify(store, limits, chain, now).await? else {
                return Ok(None);
            };
            (found, false)
        }
    };
    let mut principal = crate::auth::into_principal(found.principal.clone())?;
    principal.cert_cn = found.common_name.clone();
    principal.certificate = Some(found.credential.clone());
    if !cached {
        cache.insert(&fingerprint, found, generation);
    }
    let tenant = limits.tenant(store, &principal.tenant_id).await;
    limits.admit_connect(&tenant).map_err(|refusal| {
        tenant.refused(refusal);
        AuthFailure::Limited(refusal)
    })?;
    Ok(Some((principal, tenant)))
}

async fn identify(
    store: &Store,
    limits: &Limits,
    chain: &ClientCertificate,
    now: DateTime<Utc>,
) -> Result<Option<CertifiedPrincipal>, AuthFailure> {
    let Some(leaf_der) = chain.first() else {
        return Ok(None);
    };
    let leaf = match Certificate::from_der(leaf_der) {
        Ok(leaf) => leaf,
        Err(e) => {
            tracing::debug!(error = %e, "client certificate cannot be read");
            return Ok(None);
        }
    };
    // a. Registered by fingerprint.
    if let Some(registered) = store
        .find_certificate(&leaf.fingerprint)
        .await
        .map_err(unavailable)?
    {
        if !registered.active || registered.ca_active == Some(false) {
            return Err(refused("certificate_revoked"));
        }
        if Validity::at(registered.not_before, registered.not_after, now) != Validity::Valid {
            return Err(refused("certificate_expired"));
        }
        return named(
            store,
            &registered.owner_id,
            &leaf,
            None,
            registered.not_after,
        )
        .await;
    }
    // b. Signed by a registry's CA.
    let intermediates: Vec<Vec<u8>> = chain[1..].to_vec();
    let parsed: Vec<Certificate> = intermediates
        .iter()
        .filter_map(|der| Certificate::from_der(der).ok())
        .collect();
    let mut issuers = vec![leaf.issuer.clone()];
    issuers.extend(parsed.iter().map(|c| c.issuer.clone()));
    // An intermediate that has expired cannot be on a chain that verifies now; the others
    // may be, so the earliest of their ends bounds the credential.
    let chain_end = parsed
        .iter()
        .map(|c| c.not_after)
        .filter(|end| *end > now)
        .fold(leaf.not_after, DateTime::min);
    let cas = store.trusted_cas(&issuers).await.map_err(unavailable)?;
    let mut verified = Vec::new();
    let mut out_of_date = false;
    for ca in cas {
        let Some(ca_cert) = iotcore_pki::parse_pem(&ca.pem)
            .ok()
            .and_then(|certs| certs.into_iter().next())
        else {
            continue;
        };
        let chain_valid = Validity::at(ca_cert.not_before, chain_end.min(ca_cert.not_after), now);
        match verify_chain(&leaf.der, &intermediates, &ca_cert.der, now) {
            // webpki compares whole seconds, so it accepts a chain during the second in which
            // one of its certificates expires; `Validity::at` does not.
            Ok(()) if chain_valid != Validity::Valid => out_of_date = true,
            Ok(()) => verified.push((ca, chain_end.min(ca_cert.not_after))),
            Err(ChainError::Expired | ChainError::NotYetValid) => out_of_date = true,
            Err(e) => tracing::debug!(ca_id = %ca.id, error = %e, "chain does not verify"),
        }
    }
    if verified.is_empty() {
        if out_of_date || leaf.validity_at(now) != Validity::Valid {
            return Err(refused("certificate_expired"));
        }
        return Ok(None);
    }
    let names: Vec<String> = leaf.names().map(str::to_owned).collect();
    for (ca, not_after) in &verified {
        let device = store
            .device_named(&ca.tenant_id, &ca.registry_id, &names)
            .await
            .map_err(unavailable)?;
        if let Some(device) = device {
            return named(
                store,
                device.as_str(),
                &leaf,
                Some(ca.id.clone()),
                *not_after,
            )
            .await;
        }
    }
    // Just-in-time registration, through the first CA that allows it.
    let Some((ca, not_after)) = verified.iter().find(|(ca, _)| ca.auto_register) else {
        return Err(refused("no_device_for_certificate"));
    };
    let Some(name) = names.first().filter(|name| valid_device_name(name)) else {
        return Err(refused("no_device_name_in_certificate"));
    };
    let new = NewCertificate {
        fingerprint: leaf.fingerprint.clone(),
        pem: leaf.pem(),
        subject: leaf.subject.clone(),
        issuer: leaf.issuer.clone(),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        ca_certificate_id: Some(ca.id.clone()),
    };
    match store
        .register_device_just_in_time(
            &ca.tenant_id,
            &ca.registry_id,
            name,
            &new,
            limits.default_max_devices(),
        )
        .await
    {
        Ok(device) => {
            tracing::info!(tenant_id = %ca.tenant_id, registry_id = %ca.registry_id,
                device_id = %device, "device registered just in time by its certificate");
            named(store, device.as_str(), &leaf, None, *not_after).await
        }
        // Another connection with the same certificate registered it first.
        Err(StoreError::Conflict {
            field: "name" | "fingerprint",
        }) => {
            let device = store
                .device_named(&ca.tenant_id, &ca.registry_id, &names)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| refused("no_device_for_certificate"))?;
            named(
                store,
                device.as_str(),
                &leaf,
                Some(ca.id.clone()),
                *not_after,
            )
            .await
        }
        // The tenant's device quota (SPEC §7.3) is full: refused like other quotas (MQTT 5:
        // 0x97 quota exceeded; 3.1.1: 3 server unavailable), and nothing is created.
        Err(StoreError::Conflict {
            field: "max_devices",
        }) => {
            failed("device_quota");
            let tenant = limits.tenant(store, &ca.tenant_id).await;
            tenant.refused(Refusal::TenantDevices);
            Err(AuthFailure::Limited(Refusal::TenantDevices))
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// The principal `principal_id` (a device, registry or virtual broker), authenticated by
/// `leaf` until `not_after`.
async fn named(
    store: &Store,
    principal_id: &str,
    leaf: &Certificate,
    ca_id: Option<CaCertificateId>,
    not_after: DateTime<Utc>,
) -> Result<Option<CertifiedPrincipal>, AuthFailure> {
    let principal = store
        .find_password_principal(principal_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| refused("unknown_principal"))?;
    Ok(Some(CertifiedPrincipal {
        principal,
        credential: CertificateCredential {
            fingerprint: leaf.fingerprint.clone(),
            ca_id,
            not_after,
        },
        common_name: leaf.common_name.clone(),
    }))
}

/// A name a device may be given (the API's rule for resource names). A name shaped like a
/// device id only ever refers to that device: registering a new device under it would make
/// a certificate for one tenant's device create a look-alike in another.
fn valid_device_name(name: &str) -> bool {
    DeviceId::parse(name).is_none()
        && !name.is_empty()
        && name.chars().count() <= 128
        && !name.chars().any(char::is_control)
        && name.trim() == name
}

fn refused(reason: &'static str) -> AuthFailure {
    failed(reason);
    AuthFailure::NotAuthorized
}

fn unavailable(e: StoreError) -> AuthFailure {
    tracing::error!(error = %e, "certificate authentication could not ask the store");
    failed("store_unavailable");
    AuthFailure::Unavailable
}

fn failed(reason: &'static str) {
    iotcore_telemetry::metrics::mqtt::AUTH_FAILURES
        .with(&[reason])
        .inc();
}

/// What re-checking a certificate connection found.
pub struct Rechecked {
    /// Whether its connections may stay connected.
    pub valid: bool,
    /// The principal's id, kind and defaults as the store has them now, for updating the
    /// rights of its live sessions (labels and registry defaults may have changed).
    pub current: Option<(String, PrincipalKind, bool)>,
}

/// Re-checks the live connections recorded under `key` when it is the session key of a
/// certificate connection (`None` otherwise): the certificate is still registered and
/// active (or its CA still is), and its principal still may connect.
pub async fn recheck(store: &Store, tenant: &TenantId, key: &str) -> Option<Rechecked> {
    let (principal_id, certificate) = key.split_once(KEY_MARK)?;
    let (fingerprint, ca_id) = match certificate.split_once('@') {
        Some((fingerprint, ca)) => (fingerprint, CaCertificateId::parse(ca)),
        None => (certificate, None),
    };
    let checked = async {
        let certificate_ok = match store.find_certificate(fingerprint).await? {
            Some(registered) => {
                registered.active
                    && registered.ca_active != Some(false)
                    && registered.owner_id == principal_id
                    && &registered.tenant_id == tenant
            }
            None => match &ca_id {
                Some(ca) => store.ca_certificate_active(tenant, ca).await?,
                None => false,
            },
        };
        if !certificate_ok {
            return Ok::<_, StoreError>(Rechecked {
                valid: false,
                current: None,
            });
        }
        Ok(match store.find_password_principal(principal_id).await? {
            Some(found) => Rechecked {
                valid: found.tenant_active
                    && &found.tenant_id == tenant
                    && !matches!(found.kind, PrincipalKind::Device { enabled: false, .. }),
                current: Some((principal_id.to_owned(), found.kind, found.default_policy)),
            },
            None => Rechecked {
                valid: false,
                current: None,
            },
        })
    };
    match checked.await {
        Ok(rechecked) => Some(rechecked),
        Err(e) => {
            tracing::warn!(error = %e, "re-checking a certificate failed; left connected");
            Some(Rechecked {
                valid: true,
                current: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_carry_the_certificate() {
        let plain = CertificateCredential {
            fingerprint: "ab12".into(),
            ca_id: None,
            not_after: Utc::now(),
        };
        assert_eq!(plain.session_key("dev_x"), "dev_x#x509:ab12");
        let ca = CaCertificateId::generate();
        let via_ca = CertificateCredential {
            fingerprint: "ab12".into(),
            ca_id: Some(ca.clone()),
            not_after: Utc::now(),
        };
        assert_eq!(via_ca.session_key("dev_x"), format!("dev_x#x509:ab12@{ca}"));
    }

    #[test]
    fn expiry_is_checked_again_at_most_daily_and_ends_at_not_after() {
        let now = Utc::now();
        assert_eq!(
            time_left(now + chrono::Duration::seconds(5), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            time_left(now + chrono::Duration::days(400), now),
            Some(EXPIRY_CHECK_EVERY)
        );
        assert_eq!(time_left(now, now), None);
        assert_eq!(time_left(now - chrono::Duration::seconds(1), now), None);
    }

    #[test]
    fn device_names_from_certificates_obey_the_api_rules() {
        assert!(valid_device_name("sensor-1"));
        assert!(!valid_device_name(""));
        assert!(!valid_device_name(" padded"));
        assert!(!valid_device_name("bell\u{7}"));
        assert!(!valid_device_name(&"x".repeat(129)));
        assert!(!valid_device_name(DeviceId::generate().as_str()));
    }
}
