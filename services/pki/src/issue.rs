//! Certificates the service makes itself: a registry's own CA, and client certificates
//! signed by it (SPEC §6.2: "have the service generate a key pair and certificate signed by
//! the registry's CA, returning the private key once").

use chrono::{DateTime, Datelike, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its new private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("certificate_pem", &self.certificate_pem)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the CA's certificate or key cannot be used: {0}")]
    BadCa(String),
    #[error("cannot make the certificate: {0}")]
    Generate(String),
}

/// `at`'s calendar day, as rcgen takes it; certificate validity is kept to whole days.
macro_rules! day {
    ($at:expr) => {{
        let at: DateTime<Utc> = $at;
        // A month is 1..=12 and a day 1..=31: both fit in a u8.
        rcgen::date_time_ymd(at.year(), at.month() as u8, at.day() as u8)
    }};
}

fn params(common_name: &str, not_after: DateTime<Utc>) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| IssueError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    // A day early, so that a client whose clock runs behind still accepts it.
    params.not_before = day!(Utc::now() - Duration::days(1));
    params.not_after = day!(not_after);
    Ok(params)
}

/// A new self-signed CA named `common_name`, valid until `not_after`.
pub fn new_ca(common_name: &str, not_after: DateTime<Utc>) -> Result<Issued, IssueError> {
    let mut params = params(common_name, not_after)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(|e| IssueError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| IssueError::Generate(e.to_string()))?;
    Ok(Issued {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
    })
}

/// A self-signed client certificate for `common_name` with a new key, valid until
/// `not_after`, for principals that have no CA (virtual brokers).
pub fn self_signed(common_name: &str, not_after: DateTime<Utc>) -> Result<Issued, IssueError> {
    let mut params = params(common_name, not_after)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().map_err(|e| IssueError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| IssueError::Generate(e.to_string()))?;
    Ok(Issued {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
    })
}

/// A client certificate for `common_name` with a new key, signed by the CA of
/// `ca_certificate_pem` and `ca_key_pem`, valid until `not_after`.
pub fn issue(
    ca_certificate_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    not_after: DateTime<Utc>,
) -> Result<Issued, IssueError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| IssueError::BadCa(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(ca_certificate_pem, ca_key)
        .map_err(|e| IssueError::BadCa(e.to_string()))?;
    let mut params = params(common_name, not_after)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(|e| IssueError::Generate(e.to_string()))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| IssueError::Generate(e.to_string()))?;
    Ok(Issued {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_pem, verify_chain};

    #[test]
    fn issued_certificates_chain_to_their_ca() {
        let until = Utc::now() + Duration::days(365);
        let ca = new_ca("registry CA", until).unwrap();
        let ca_cert = &parse_pem(&ca.certificate_pem).unwrap()[0];
        assert!(ca_cert.is_ca);
        assert_eq!(ca_cert.common_name.as_deref(), Some("registry CA"));
        let issued = issue(&ca.certificate_pem, &ca.private_key_pem, "dev_x", until).unwrap();
        let leaf = &parse_pem(&issued.certificate_pem).unwrap()[0];
        assert_eq!(leaf.common_name.as_deref(), Some("dev_x"));
        assert_eq!(leaf.issuer, ca_cert.subject);
        assert!(!leaf.is_ca);
        assert_eq!(
            verify_chain(&leaf.der, &[], &ca_cert.der, Utc::now()),
            Ok(())
        );
        assert!(issued.private_key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));

        // Signed with a key that is not the CA's: the chain does not verify.
        let other = new_ca("other", until).unwrap();
        let forged = issue(&ca.certificate_pem, &other.private_key_pem, "x", until).unwrap();
        let forged = &parse_pem(&forged.certificate_pem).unwrap()[0];
        assert!(verify_chain(&forged.der, &[], &ca_cert.der, Utc::now()).is_err());
        assert!(issue(&ca.certificate_pem, "not a key", "x", until).is_err());

        let alone = self_signed("brk_x", until).unwrap();
        let alone = &parse_pem(&alone.certificate_pem).unwrap()[0];
        assert_eq!(alone.issuer, alone.subject);
        assert!(!alone.is_ca);
    }
}
