//! X.509 for iotcore (SPEC §4.1, §6.2): reading the certificates tenants upload and clients
//! present, verifying a client's chain against a registry's CA certificates, and issuing
//! device certificates from a CA whose key the service holds.
//!
//! Nothing here does I/O or trusts its input: every certificate comes from the network or
//! an API body, and every failure is an error that says what is wrong, never a panic.

mod certificate;
mod chain;
mod issue;

pub use certificate::{fingerprint, parse_pem, Certificate, CertificateError, Validity};
pub use chain::{verify_chain, ChainError};
pub use issue::{issue, new_ca, self_signed, IssueError, Issued};
