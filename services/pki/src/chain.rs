//! Verifying a client certificate against one CA certificate of a registry (SPEC §4.1 b),
//! with webpki: signatures up the chain, validity periods, CA constraints and the client
//! authentication key usage.

use chrono::{DateTime, Utc};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::time::Duration;
use webpki::{EndEntityCert, KeyUsage};

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate is not valid yet")]
    NotYetValid,
    #[error("the CA certificate cannot be used as a trust anchor: {0}")]
    BadAnchor(String),
    #[error("the chain does not verify: {0}")]
    Invalid(String),
}

/// Whether `leaf`, with the `intermediates` the client sent, chains up to `anchor` at
/// `now`. Expiry anywhere in the chain is [`ChainError::Expired`].
pub fn verify_chain(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchor: &[u8],
    now: DateTime<Utc>,
) -> Result<(), ChainError> {
    let anchor_der = CertificateDer::from(anchor);
    let anchor = webpki::anchor_from_trusted_cert(&anchor_der)
        .map_err(|e| ChainError::BadAnchor(format!("{e:?}")))?;
    let leaf_der = CertificateDer::from(leaf);
    let leaf =
        EndEntityCert::try_from(&leaf_der).map_err(|e| ChainError::Invalid(format!("{e:?}")))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    let seconds = u64::try_from(now.timestamp()).unwrap_or(0);
    let time = UnixTime::since_unix_epoch(Duration::from_secs(seconds));
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &intermediates,
        time,
        KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => ChainError::Expired,
        webpki::Error::CertNotValidYet { .. } => ChainError::NotYetValid,
        other => ChainError::Invalid(format!("{other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    };

    fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(issuer: &Issuer<'_, KeyPair>, year_to: i32) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "dev");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(year_to, 1, 1);
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().to_vec()
    }

    fn at(year: i32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("{year}-06-01T00:00:00Z"))
            .unwrap()
            .to_utc()
    }

    #[test]
    fn a_leaf_verifies_against_its_ca_only_while_valid() {
        let ca = authority("ca");
        let other = authority("other");
        let cert = leaf(&ca, 2030);
        assert_eq!(verify_chain(&cert, &[], ca.der(), at(2025)), Ok(()));
        assert!(matches!(
            verify_chain(&cert, &[], other.der(), at(2025)),
            Err(ChainError::Invalid(_))
        ));
        assert_eq!(
            verify_chain(&cert, &[], ca.der(), at(2031)),
            Err(ChainError::Expired)
        );
        assert_eq!(
            verify_chain(&cert, &[], ca.der(), at(2019)),
            Err(ChainError::NotYetValid)
        );
    }

    #[test]
    fn intermediates_sent_by_the_client_complete_the_chain() {
        let root = authority("root");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "intermediate");
        let intermediate =
            CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &root).unwrap();
        let cert = leaf(&intermediate, 2030);
        assert!(verify_chain(&cert, &[], root.der(), at(2025)).is_err());
        let chain = [intermediate.der().to_vec()];
        assert_eq!(verify_chain(&cert, &chain, root.der(), at(2025)), Ok(()));
    }

    #[test]
    fn garbage_is_an_error() {
        let ca = authority("ca");
        assert!(verify_chain(b"junk", &[], ca.der(), at(2025)).is_err());
        assert!(verify_chain(&leaf(&ca, 2030), &[], b"junk", at(2025)).is_err());
    }
}
