//! TLS for the MQTT and WebSocket listeners: the server identity from PEM files, TLS 1.2
//! and 1.3 with the `ring` provider, and an optional client certificate whose leaf is handed
//! to the connection for certificate authentication (SPEC §4.1).

use crate::BrokerError;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{self, CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    version, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme,
};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// ALPN protocol id of MQTT over TLS (IANA registry, RFC 7301).
const ALPN_MQTT: &[u8] = b"mqtt";
/// What browsers and WebSocket clients offer before the HTTP upgrade.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The DER certificates a client presented, leaf first, then whatever intermediates it
/// sent. The TLS layer has already checked that the client holds the leaf's private key;
/// whether the certificate names a principal is for certificate authentication to decide.
pub type ClientCertificate = Vec<Vec<u8>>;

/// Acceptors for both TLS listeners, built once from the same certificate and key.
#[derive(Clone)]
pub struct TlsAcceptors {
    /// MQTT over TLS: offers ALPN `mqtt`.
    pub mqtt: TlsAcceptor,
    /// WebSocket over TLS: offers ALPN `http/1.1`, since the first bytes are an HTTP upgrade.
    pub websocket: TlsAcceptor,
}

impl TlsAcceptors {
    /// Reads the certificate chain (leaf first) and its private key from PEM files.
    pub fn from_pem_files(cert_file: &str, key_file: &str) -> Result<TlsAcceptors, BrokerError> {
        let invalid = |key: &'static str, message: String| BrokerError::Config { key, message };
        let chain = CertificateDer::pem_file_iter(cert_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| invalid("mqtt.tls_cert_file", format!("{cert_file}: {e}")))?;
        if chain.is_empty() {
            return Err(invalid(
                "mqtt.tls_cert_file",
                format!("{cert_file}: no CERTIFICATE block"),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| invalid("mqtt.tls_key_file", format!("{key_file}: {e}")))?;
        let mqtt = server_config(chain.clone(), key.clone_key(), ALPN_MQTT)
            .map_err(|e| invalid("mqtt.tls_key_file", format!("{key_file}: {e}")))?;
        let websocket = server_config(chain, key, ALPN_HTTP_1_1)
            .map_err(|e| invalid("mqtt.tls_key_file", format!("{key_file}: {e}")))?;
        Ok(TlsAcceptors {
            mqtt: TlsAcceptor::from(Arc::new(mqtt)),
            websocket: TlsAcceptor::from(Arc::new(websocket)),
        })
    }
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> Result<ServerConfig, Error> {
    let provider = Arc::new(crypto::ring::default_provider());
    let verifier = Arc::new(AnyClientCertificate::new(&provider));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_client_cert_verifier(verifier)
        // Fails when the key does not belong to the leaf certificate.
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Completes the TLS handshake and returns the stream with the client's certificates.
pub async fn accept<S>(
    acceptor: &TlsAcceptor,
    stream: S,
) -> std::io::Result<(TlsStream<S>, Option<ClientCertificate>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = acceptor.accept(stream).await?;
    let (_, connection) = stream.get_ref();
    let chain = connection
        .peer_certificates()
        .filter(|chain| !chain.is_empty())
        .map(|chain| chain.iter().map(|cert| cert.as_ref().to_vec()).collect());
    Ok((stream, chain))
}

/// The negotiated ALPN protocol, for logs.
pub fn alpn<S>(stream: &TlsStream<S>) -> Option<&[u8]> {
    stream.get_ref().1.alpn_protocol()
}

/// Asks for a client certificate without requiring one, and accepts any certificate at the
/// TLS layer. The handshake signature is still verified against the certificate's key, so
/// a client cannot present a certificate it does not own; which certificates are trusted
/// (registered fingerprints, registry CAs, validity, revocation) is decided at CONNECT.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCertificate {
    fn new(provider: &CryptoProvider) -> AnyClientCertificate {
        AnyClientCertificate {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client with a certificate sends it, whoever issued it.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
