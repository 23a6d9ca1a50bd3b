//! X.509 client certificate authentication (SPEC §4.1, item 1; §6.2 credentials): real TLS
//! handshakes against the real binary with certificates made by rcgen in each test, raw
//! MQTT over TLS (so that every CONNACK code is visible), and `mosquitto_pub --cert --key`.

use bytes::BytesMut;
use iotcore_codec::{
    decode, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use iotcore_e2e::mqtt::WAIT;
use iotcore_e2e::tls::TestPki;
use iotcore_e2e::{free_port, TestApp};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The broker with a TLS listener.
struct CertBroker {
    app: TestApp,
    pki: TestPki,
    tls: u16,
}

impl CertBroker {
    async fn spawn() -> CertBroker {
        CertBroker::spawn_with(&[]).await
    }

    /// The broker with a TLS listener and `extra` environment.
    async fn spawn_with(extra: &[(&str, &str)]) -> CertBroker {
        let pki = TestPki::generate();
        let tls = free_port();
        let mut env = pki.broker_env();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env.push(("IOTCORE_MQTT_TLS_LISTEN".into(), format!("127.0.0.1:{tls}")));
        // Off: its default port would be shared by every test running at once.
        env.push(("IOTCORE_MQTT_WSS_LISTEN".into(), String::new()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = TestApp::spawn_with(&env).await;
        CertBroker { app, pki, tls }
    }

    /// A device without any password: `(id, registry_id)`.
    async fn bare_device(&self, token: &str, registry: &str, name: &str) -> String {
        let path = format!("/v1/registries/{registry}/devices");
        let (status, device) = self
            .app
            .call("POST", &path, token, Some(json!({ "name": name })))
            .await;
        assert_eq!(status, 201, "{device}");
        device["id"].as_str().unwrap_or_default().to_owned()
    }

    /// Opens TLS presenting `cert_pem` with `key_pem` (which need not match: the client
    /// signs the handshake with whatever key it is given).
    async fn tls(&self, cert_pem: &str, key_pem: &str) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.pki.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("client PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&key).expect("supported key");
        let resolver = FixedClientCert(Arc::new(rustls::sign::CertifiedKey::new(
            chain,
            signing_key,
        )));
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(resolver));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(("127.0.0.1", self.tls)).await?;
        let name = ServerName::try_from("localhost").expect("name");
        let mut stream = connector.connect(name, tcp).await?;
        // TLS 1.3 lets the client finish before the server has checked its certificate:
        // a round trip of application data shows whether the server accepted it.
        stream.flush().await?;
        Ok(stream)
    }

    /// Connects with a certificate and no password; returns the CONNACK (or what came
    /// instead) and the stream.
    async fn connect(
        &self,
        version: ProtocolVersion,
        client_id: &str,
        cert: &ClientCert,
    ) -> (Option<Packet>, Option<Mqtt>) {
        let Ok(stream) = self.tls(&cert.cert_pem, &cert.key_pem).await else {
            return (None, None);
        };
        let mut mqtt = Mqtt {
            stream,
            buf: BytesMut::new(),
            version,
        };
        let connect = Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        if !mqtt.send(&Packet::Connect(connect)).await {
            return (None, None);
        }
        let answer = mqtt.packet().await;
        (answer, Some(mqtt))
    }

    /// Connects and expects success.
    async fn connected(
        &self,
        version: ProtocolVersion,
        client_id: &str,
        cert: &ClientCert,
    ) -> (Mqtt, Packet) {
        match self.connect(version, client_id, cert).await {
            (Some(Packet::ConnAck(connack)), Some(mqtt)) if connack.code == 0 => {
                (mqtt, Packet::ConnAck(connack))
            }
            (other, _) => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }

    /// Connects and expects a CONNACK refusing with `code`.
    async fn expect_refused(
        &self,
        version: ProtocolVersion,
        client_id: &str,
        cert: &ClientCert,
        code: u8,
    ) {
        match self.connect(version, client_id, cert).await {
            (Some(Packet::ConnAck(connack)), _) => assert_eq!(
                connack.code, code,
                "CONNACK code for {client_id:?} ({version:?})"
            ),
            (other, _) => panic!("expected a CONNACK refusing with {code}, got {other:?}"),
        }
    }
}

/// The client id the broker assigned in a successful CONNACK (MQTT 5, empty client id).
fn assigned_client_id(connack: Packet) -> String {
    match connack {
        Packet::ConnAck(c) => c.properties.assigned_client_identifier.unwrap_or_default(),
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Raw MQTT over TLS.
struct Mqtt {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Mqtt {
    async fn send(&mut self, packet: &Packet) -> bool {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// The next packet, or `None` when the connection ended.
    async fn packet(&mut self) -> Option<Packet> {
        loop {
            if let Ok(Some(packet)) = decode(&mut self.buf, self.version, 1 << 20) {
                return Some(packet);
            }
            match tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the broker neither answered nor closed the connection"),
            }
        }
    }

    async fn ping(&mut self) -> bool {
        self.send(&Packet::PingReq).await && matches!(self.packet().await, Some(Packet::PingResp))
    }

    /// Waits up to `limit` for the broker to send DISCONNECT 0x87 and close the
    /// connection, answering nothing meanwhile; returns what came instead.
    async fn disconnected_within(&mut self, limit: std::time::Duration) -> Result<(), String> {
        let end = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(packet)) = decode(&mut self.buf, self.version, 1 << 20) {
                return match packet {
                    Packet::Disconnect(d) if d.reason == ReasonCode::NOT_AUTHORIZED => {
                        match self.packet().await {
                            None => Ok(()),
                            Some(other) => Err(format!("{other:?} after the DISCONNECT")),
                        }
                    }
                    other => Err(format!("{other:?}")),
                };
            }
            match tokio::time::timeout_at(end, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err("closed without DISCONNECT".into()),
                Ok(Ok(_)) => continue,
                Err(_) => return Err(format!("still connected after {limit:?}")),
            }
        }
    }

    /// Waits for the end of an MQTT 3.1.1 connection (the server sends no DISCONNECT).
    async fn expect_disconnected_v311(&mut self) {
        while self.packet().await.is_some() {}
    }

    /// Waits for DISCONNECT 0x87 (MQTT 5) and the end of the connection.
    async fn expect_disconnected(&mut self) {
        loop {
            match self.packet().await {
                Some(Packet::Disconnect(d)) => {
                    assert_eq!(d.reason, ReasonCode::NOT_AUTHORIZED);
                    assert!(self.packet().await.is_none(), "closed after the DISCONNECT");
                    return;
                }
                Some(_) => continue,
                None => panic!("closed without DISCONNECT 0x87"),
            }
        }
    }
}

fn subscribe_packet(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            filter.to_owned(),
            SubscriptionOptions {
                qos: QoS::AtMostOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            },
        )],
        properties: Properties::default(),
    })
}

fn publish_packet(topic: &str, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.to_owned(),
        packet_id: None,
        payload: bytes::Bytes::copy_from_slice(payload),
        properties: Properties::default(),
    })
}

/// The value of the series `name{labels}` on `/metrics` (0 when it does not exist yet).
async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            series_name == name
                && rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .count()
                    == labels.len()
                && labels
                    .iter()
                    .all(|(label, value)| rest.contains(&format!("{label}=\"{value}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// Certificate authentications answered by PostgreSQL and by the broker's memory so far.
async fn certificate_lookups(app: &TestApp) -> (f64, f64) {
    let name = "iotcore_mqtt_auth_lookups_total";
    let store = metric(app, name, &[("method", "certificate"), ("source", "store")]).await;
    let cache = metric(app, name, &[("method", "certificate"), ("source", "cache")]).await;
    (store, cache)
}

/// A client certificate and its key, PEM.
struct ClientCert {
    cert_pem: String,
    key_pem: String,
}

fn self_signed(cn: &str) -> ClientCert {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    ClientCert {
        cert_pem: params.self_signed(&key).expect("cert").pem(),
        key_pem: key.serialize_pem(),
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A certificate for `cn` signed by `ca`, valid over the given years.
fn signed(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str, years: (i32, i32)) -> ClientCert {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    ClientCert {
        cert_pem: params.signed_by(&key, ca).expect("cert").pem(),
        key_pem: key.serialize_pem(),
    }
}

const VALID: (i32, i32) = (2020, 2090);

async fn register(app: &TestApp, token: &str, collection: &str, cert_pem: &str) -> Value {
    let (status, body) = app
        .call(
            "POST",
            collection,
            token,
            Some(json!({ "certificate_pem": cert_pem })),
        )
        .await;
    assert_eq!(status, 201, "{collection}: {body}");
    body
}

/// Registers `cert` on `device` by fingerprint.
async fn register_on_device(app: &TestApp, device: &str, cert: &ClientCert) -> Value {
    let path = format!("/v1/devices/{device}/certificates");
    register(app, &app.token, &path, &cert.cert_pem).await
}

async fn register_ca(
    app: &TestApp,
    token: &str,
    registry: &str,
    ca_pem: &str,
    auto: bool,
) -> Value {
    let path = format!("/v1/registries/{registry}/ca-certificates");
    let body = json!({ "certificate_pem": ca_pem, "auto_register": auto });
    let (status, body) = app.call("POST", &path, token, Some(body)).await;
    assert_eq!(status, 201, "{body}");
    body
}

#[tokio::test]
async fn self_signed_certificates_registered_by_fingerprint_authenticate_devices_and_registry_clients(
) {
    let b = CertBroker::spawn().await;
    let app = &b.app;
    let registry = app.create_registry(&app.token, "certs").await;
    let device = b.bare_device(&app.token, &registry, "board").await;
    let device_cert = self_signed("anything");
    register_on_device(app, &device, &device_cert).await;
    let registry_cert = self_signed("backend");
    register(
        app,
        &app.token,
        &format!("/v1/registries/{registry}/certificates"),
        &registry_cert.cert_pem,
    )
    .await;

    let (mut backend, _) = b
        .connected(ProtocolVersion::V3_1_1, &registry, &registry_cert)
        .await;
    assert!(backend.send(&subscribe_packet("$devices/+/events")).await);
    assert!(matches!(backend.packet().await, Some(Packet::SubAck(_))));

    // MQTT 5 with an empty client id: the device id is assigned.
    let (mut board, connack) = b.connected(ProtocolVersion::V5, "", &device_cert).await;
    assert_eq!(assigned_client_id(connack), device);
    let topic = format!("$devices/{device}/events");
    assert!(board.send(&publish_packet(&topic, b"21.5")).await);
    match backend.packet().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.topic, topic);
            assert_eq!(&p.payload[..], b"21.5");
        }
        other => panic!("expected the device's message, got {other:?}"),
    }

    // Another device's client id is refused even with a valid certificate.
    b.expect_refused(
        ProtocolVersion::V3_1_1,
        "dev_00000000000000000000",
        &device_cert,
        2,
    )
    .await;
    // A certificate registered nowhere, without a password: not authorized.
    let stranger = self_signed(&device);
    b.expect_refused(ProtocolVersion::V3_1_1, &device, &stranger, 5)
        .await;
    b.expect_refused(
        ProtocolVersion::V5,
        &device,
        &stranger,
        ReasonCode::NOT_AUTHORIZED.0,
    )
    .await;
    b.app.stop().await;
}

#[tokio::test]
async fn ca_signed_certificates_name_devices_and_auto_register_creates_them() {
    let b = CertBroker::spawn().await;
    let app = &b.app;
    let fixed = app.create_registry(&app.token, "fixed").await;
    let open = app.create_registry(&app.token, "open").await;
    let board = b.bare_device(&app.token, &fixed, "board-1").await;
    let fixed_ca = ca("fixed factory CA");
    let open_ca = ca("open factory CA");
    register_ca(app, &app.token, &fixed, &fixed_ca.pem(), false).await;
    let open_ca_view = register_ca(app, &app.token, &open, &open_ca.pem(), true).await;

    // CN = the device's name, or its id.
    let by_name = signed(&fixed_ca, "board-1", VALID);
    b.connected(ProtocolVersion::V3_1_1, &board, &by_name).await;
    let by_id = signed(&fixed_ca, &board, VALID);
    b.connected(ProtocolVersion::V5, &board, &by_id).await;
    // Without auto_register, a certificate naming no device is refused.
    let unknown = signed(&fixed_ca, "board-2", VALID);
    b.expect_refused(ProtocolVersion::V3_1_1, "", &unknown, 5)
        .await;
    assert_eq!(device_count(app, &fixed).await, 1);

    // With auto_register, the device is created on its first connection.
    let newcomer = signed(&open_ca, "sensor-7", VALID);
    let (_, connack) = b.connected(ProtocolVersion::V5, "", &newcomer).await;
    let assigned = assigned_client_id(connack);
    let (_, devices) = app
        .call(
            "GET",
            &format!("/v1/registries/{open}/devices"),
            &app.token,
            None,
        )
        .await;
    assert_eq!(devices["items"][0]["name"], "sensor-7", "{devices}");
    assert_eq!(devices["items"][0]["id"], assigned.as_str());
    let (_, certificates) = app
        .call(
            "GET",
            &format!("/v1/devices/{assigned}/certificates"),
            &app.token,
            None,
        )
        .await;
    assert_eq!(
        certificates["items"][0]["ca_certificate_id"], open_ca_view["id"],
        "{certificates}"
    );
    // The second connection finds it by fingerprint.
    b.connected(ProtocolVersion::V3_1_1, &assigned, &newcomer)
        .await;
    b.app.stop().await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let b = CertBroker::spawn().await;
    let app = &b.app;
    let registry = app.create_registry(&app.token, "r").await;
    let device = b.bare_device(&app.token, &registry, "board").await;
    let factory = ca("factory");
    register_ca(app, &app.token, &registry, &factory.pem(), true).await;
    let expired = signed(&factory, "board", (2015, 2020));
    b.expect_refused(ProtocolVersion::V3_1_1, &device, &expired, 5)
        .await;
    let early = signed(&factory, "board", (2080, 2090));
    b.expect_refused(
        ProtocolVersion::V5,
        &device,
        &early,
        ReasonCode::NOT_AUTHORIZED.0,
    )
    .await;
    // Nothing was registered just in time for them either.
    assert_eq!(device_count(app, &registry).await, 1);
    // The API refuses to register an expired certificate, saying so.
    let (status, body) = app
        .call(
            "POST",
            &format!("/v1/devices/{device}/certificates"),
            &app.token,
            Some(json!({ "certificate_pem": expired.cert_pem })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("has expired"), "{body}");
    b.app.stop().await;
}

#[tokio::test]
async fn revoking_a_certificate_or_deleting_its_ca_disconnects_live_sessions() {
    let b = CertBroker::spawn().await;
    let app = &b.app;
    let registry = app.create_registry(&app.token, "r").await;
    let device = b.bare_device(&app.token, &registry, "board").await;
    let other = b.bare_device(&app.token, &registry, "other").await;
    let cert = self_signed("board");
    let view = register_on_device(app, &device, &cert).await;
    let factory = ca("factory");
    let ca_view = register_ca(app, &app.token, &registry, &factory.pem(), false).await;
    let other_cert = signed(&factory, "other", VALID);

    let (mut live, _) = b.connected(ProtocolVersion::V5, &device, &cert).await;
    let (mut bystander, _) = b.connected(ProtocolVersion::V5, &other, &other_cert).await;

    let fingerprint = view["fingerprint"].as_str().unwrap_or_default();
    let path = format!("/v1/devices/{device}/certificates/{fingerprint}");
    let (status, body) = app.call("DELETE", &path, &app.token, None).await;
    assert_eq!(status, 204, "{body}");
    live.expect_disconnected().await;
    assert!(bystander.ping().await, "a bystander was disconnected");
    b.expect_refused(ProtocolVersion::V3_1_1, &device, &cert, 5)
        .await;
    let (_, listed) = app
        .call(
            "GET",
            &format!("/v1/devices/{device}/certificates"),
            &app.token,
            None,
        )
        .await;
    assert_eq!(listed["items"][0]["status"], "revoked", "{listed}");

    let ca_id = ca_view["id"].as_str().unwrap_or_default();
    let path = format!("/v1/registries/{registry}/ca-certificates/{ca_id}");
    let (status, body) = app.call("DELETE", &path, &app.token, None).await;
    assert_eq!(status, 204, "{body}");
    bystander.expect_disconnected().await;
    b.expect_refused(ProtocolVersion::V3_1_1, &other, &other_cert, 5)
        .await;
    b.app.stop().await;
}

#[tokio::test]
async fn a_certificate_presented_without_its_key_fails_the_handshake() {
    let b = CertBroker::spawn().await;
    let app = &b.app;
    let registry = app.create_registry(&app.token, "r").await;
    let device = b.bare_device(&app.token, &registry, "board").await;
    let cert = self_signed("board");
    register_on_device(app, &device, &cert).await;
    // The registered certificate, but the handshake signed with another key.
    let thief = ClientCert {
        cert_pem: cert.cert_pem.clone(),
        key_pem: self_signed("thief").key_pem,
    };
    let (answer, _) = b.connect(ProtocolVersion::V3_1_1, &device, &thief).await;
    assert!(answer.is_none(), "no CONNACK without the key: {answer:?}");
    // With its key, the same certificate works.
    b.connected(ProtocolVersion::V3_1_1, &device, &cert).await;
    b.app.stop().await;
}

#[tokio::test]
async fn a_certificate_of_another_tenants_ca_is_refused() {
    let b = CertBroker::spawn().await;
    let app = &b.app;
    let (_, other_token) = app.other_tenant("globex").await;
    let ours = app.create_registry(&app.token, "ours").await;
    let device = b.bare_device(&app.token, &ours, "board").await;
    let theirs = app.create_registry(&other_token, "theirs").await;
    let their_ca = ca("globex CA");
    register_ca(app, &other_token, &theirs, &their_ca.pem(), true).await;
    // Naming our device by id, signed by their CA: their registry has no such device (and
    // registers none under a device id), and our registry does not trust their CA.
    let cert = signed(&their_ca, &device, VALID);
    b.expect_refused(ProtocolVersion::V3_1_1, &device, &cert, 5)
        .await;
    b.expect_refused(ProtocolVersion::V5, "", &cert, ReasonCode::NOT_AUTHORIZED.0)
        .await;
    let (_, devices) = app
        .call(
            "GET",
            &format!("/v1/registries/{theirs}/devices"),
            &other_token,
            None,
        )
        .await;
    assert_eq!(
        devices["items"].as_array().map(Vec::len),
        Some(0),
        "{devices}"
    );
    // Our device's name, signed by their CA, becomes a device of theirs, never ours.
    let look_alike = signed(&their_ca, "board", VALID);
    let (_, connack) = b.connected(ProtocolVersion::V5, "", &look_alike).await;
    let assigned = assigned_client_id(connack);
    assert_ne!(assigned, device);
    let (status, _) = app
        .call("GET", &format!("/v1/devices/{assigned}"), &app.token, None)
        .await;
    assert_eq!(status, 404, "the new device is not in our tenant");
    // Nor can our tenant see or delete their CA.
    let (status, _) = app
        .call(
            "GET",
            &format!("/v1/registries/{theirs}/ca-certificates"),
            &app.token,
            None,
        )
        .await;
    assert_eq!(status, 404);
    b.app.stop().await;
}

#[tokio::test]
async fn mosquitto_pub_connects_with_a_certificate_the_service_generated() {
    let b = CertBroker::spawn().await;
    let app = &b.app;
    let registry = app.create_registry(&app.token, "r").await;
    let device = b.bare_device(&app.token, &registry, "board").await;
    let (status, body) = app
        .call(
            "POST",
            &format!("/v1/registries/{registry}/ca-certificates"),
            &app.token,
            Some(json!({ "generate": true })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["service_managed"], true);
    let (status, issued) = app
        .call(
            "POST",
            &format!("/v1/devices/{device}/certificates"),
            &app.token,
            Some(json!({ "generate": true })),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let key_pem = issued["private_key_pem"].as_str().unwrap_or_default();
    assert!(key_pem.contains("PRIVATE KEY"), "{issued}");
    let (_, listed) = app
        .call(
            "GET",
            &format!("/v1/devices/{device}/certificates"),
            &app.token,
            None,
        )
        .await;
    assert!(
        listed["items"][0].get("private_key_pem").is_none(),
        "the key is shown once"
    );

    let (registry_user, registry_password) =
        app.create_registry_password(&app.token, &registry).await;
    let tcp = iotcore_e2e::mqtt::connect_v311(
        app.mqtt,
        &registry_user,
        &registry_user,
        &registry_password,
    )
    .await
    .expect("registry client");
    let mut subscriber = tcp;
    subscriber
        .subscribe("$devices/+/events", rumqttc::QoS::AtLeastOnce)
        .await;

    let dir = std::env::temp_dir().join(format!("iotcore-e2e-cert-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("folder");
    let (cert_file, key_file) = (dir.join("device.pem"), dir.join("device.key"));
    std::fs::write(
        &cert_file,
        issued["certificate_pem"].as_str().unwrap_or_default(),
    )
    .expect("cert");
    std::fs::write(&key_file, key_pem).expect("key");
    let topic = format!("$devices/{device}/events");
    let output = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &b.tls.to_string()])
        .args(["--cafile", &b.pki.ca_file.display().to_string()])
        .args(["--cert", &cert_file.display().to_string()])
        .args(["--key", &key_file.display().to_string()])
        .args(["-V", "mqttv311", "-q", "1", "-i", &device])
        .args(["-t", &topic, "-m", "with-a-certificate"])
        .output()
        .await
        .expect("mosquitto_pub is installed (the test command installs mosquitto-clients)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let publish = subscriber
        .next_publish(WAIT)
        .await
        .expect("the device's message");
    assert_eq!(publish.topic, topic);
    assert_eq!(&publish.payload[..], b"with-a-certificate");
    b.app.stop().await;
}

#[tokio::test]
async fn a_reconnecting_certificate_costs_no_store_query_until_it_is_revoked() {
    let b = CertBroker::spawn().await;
    let app = &b.app;
    let registry = app.create_registry(&app.token, "r").await;
    let device = b.bare_device(&app.token, &registry, "board").await;
    let named = b.bare_device(&app.token, &registry, "named").await;
    let cert = self_signed("board");
    let view = register_on_device(app, &device, &cert).await;
    let factory = ca("factory");
    register_ca(app, &app.token, &registry, &factory.pem(), false).await;
    let by_ca = signed(&factory, "named", VALID);
    assert_eq!(certificate_lookups(app).await, (0.0, 0.0));

    // First connections: the store answers (fingerprint, then chain to the CA).
    let (mut first, _) = b.connected(ProtocolVersion::V5, &device, &cert).await;
    let (mut other, _) = b.connected(ProtocolVersion::V5, &named, &by_ca).await;
    assert_eq!(certificate_lookups(app).await, (2.0, 0.0));
    assert!(first.send(&Packet::Disconnect(Default::default())).await);
    assert!(other.send(&Packet::Disconnect(Default::default())).await);

    // Reconnecting: answered from memory, no query and no chain verification.
    let (mut live, _) = b.connected(ProtocolVersion::V5, &device, &cert).await;
    let (mut bystander, _) = b.connected(ProtocolVersion::V3_1_1, &named, &by_ca).await;
    assert_eq!(certificate_lookups(app).await, (2.0, 2.0));
    assert!(live.ping().await && bystander.ping().await);

    // Revoking still disconnects the live connection and refuses the next CONNECT, which
    // the store answers again.
    let fingerprint = view["fingerprint"].as_str().unwrap_or_default();
    let path = format!("/v1/devices/{device}/certificates/{fingerprint}");
    let (status, body) = app.call("DELETE", &path, &app.token, None).await;
    assert_eq!(status, 204, "{body}");
    live.expect_disconnected().await;
    b.expect_refused(
        ProtocolVersion::V5,
        &device,
        &cert,
        ReasonCode::NOT_AUTHORIZED.0,
    )
    .await;
    assert!(bystander.ping().await, "the other device stays connected");
    let (store, _) = certificate_lookups(app).await;
    assert_eq!(store, 3.0, "the revoked certificate was looked up again");

    // Disabling the other device: its live connection ends, and its certificate, named by
    // the CA, is no longer answered from memory either.
    let (status, body) = app
        .call(
            "PATCH",
            &format!("/v1/devices/{named}"),
            &app.token,
            Some(json!({ "status": "disabled" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    bystander.expect_disconnected_v311().await;
    b.expect_refused(ProtocolVersion::V3_1_1, &named, &by_ca, 5)
        .await;
    assert_eq!(certificate_lookups(app).await.0, 4.0);
    b.app.stop().await;
}

/// `seconds` from now, as rcgen's `not_after` wants it.
fn seconds_from_now(seconds: u64) -> impl Fn(&mut CertificateParams) {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    move |params: &mut CertificateParams| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + since_epoch
            + std::time::Duration::from_secs(seconds);
    }
}

#[tokio::test]
async fn a_certificate_that_expires_while_connected_ends_the_connection() {
    let b = CertBroker::spawn().await;
    let app = &b.app;
    let registry = app.create_registry(&app.token, "r").await;
    let device = b.bare_device(&app.token, &registry, "board").await;
    let named = b.bare_device(&app.token, &registry, "named").await;
    let lasting = b.bare_device(&app.token, &registry, "lasting").await;
    // Valid for a few seconds: long enough to register and connect, short enough to wait
    // for. A registered certificate ends with its own not_after ...
    let short = seconds_from_now(12);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "board");
    short(&mut params);
    let cert = ClientCert {
        cert_pem: params.self_signed(&key).expect("cert").pem(),
        key_pem: key.serialize_pem(),
    };
    register_on_device(app, &device, &cert).await;
    // ... and one named by a registry CA with the CA's, when that comes first.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "short-lived CA");
    short(&mut ca_params);
    let factory =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    register_ca(app, &app.token, &registry, &factory.pem(), false).await;
    let by_ca = signed(&factory, "named", VALID);
    let steady = self_signed("lasting");
    register_on_device(app, &lasting, &steady).await;

    let (mut expiring, _) = b.connected(ProtocolVersion::V5, &device, &cert).await;
    let (mut via_ca, _) = b.connected(ProtocolVersion::V5, &named, &by_ca).await;
    let (mut bystander, _) = b.connected(ProtocolVersion::V5, &lasting, &steady).await;
    // Bounded: the certificates end within 12 s of their creation.
    let limit = std::time::Duration::from_secs(60);
    expiring
        .disconnected_within(limit)
        .await
        .expect("DISCONNECT 0x87 at the certificate's expiry");
    via_ca
        .disconnected_within(limit)
        .await
        .expect("DISCONNECT 0x87 at the CA's expiry");
    assert!(
        bystander.ping().await,
        "a valid certificate stays connected"
    );
    // Remembered or not, the expired certificate does not connect again.
    b.expect_refused(
        ProtocolVersion::V5,
        &device,
        &cert,
        ReasonCode::NOT_AUTHORIZED.0,
    )
    .await;
    b.expect_refused(ProtocolVersion::V3_1_1, &named, &by_ca, 5)
        .await;
    b.app.stop().await;
}

/// How many devices `registry` has.
async fn device_count(app: &TestApp, registry: &str) -> usize {
    let path = format!("/v1/registries/{registry}/devices");
    let (_, listed) = app.call("GET", &path, &app.token, None).await;
    listed["items"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn just_in_time_registration_stops_at_the_tenant_device_quota() {
    // The configured default quota applies to a tenant without its own.
    let b = CertBroker::spawn_with(&[("IOTCORE_API_QUOTAS_MAX_DEVICES", "2")]).await;
    let app = &b.app;
    let registry = app.create_registry(&app.token, "r").await;
    b.bare_device(&app.token, &registry, "board").await;
    let factory = ca("factory");
    register_ca(app, &app.token, &registry, &factory.pem(), true).await;

    let second = signed(&factory, "sensor-1", VALID);
    b.connected(ProtocolVersion::V5, "", &second).await;
    assert_eq!(device_count(app, &registry).await, 2);
    // The quota is full: refused as quota exceeded (3.1.1: server unavailable), and no
    // device is created.
    let third = signed(&factory, "sensor-2", VALID);
    b.expect_refused(
        ProtocolVersion::V5,
        "",
        &third,
        ReasonCode::QUOTA_EXCEEDED.0,
    )
    .await;
    b.expect_refused(ProtocolVersion::V3_1_1, "", &third, 3)
        .await;
    assert_eq!(device_count(app, &registry).await, 2);
    let refusals = metric(
        app,
        "iotcore_mqtt_limit_refusals_total",
        &[
            ("tenant", app.tenant_id.as_str()),
            ("limit", "tenant_devices"),
        ],
    )
    .await;
    assert_eq!(refusals, 2.0);
    // The API's device creation stops at the same limit.
    let path = format!("/v1/registries/{registry}/devices");
    let (status, body) = app
        .call("POST", &path, &app.token, Some(json!({ "name": "manual" })))
        .await;
    assert_ne!(status, 201, "{body}");

    // The tenant's own quota overrides the default.
    let path = format!("/v1/tenants/{}/quotas", app.tenant_id);
    let (status, body) = app
        .call(
            "PATCH",
            &path,
            &app.operator_token,
            Some(json!({ "max_devices": 3 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    b.connected(ProtocolVersion::V5, "", &third).await;
    assert_eq!(device_count(app, &registry).await, 3);
    b.app.stop().await;
}
