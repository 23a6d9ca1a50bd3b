//! One X.509 certificate, read once into the facts iotcore stores and matches on.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Most PEM blocks read from one upload: a certificate with its chain is a handful.
const MAX_PEM_BLOCKS: usize = 16;

/// What is wrong with a PEM text or a certificate in it, in words an API caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("is not PEM: expected a -----BEGIN CERTIFICATE----- block")]
    NotPem,
    #[error("is not valid PEM: {0}")]
    BadPem(String),
    #[error("holds no CERTIFICATE block (found {0})")]
    NoCertificate(String),
    #[error("holds a private key; upload the certificate only and keep the key on the device")]
    HoldsPrivateKey,
    #[error("holds more than {MAX_PEM_BLOCKS} PEM blocks")]
    TooManyBlocks,
    #[error("is not an X.509 certificate: {0}")]
    NotACertificate(String),
    #[error("has data after the certificate")]
    TrailingData,
}

/// Whether a certificate is valid at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    NotYetValid,
    Expired,
}

impl Validity {
    /// The one definition of "valid at `now`" that every check of a certificate, a chain or a
    /// connection's remaining time uses: from `not_before` on, up to but not including
    /// `not_after`. A certificate is expired at the instant of its `notAfter`, so a connection
    /// is never accepted in the moment it would have to end (webpki's whole-second clock
    /// would still accept a chain during that second).
    pub fn at(not_before: DateTime<Utc>, not_after: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        if now < not_before {
            Validity::NotYetValid
        } else if now >= not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }
}

/// The facts of one certificate that iotcore stores and matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The DER encoding, as presented or uploaded.
    pub der: Vec<u8>,
    /// Lowercase hex SHA-256 of the DER: the certificate's identity in iotcore.
    pub fingerprint: String,
    /// The subject distinguished name, RFC 4514 style (`CN=sensor-1, O=Acme`).
    pub subject: String,
    /// The issuer distinguished name, in the same form as `subject`, so that an issuer can
    /// be looked up among stored CA subjects.
    pub issuer: String,
    /// The first common name of the subject, if it has one.
    pub common_name: Option<String>,
    /// DNS names and URIs of the subject alternative name extension, in order.
    pub alt_names: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Whether the basic constraints extension says this is a CA.
    pub is_ca: bool,
}

impl Certificate {
    /// Reads one DER certificate; nothing may follow it.
    pub fn from_der(der: &[u8]) -> Result<Certificate, CertificateError> {
        let (rest, x509) = X509Certificate::from_der(der)
            .map_err(|e| CertificateError::NotACertificate(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertificateError::TrailingData);
        }
        let time = |t: x509_parser::time::ASN1Time| {
            DateTime::<Utc>::from_timestamp(t.timestamp(), 0).ok_or_else(|| {
                CertificateError::NotACertificate("validity date out of range".into())
            })
        };
        let validity = x509.validity();
        let not_before = time(validity.not_before)?;
        let not_after = time(validity.not_after)?;
        let common_name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut alt_names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => alt_names.push((*dns).to_owned()),
                    GeneralName::URI(uri) => alt_names.push((*uri).to_owned()),
                    _ => {}
                }
            }
        }
        let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        Ok(Certificate {
            der: der.to_vec(),
            fingerprint: fingerprint(der),
            subject: x509.subject().to_string(),
            issuer: x509.issuer().to_string(),
            common_name,
            alt_names,
            not_before,
            not_after,
            is_ca,
        })
    }

    /// The certificate as one PEM block.
    pub fn pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.der.clone()))
    }

    /// The names that may name a device: the common name, then the DNS and URI
    /// alternative names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name
            .iter()
            .map(String::as_str)
            .chain(self.alt_names.iter().map(String::as_str))
    }

    pub fn validity_at(&self, now: DateTime<Utc>) -> Validity {
        Validity::at(self.not_before, self.not_after, now)
    }
}

/// Lowercase hex SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every certificate of a PEM text, in order (a leaf first, then its chain). Refuses texts
/// with no certificate, with anything but certificates, or with a private key in them.
pub fn parse_pem(text: &str) -> Result<Vec<Certificate>, CertificateError> {
    if !text.contains("-----BEGIN") {
        return Err(CertificateError::NotPem);
    }
    let blocks = pem::parse_many(text).map_err(|e| CertificateError::BadPem(e.to_string()))?;
    if blocks.len() > MAX_PEM_BLOCKS {
        return Err(CertificateError::TooManyBlocks);
    }
    if blocks.iter().any(|b| b.tag().contains("PRIVATE KEY")) {
        return Err(CertificateError::HoldsPrivateKey);
    }
    if blocks.is_empty() {
        return Err(CertificateError::NotPem);
    }
    if let Some(other) = blocks.iter().find(|b| b.tag() != "CERTIFICATE") {
        if blocks.iter().all(|b| b.tag() != "CERTIFICATE") {
            return Err(CertificateError::NoCertificate(format!(
                "a {} block",
                other.tag()
            )));
        }
        return Err(CertificateError::NotACertificate(format!(
            "unexpected {} block beside the certificate",
            other.tag()
        )));
    }
    blocks
        .iter()
        .map(|block| Certificate::from_der(block.contents()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn self_signed(cn: &str, sans: Vec<String>) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        (params.self_signed(&key).unwrap().pem(), key)
    }

    #[test]
    fn a_certificate_is_read_into_its_facts() {
        let (pem, _) = self_signed("sensor-1", vec!["sensor-1.example".into()]);
        let certs = parse_pem(&pem).unwrap();
        assert_eq!(certs.len(), 1);
        let cert = &certs[0];
        assert_eq!(cert.common_name.as_deref(), Some("sensor-1"));
        assert_eq!(cert.subject, "CN=sensor-1");
        assert_eq!(cert.issuer, cert.subject);
        assert_eq!(cert.alt_names, ["sensor-1.example"]);
        assert_eq!(
            cert.names().collect::<Vec<_>>(),
            ["sensor-1", "sensor-1.example"]
        );
        assert_eq!(cert.fingerprint.len(), 64);
        assert_eq!(cert.fingerprint, fingerprint(&cert.der));
        assert!(!cert.is_ca);
        assert_eq!(cert.not_before.to_rfc3339(), "2024-01-01T00:00:00+00:00");
        assert_eq!(
            cert.validity_at(DateTime::from_timestamp(1_900_000_000, 0).unwrap()),
            Validity::Expired
        );
        assert_eq!(
            cert.validity_at(DateTime::from_timestamp(1_600_000_000, 0).unwrap()),
            Validity::NotYetValid
        );
        assert_eq!(
            cert.validity_at(DateTime::from_timestamp(1_750_000_000, 0).unwrap()),
            Validity::Valid
        );
        assert_eq!(parse_pem(&cert.pem()).unwrap()[0], *cert);
    }

    #[test]
    fn a_certificate_is_valid_from_not_before_up_to_not_after() {
        let from = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let until = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let instant = chrono::Duration::nanoseconds(1);
        assert_eq!(
            Validity::at(from, until, from - instant),
            Validity::NotYetValid
        );
        assert_eq!(Validity::at(from, until, from), Validity::Valid);
        assert_eq!(Validity::at(from, until, until - instant), Validity::Valid);
        assert_eq!(Validity::at(from, until, until), Validity::Expired);
    }

    #[test]
    fn uri_alternative_names_count_as_names() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI("urn:device:abc".try_into().unwrap())];
        let pem = params.self_signed(&key).unwrap().pem();
        let cert = &parse_pem(&pem).unwrap()[0];
        assert_eq!(cert.common_name, None);
        assert_eq!(cert.names().collect::<Vec<_>>(), ["urn:device:abc"]);
    }

    #[test]
    fn bad_uploads_say_what_is_wrong() {
        let (pem, key) = self_signed("x", vec![]);
        assert_eq!(parse_pem("hello"), Err(CertificateError::NotPem));
        assert_eq!(parse_pem(""), Err(CertificateError::NotPem));
        assert!(matches!(
            parse_pem("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
            Err(CertificateError::BadPem(_)) | Err(CertificateError::NotPem)
        ));
        let garbage = pem::encode(&pem::Pem::new("CERTIFICATE", b"not der".to_vec()));
        assert!(matches!(
            parse_pem(&garbage),
            Err(CertificateError::NotACertificate(_))
        ));
        assert_eq!(
            parse_pem(&key.serialize_pem()),
            Err(CertificateError::HoldsPrivateKey)
        );
        assert_eq!(
            parse_pem(&format!("{pem}{}", key.serialize_pem())),
            Err(CertificateError::HoldsPrivateKey)
        );
        let request = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", vec![1, 2, 3]));
        assert_eq!(
            parse_pem(&request),
            Err(CertificateError::NoCertificate(
                "a CERTIFICATE REQUEST block".into()
            ))
        );
        let many = pem.repeat(MAX_PEM_BLOCKS + 1);
        assert_eq!(parse_pem(&many), Err(CertificateError::TooManyBlocks));
        let mut der = parse_pem(&pem).unwrap()[0].der.clone();
        der.push(0);
        assert_eq!(
            Certificate::from_der(&der),
            Err(CertificateError::TrailingData)
        );
    }
}
