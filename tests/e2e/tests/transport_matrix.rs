//! The same MQTT over every transport (SPEC §3.1, last bullet): one scenario (connect,
//! subscribe, QoS 1 both ways, a retained message, a will) run over TCP, TLS, WebSocket and
//! WebSocket over TLS, each with MQTT 3.1.1 and 5 (rumqttc), with the same assertions; and PROXY protocol v2 on the TLS and
//! WebSocket listeners, where the header comes before the TLS handshake or the HTTP upgrade.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use iotcore_codec::{decode, Connect, Packet, Properties, ProtocolVersion};
use iotcore_e2e::mqtt::WAIT;
use iotcore_e2e::tls::TestPki;
use iotcore_e2e::{free_port, Device, TestApp};
use rumqttc::{LastWill, QoS, TlsConfiguration, Transport};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

/// The table every transport test runs through.
const TRANSPORTS: [Kind; 4] = [Kind::Tcp, Kind::Tls, Kind::Ws, Kind::Wss];

/// A broker with all four listeners, each on its own loopback port.
struct Listeners {
    app: TestApp,
    pki: TestPki,
    tls: u16,
    ws: u16,
    wss: u16,
}

impl Listeners {
    async fn spawn(extra_env: &[(&str, &str)]) -> Listeners {
        let pki = TestPki::generate();
        let (tls, ws, wss) = (free_port(), free_port(), free_port());
        let mut env = pki.broker_env();
        env.push(("IOTCORE_MQTT_TLS_LISTEN".into(), format!("127.0.0.1:{tls}")));
        env.push(("IOTCORE_MQTT_WS_LISTEN".into(), format!("127.0.0.1:{ws}")));
        env.push(("IOTCORE_MQTT_WSS_LISTEN".into(), format!("127.0.0.1:{wss}")));
        let mut env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.extend_from_slice(extra_env);
        let app = TestApp::spawn_with(&env).await;
        Listeners {
            app,
            pki,
            tls,
            ws,
            wss,
        }
    }

    fn port(&self, kind: Kind) -> u16 {
        match kind {
            Kind::Tcp => self.app.mqtt.port(),
            Kind::Tls => self.tls,
            Kind::Ws => self.ws,
            Kind::Wss => self.wss,
        }
    }

    fn tls_config(&self, alpn: Option<&[u8]>) -> TlsConfiguration {
        TlsConfiguration::Simple {
            ca: self.pki.ca_pem.clone().into_bytes(),
            alpn: alpn.map(|p| vec![p.to_vec()]),
            client_auth: None,
        }
    }

    /// Where rumqttc connects for `kind`: host (or URL), port and transport.
    fn endpoint(&self, kind: Kind) -> (String, u16, Transport) {
        let port = self.port(kind);
        match kind {
            Kind::Tcp => ("127.0.0.1".into(), port, Transport::Tcp),
            Kind::Tls => (
                "localhost".into(),
                port,
                Transport::tls_with_config(self.tls_config(Some(b"mqtt"))),
            ),
            Kind::Ws => (format!("ws://127.0.0.1:{port}/mqtt"), port, Transport::Ws),
            Kind::Wss => (
                format!("wss://localhost:{port}/mqtt"),
                port,
                Transport::wss_with_config(self.tls_config(None)),
            ),
        }
    }
}

/// The MQTT versions every transport is tried with.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Version {
    V311,
    V5,
}

const VERSIONS: [Version; 2] = [Version::V311, Version::V5];

/// One row of the table.
#[derive(Clone, Copy, Debug)]
struct Row {
    kind: Kind,
    version: Version,
}

/// A message as either version's client received it.
#[derive(Debug)]
struct Received {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

/// What the tests need of the packets a client receives, whatever its version.
#[derive(Debug)]
enum Event {
    /// The granted QoS of each filter, or 0x80 and up for a refusal.
    SubAck(Vec<u8>),
    PubAck,
    Publish(Received),
    Other,
}

enum Handle {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// An MQTT client of either version whose event loop runs in a task; aborting the task
/// drops the connection without a DISCONNECT, as a lost network would.
struct Client {
    handle: Handle,
    events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<()>,
    name: String,
}

/// A will to set up at CONNECT: topic and payload, QoS 1, not retained.
type WillSpec<'a> = Option<(&'a str, &'a str)>;

fn v311_event(packet: rumqttc::Packet) -> Event {
    match packet {
        rumqttc::Packet::SubAck(ack) => Event::SubAck(
            ack.return_codes
                .iter()
                .map(|code| match code {
                    rumqttc::SubscribeReasonCode::Success(qos) => *qos as u8,
                    rumqttc::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
        ),
        rumqttc::Packet::PubAck(_) => Event::PubAck,
        rumqttc::Packet::Publish(p) => Event::Publish(Received {
            topic: p.topic,
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            retain: p.retain,
        }),
        _ => Event::Other,
    }
}

fn v5_event(packet: v5::Packet) -> Event {
    match packet {
        v5::Packet::SubAck(ack) => Event::SubAck(
            ack.return_codes
                .iter()
                .map(|code| match code {
                    v5::SubscribeReasonCode::Success(qos) => *qos as u8,
                    _ => 0x80,
                })
                .collect(),
        ),
        v5::Packet::PubAck(_) => Event::PubAck,
        v5::Packet::Publish(p) => Event::Publish(Received {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            retain: p.retain,
        }),
        _ => Event::Other,
    }
}

use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;

/// Connects `client_id` with a credential over the row's transport and version, and
/// asserts a successful CONNACK.
async fn connect(
    l: &Listeners,
    row: Row,
    client_id: &str,
    user: &str,
    pass: &str,
    will: WillSpec<'_>,
) -> Client {
    let name = format!("{:?}/{:?} {client_id}", row.kind, row.version);
    let (host, port, transport) = l.endpoint(row.kind);
    let (tx, events) = mpsc::unbounded_channel();
    let (handle, task) = match row.version {
        Version::V311 => {
            let mut options = rumqttc::MqttOptions::new(client_id, host, port);
            options.set_transport(transport);
            options.set_credentials(user, pass);
            options.set_keep_alive(Duration::from_secs(30));
            if let Some((topic, payload)) = will {
                options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, false));
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
            loop {
                match tokio::time::timeout(WAIT, eventloop.poll()).await {
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => {
                        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{name}");
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => panic!("{name}: connect failed: {e:?}"),
                    Err(_) => panic!("{name}: connect timed out"),
                }
            }
            let task = tokio::spawn(async move {
                while let Ok(event) = eventloop.poll().await {
                    if let rumqttc::Event::Incoming(packet) = event {
                        if tx.send(v311_event(packet)).is_err() {
                            return;
                        }
                    }
                }
            });
            (Handle::V311(client), task)
        }
        Version::V5 => {
            let mut options = rumqttc::v5::MqttOptions::new(client_id, host, port);
            options.set_transport(transport);
            options.set_credentials(user, pass);
            options.set_keep_alive(Duration::from_secs(30));
            if let Some((topic, payload)) = will {
                options.set_last_will(v5::LastWill::new(
                    topic,
                    payload,
                    QoS5::AtLeastOnce,
                    false,
                    None,
                ));
            }
            let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
            loop {
                match tokio::time::timeout(WAIT, eventloop.poll()).await {
                    Ok(Ok(rumqttc::v5::Event::Incoming(v5::Packet::ConnAck(ack)))) => {
                        assert_eq!(ack.code, v5::ConnectReturnCode::Success, "{name}");
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => panic!("{name}: connect failed: {e:?}"),
                    Err(_) => panic!("{name}: connect timed out"),
                }
            }
            let task = tokio::spawn(async move {
                while let Ok(event) = eventloop.poll().await {
                    if let rumqttc::v5::Event::Incoming(packet) = event {
                        if tx.send(v5_event(packet)).is_err() {
                            return;
                        }
                    }
                }
            });
            (Handle::V5(client), task)
        }
    };
    Client {
        handle,
        events,
        task,
        name,
    }
}

impl Client {
    async fn next(&mut self) -> Event {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(event)) => event,
            other => panic!("{}: nothing arrived: {other:?}", self.name),
        }
    }

    /// Subscribes at QoS 1 and asserts that QoS 1 was granted.
    async fn subscribe(&mut self, filter: &str) {
        let sent = match &self.handle {
            Handle::V311(c) => c.subscribe(filter, QoS::AtLeastOnce).await.is_ok(),
            Handle::V5(c) => c.subscribe(filter, QoS5::AtLeastOnce).await.is_ok(),
        };
        assert!(sent, "{}: subscribe", self.name);
        loop {
            if let Event::SubAck(granted) = self.next().await {
                assert_eq!(granted, vec![1], "{}: {filter}", self.name);
                return;
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    async fn publish(&mut self, topic: &str, retain: bool, payload: &str) {
        let payload = payload.as_bytes().to_vec();
        let sent = match &self.handle {
            Handle::V311(c) => c
                .publish(topic, QoS::AtLeastOnce, retain, payload)
                .await
                .is_ok(),
            Handle::V5(c) => c
                .publish(topic, QoS5::AtLeastOnce, retain, payload)
                .await
                .is_ok(),
        };
        assert!(sent, "{}: publish", self.name);
        loop {
            if let Event::PubAck = self.next().await {
                return;
            }
        }
    }

    async fn next_publish(&mut self) -> Received {
        loop {
            if let Event::Publish(publish) = self.next().await {
                return publish;
            }
        }
    }
}

/// Asserts `got` is `payload` on `topic` at QoS 1 with `retain`.
fn assert_message(got: &Received, topic: &str, payload: &str, retain: bool, row: Row) {
    assert_eq!(got.topic, topic, "{row:?}");
    assert_eq!(got.payload, payload.as_bytes(), "{row:?}");
    assert_eq!(got.qos, 1, "{row:?}");
    assert_eq!(got.retain, retain, "{row:?}: RETAIN");
}

/// The scenario of one row: every client of it uses the row's transport and version.
async fn scenario(l: &Listeners, row: Row) {
    let app = &l.app;
    let name = format!("{:?}-{:?}", row.kind, row.version).to_lowercase();
    let registry = app.create_registry(&app.token, &name).await;
    let device = app.create_device(&app.token, &registry, "board").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let events = format!("$devices/{}/events/temperature", device.id);
    let commands = format!("$devices/{}/commands/reboot", device.id);
    let state = format!("$devices/{}/state/firmware", device.id);
    let will_topic = format!("$devices/{}/state/online", device.id);

    // Connect: the device with a will, a registry client watching its events and state.
    let will = Some((will_topic.as_str(), "lost"));
    let mut board = connect(l, row, &device.id, &device.id, &device.password, will).await;
    let watcher_id = format!("{user}:watcher");
    let mut watcher = connect(l, row, &watcher_id, &user, &pass, None).await;
    watcher.subscribe("$devices/+/events/#").await;
    watcher.subscribe("$devices/+/state/#").await;
    board
        .subscribe(&format!("$devices/{}/commands/#", device.id))
        .await;

    // QoS 1 both ways.
    board.publish(&events, false, "21.5").await;
    assert_message(&watcher.next_publish().await, &events, "21.5", false, row);
    watcher.publish(&commands, false, "now").await;
    assert_message(&board.next_publish().await, &commands, "now", false, row);

    // Retained: live subscribers get it with RETAIN 0 (5.0 MQTT-3.3.1-12, 3.1.1
    // MQTT-3.3.1-9), a new subscription with RETAIN 1 (5.0 MQTT-3.3.1-9, 3.1.1 -6 and -8).
    board.publish(&state, true, "1.4.2").await;
    assert_message(&watcher.next_publish().await, &state, "1.4.2", false, row);
    // A message without RETAIN leaves the retained one alone (5.0 -8, 3.1.1 -12).
    board.publish(&state, false, "1.4.3-rc").await;
    assert_message(
        &watcher.next_publish().await,
        &state,
        "1.4.3-rc",
        false,
        row,
    );
    let late_id = format!("{user}:late");
    let mut late = connect(l, row, &late_id, &user, &pass, None).await;
    late.subscribe("$devices/+/state/#").await;
    assert_message(&late.next_publish().await, &state, "1.4.2", true, row);

    // Will: the device's connection is lost without a DISCONNECT (MQTT-3.1.2-8).
    board.task.abort();
    let will = watcher.next_publish().await;
    assert_message(&will, &will_topic, "lost", false, row);
    let will = late.next_publish().await;
    assert_message(&will, &will_topic, "lost", false, row);
}

#[tokio::test]
async fn one_scenario_behaves_the_same_over_tcp_tls_ws_and_wss() {
    let listeners = Listeners::spawn(&[]).await;
    for kind in TRANSPORTS {
        for version in VERSIONS {
            scenario(&listeners, Row { kind, version }).await;
        }
    }
    listeners.app.stop().await;
}

const PROXY_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY protocol v2 PROXY header for TCP over IPv4 from `source` to 10.0.0.2:8883.
fn proxy_header(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut bytes = PROXY_SIGNATURE.to_vec();
    bytes.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    bytes.extend_from_slice(&source);
    bytes.extend_from_slice(&[10, 0, 0, 2]);
    bytes.extend_from_slice(&port.to_be_bytes());
    bytes.extend_from_slice(&8883_u16.to_be_bytes());
    bytes
}

/// A TLS client trusting the test CA, offering `alpn` (`mqtt` for MQTT over TLS,
/// `http/1.1` for WebSocket over TLS, as the listeners expect).
fn tls_connector(pki: &TestPki, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca =
        rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("CA PEM");
    roots.add(ca).expect("CA certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn connect_bytes(device: &Device) -> Vec<u8> {
    let connect = Packet::Connect(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 30,
        client_id: device.id.clone(),
        will: None,
        username: Some(device.id.clone()),
        password: Some(device.password.clone().into_bytes().into()),
        properties: Properties::default(),
    });
    let mut out = BytesMut::new();
    connect
        .encode(ProtocolVersion::V3_1_1, &mut out)
        .expect("encode CONNECT");
    out.to_vec()
}

/// Sends CONNECT over a byte stream and returns the CONNACK's return code.
async fn connack_over_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    device: &Device,
) -> u8 {
    stream
        .write_all(&connect_bytes(device))
        .await
        .expect("write CONNECT");
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(packet)) = decode(&mut buf, ProtocolVersion::V3_1_1, 1 << 20) {
            match packet {
                Packet::ConnAck(ack) => return ack.code,
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        let n = tokio::time::timeout(WAIT, stream.read_buf(&mut buf))
            .await
            .expect("CONNACK in time")
            .expect("read");
        assert!(n > 0, "closed before CONNACK");
    }
}

/// Sends CONNECT over a WebSocket and returns the CONNACK's return code.
async fn connack_over_websocket<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    device: &Device,
) -> u8 {
    ws.send(Message::Binary(connect_bytes(device).into()))
        .await
        .expect("send CONNECT");
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(packet)) = decode(&mut buf, ProtocolVersion::V3_1_1, 1 << 20) {
            match packet {
                Packet::ConnAck(ack) => return ack.code,
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => buf.extend_from_slice(&data),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected MQTT data, got {other:?}"),
        }
    }
}

fn websocket_request(
    scheme: &str,
    port: u16,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("{scheme}://localhost:{port}/mqtt")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "mqtt".parse().expect("header value"),
    );
    request
}

/// A connection kept open while a test looks at what the broker recorded about it.
type Held = Box<dyn std::any::Any + Send>;

/// Opens a connection to `kind`'s listener, writes `preamble` first, then does the
/// transport's handshake and an MQTT CONNECT; returns the CONNACK code with the open
/// connection, or `None` when the broker closed the connection before answering.
async fn connect_after(
    l: &Listeners,
    kind: Kind,
    preamble: &[u8],
    device: &Device,
) -> Option<(u8, Held)> {
    let port = l.port(kind);
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.write_all(preamble).await.expect("write preamble");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    match kind {
        Kind::Tcp => {
            let code = connack_over_stream(&mut tcp, device).await;
            Some((code, Box::new(tcp)))
        }
        Kind::Tls => {
            let mut tls = tls_connector(&l.pki, b"mqtt")
                .connect(name, tcp)
                .await
                .ok()?;
            let code = connack_over_stream(&mut tls, device).await;
            Some((code, Box::new(tls)))
        }
        Kind::Ws => {
            let (mut ws, _) = tokio_tungstenite::client_async(websocket_request("ws", port), tcp)
                .await
                .ok()?;
            let code = connack_over_websocket(&mut ws, device).await;
            Some((code, Box::new(ws)))
        }
        Kind::Wss => {
            let tls = tls_connector(&l.pki, b"http/1.1")
                .connect(name, tcp)
                .await
                .ok()?;
            let (mut ws, _) = tokio_tungstenite::client_async(websocket_request("wss", port), tls)
                .await
                .ok()?;
            let code = connack_over_websocket(&mut ws, device).await;
            Some((code, Box::new(ws)))
        }
    }
}

/// The device's recorded client address once it is online.
async fn client_address(app: &TestApp, device_id: &str) -> String {
    for _ in 0..100 {
        let (status, device) = app
            .call("GET", &format!("/v1/devices/{device_id}"), &app.token, None)
            .await;
        assert_eq!(status, 200, "{device}");
        if device["connection"]["online"] == Value::Bool(true) {
            return device["connection"]["client_address"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the device never showed online");
}

/// `mqtt.tls_proxy_protocol`, `mqtt.ws_proxy_protocol` and `mqtt.wss_proxy_protocol`: the
/// PROXY protocol v2 header comes before the TLS handshake or the HTTP upgrade, and the
/// client's address is the one it names; without a header the handshake never starts
/// (the broker reads the TLS ClientHello or the HTTP request as a bad header and closes).
#[tokio::test]
async fn proxy_protocol_v2_works_on_the_tls_and_websocket_listeners() {
    let l = Listeners::spawn(&[
        ("IOTCORE_MQTT_TLS_PROXY_PROTOCOL", "true"),
        ("IOTCORE_MQTT_WS_PROXY_PROTOCOL", "true"),
        ("IOTCORE_MQTT_WSS_PROXY_PROTOCOL", "true"),
    ])
    .await;
    let registry = l.app.create_registry(&l.app.token, "proxied").await;
    for (row, kind) in [Kind::Tls, Kind::Ws, Kind::Wss].into_iter().enumerate() {
        let name = format!("{kind:?}").to_lowercase();
        let device = l.app.create_device(&l.app.token, &registry, &name).await;
        let source = [198, 51, 100, 10 + row as u8];
        let header = proxy_header(source, 40_000 + row as u16);
        let connected = connect_after(&l, kind, &header, &device).await;
        let Some((code, _held)) = connected else {
            panic!("{kind:?} behind a PROXY header: closed without CONNACK");
        };
        assert_eq!(code, 0, "{kind:?} behind a PROXY header");
        assert_eq!(
            client_address(&l.app, &device.id).await,
            format!("198.51.100.{}:{}", 10 + row, 40_000 + row),
            "{kind:?}"
        );
        assert!(
            connect_after(&l, kind, &[], &device).await.is_none(),
            "{kind:?} without a header"
        );
    }
    // The plain TCP listener was not configured for the header: it works without one.
    let device = l.app.create_device(&l.app.token, &registry, "tcp").await;
    let connected = connect_after(&l, Kind::Tcp, &[], &device).await;
    assert_eq!(connected.map(|(code, _)| code), Some(0));
    l.app.stop().await;
}
