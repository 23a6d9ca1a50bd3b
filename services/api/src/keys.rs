//! Public keys of the identity providers whose tokens the control plane accepts (SPEC §6.1):
//! RS256, ES256 and EdDSA keys from PEM files or a JWKS file, loaded once at start-up.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm as JwkAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The public-key algorithms a token may be signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    RS256,
    ES256,
    EdDSA,
}

impl KeyAlgorithm {
    pub fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }

    /// The DER of the SPKI algorithm OID of keys of this algorithm.
    fn spki_oid(self) -> &'static [u8] {
        match self {
            // 1.2.840.113549.1.1.1 rsaEncryption
            KeyAlgorithm::RS256 => &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            // 1.2.840.10045.2.1 id-ecPublicKey
            KeyAlgorithm::ES256 => &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
            // 1.3.101.112 Ed25519
            KeyAlgorithm::EdDSA => &[0x2b, 0x65, 0x70],
        }
    }
}

/// One PEM public key file (`[[api.auth.public_keys]]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    pub algorithm: KeyAlgorithm,
    /// A `PUBLIC KEY` (SPKI) PEM file, or `RSA PUBLIC KEY` (PKCS#1) for RS256.
    pub pem_file: PathBuf,
    /// The `kid` tokens signed with this key carry; any token when absent.
    pub kid: Option<String>,
}

/// A key tokens are verified with.
pub(crate) struct PublicKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
}

/// Why the configured keys cannot be loaded; the service refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn invalid(path: &Path, reason: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads a PEM public key file.
pub(crate) fn load_pem(file: &PublicKeyFile) -> Result<PublicKey, KeyError> {
    let path = &file.pem_file;
    let text = read(path)?;
    let (label, der) = pem_block(&text).ok_or_else(|| invalid(path, "no PEM block found"))?;
    let key_bytes = match (label, file.algorithm) {
        ("RSA PUBLIC KEY", KeyAlgorithm::RS256) => der,
        ("PUBLIC KEY", algorithm) => spki_public_key(&der, algorithm.spki_oid())
            .ok_or_else(|| invalid(path, format!("not a {algorithm:?} SubjectPublicKeyInfo")))?,
        (label, algorithm) => {
            return Err(invalid(
                path,
                format!("a {label:?} PEM block is not a {algorithm:?} public key"),
            ))
        }
    };
    let key = match file.algorithm {
        KeyAlgorithm::RS256 => DecodingKey::from_rsa_der(&key_bytes),
        KeyAlgorithm::ES256 => DecodingKey::from_ec_der(&key_bytes),
        KeyAlgorithm::EdDSA => DecodingKey::from_ed_der(&key_bytes),
    };
    Ok(PublicKey {
        algorithm: file.algorithm.jwt(),
        kid: file.kid.clone(),
        key,
    })
}

/// Loads every RS256, ES256 and EdDSA key of a JWKS file; other keys are skipped with a
/// warning, so that a provider publishing more kinds of keys does not stop the service.
pub(crate) fn load_jwks(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_str(&read(path)?)
        .map_err(|e| invalid(path, format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for (i, value) in set.keys.into_iter().enumerate() {
        let loaded = serde_json::from_value::<Jwk>(value)
            .ok()
            .and_then(|jwk| Some((jwk_algorithm(&jwk)?, jwk)))
            .and_then(|(algorithm, jwk)| {
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                Some(PublicKey {
                    algorithm,
                    kid: jwk.common.key_id,
                    key,
                })
            });
        match loaded {
            Some(key) => keys.push(key),
            None => {
                tracing::warn!(path = %path.display(), index = i, "skipping an unsupported JWKS key")
            }
        }
    }
    if keys.is_empty() {
        return Err(invalid(path, "no RS256, ES256 or EdDSA key in the set"));
    }
    Ok(keys)
}

/// The algorithm a JWK is for: its `alg`, or the one its key type implies.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(JwkAlgorithm::RS256) if implied == Algorithm::RS256 => Some(implied),
        Some(JwkAlgorithm::ES256) if implied == Algorithm::ES256 => Some(implied),
        Some(JwkAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Some(implied),
        Some(_) => None,
    }
}

/// The label and DER contents of the first PEM block of `text`.
fn pem_block(text: &str) -> Option<(&str, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let base64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    Some((label, STANDARD.decode(base64).ok()?))
}

/// One DER element at the start of `input`: its tag, contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo whose algorithm is `oid`: the form
/// ring takes public keys in (PKCS#1 for RSA, the point for EC, the raw key for Ed25519).
fn spki_public_key(der: &[u8], oid: &[u8]) -> Option<Vec<u8>> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const BIT_STRING: u8 = 0x03;
    let (tag, spki, _) = der_element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, algorithm, rest) = der_element(spki)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, algorithm_oid, _) = der_element(algorithm)?;
    if tag != OID || algorithm_oid != oid {
        return None;
    }
    let (tag, bits, _) = der_element(rest)?;
    // The first byte counts unused bits, which a key never has.
    match bits.split_first() {
        Some((0, key)) if tag == BIT_STRING => Some(key.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_or_foreign_der_is_refused() {
        assert!(der_element(&[]).is_none());
        assert!(der_element(&[0x30, 0x05, 0x00]).is_none());
        assert!(der_element(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(spki_public_key(&[0x30, 0x00], KeyAlgorithm::RS256.spki_oid()).is_none());
        assert!(pem_block("no pem here").is_none());
        assert!(pem_block("-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----").is_none());
    }
}
