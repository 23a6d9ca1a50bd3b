//! Certificates for the TLS listeners, made fresh by each test: a CA, a server certificate
//! for `localhost` and 127.0.0.1 signed by it, and a client certificate from another CA that
//! the broker has never heard of.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::PathBuf;

/// PEM files on disk for the broker, and the PEM text clients need.
pub struct TestPki {
    /// The CA that signed the server certificate, for clients to trust.
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    /// A client certificate and key from an unrelated CA.
    pub client_cert_pem: String,
    pub client_key_pem: String,
    dir: PathBuf,
}

impl TestPki {
    pub fn generate() -> TestPki {
        let dir = std::env::temp_dir().join(format!("iotcore-e2e-pki-{:016x}", crate::rand_u64()));
        std::fs::create_dir_all(&dir).expect("creating the PKI folder");

        let ca = issuer("iotcore test CA");
        let server_key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server SANs");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = server.signed_by(&server_key, &ca).expect("server cert");

        let other_ca = issuer("unrelated client CA");
        let client_key = KeyPair::generate().expect("client key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client
            .distinguished_name
            .push(DnType::CommonName, "some-device");
        let client_cert = client
            .signed_by(&client_key, &other_ca)
            .expect("client cert");

        let pki = TestPki {
            ca_pem: ca.pem(),
            ca_file: dir.join("ca.pem"),
            server_cert_file: dir.join("server.pem"),
            server_key_file: dir.join("server.key"),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            dir,
        };
        let write = |path: &PathBuf, text: &str| std::fs::write(path, text).expect("writing PEM");
        write(&pki.ca_file, &pki.ca_pem);
        write(&pki.server_cert_file, &server_cert.pem());
        write(&pki.server_key_file, &server_key.serialize_pem());
        pki
    }

    /// The broker's certificate settings, as `IOTCORE_*` variables.
    pub fn broker_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "IOTCORE_MQTT_TLS_CERT_FILE".into(),
                self.server_cert_file.display().to_string(),
            ),
            (
                "IOTCORE_MQTT_TLS_KEY_FILE".into(),
                self.server_key_file.display().to_string(),
            ),
        ]
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn issuer(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    CertifiedIssuer::self_signed(params, key).expect("CA cert")
}
