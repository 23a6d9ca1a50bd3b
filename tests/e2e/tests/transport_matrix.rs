//! The same MQTT over every transport (SPEC §3.1, last bullet): one scenario (connect,
//! subscribe, QoS 1 both ways, a retained message, a will) run over TCP, TLS, WebSocket and
//! WebSocket over TLS with the same assertions; and PROXY protocol v2 on the TLS and
//! WebSocket listeners, where the header comes before the TLS handshake or the HTTP upgrade.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use iotcore_codec::{decode, Connect, Packet, Properties, ProtocolVersion};
use iotcore_e2e::mqtt::WAIT;
use iotcore_e2e::tls::TestPki;
use iotcore_e2e::{free_port, Device, TestApp};
use rumqttc::{LastWill, QoS, SubscribeReasonCode, TlsConfiguration, Transport};
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

    /// rumqttc options for `client_id` over `kind`, with a credential and keep alive.
    fn options(&self, kind: Kind, client_id: &str, user: &str, pass: &str) -> rumqttc::MqttOptions {
        let port = self.port(kind);
        let mut options = match kind {
            Kind::Tcp => rumqttc::MqttOptions::new(client_id, "127.0.0.1", port),
            Kind::Tls => {
                let mut o = rumqttc::MqttOptions::new(client_id, "localhost", port);
                o.set_transport(Transport::tls_with_config(self.tls_config(Some(b"mqtt"))));
                o
            }
            Kind::Ws => {
                let url = format!("ws://127.0.0.1:{port}/mqtt");
                let mut o = rumqttc::MqttOptions::new(client_id, url, port);
                o.set_transport(Transport::Ws);
                o
            }
            Kind::Wss => {
                let url = format!("wss://localhost:{port}/mqtt");
                let mut o = rumqttc::MqttOptions::new(client_id, url, port);
                o.set_transport(Transport::wss_with_config(self.tls_config(None)));
                o
            }
        };
        options.set_credentials(user, pass);
        options.set_keep_alive(Duration::from_secs(30));
        options
    }
}

/// An MQTT 3.1.1 client whose event loop runs in a task; aborting the task drops the
/// connection without a DISCONNECT, as a lost network would.
struct Client {
    client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<rumqttc::Packet>,
    task: JoinHandle<()>,
    name: String,
}

async fn connect(options: rumqttc::MqttOptions, name: String) -> Client {
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
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(packet) = event {
                if tx.send(packet).is_err() {
                    return;
                }
            }
        }
    });
    Client {
        client,
        events,
        task,
        name,
    }
}

impl Client {
    async fn next(&mut self) -> rumqttc::Packet {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(packet)) => packet,
            other => panic!("{}: nothing arrived: {other:?}", self.name),
        }
    }

    /// Subscribes at QoS 1 and asserts that QoS 1 was granted.
    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            if let rumqttc::Packet::SubAck(ack) = self.next().await {
                assert_eq!(
                    ack.return_codes,
                    vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
                    "{}: {filter}",
                    self.name
                );
                return;
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    async fn publish(&mut self, topic: &str, retain: bool, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .expect("publish");
        loop {
            if let rumqttc::Packet::PubAck(_) = self.next().await {
                return;
            }
        }
    }

    async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            if let rumqttc::Packet::Publish(publish) = self.next().await {
                return publish;
            }
        }
    }
}

/// Asserts `publish` is `payload` on `topic` at QoS 1 with `retain`.
fn assert_message(publish: &rumqttc::Publish, topic: &str, payload: &str, retain: bool, row: Kind) {
    assert_eq!(publish.topic, topic, "{row:?}");
    assert_eq!(&publish.payload[..], payload.as_bytes(), "{row:?}");
    assert_eq!(publish.qos, QoS::AtLeastOnce, "{row:?}");
    assert_eq!(publish.retain, retain, "{row:?}: RETAIN");
}

/// The scenario of one row: every client of it uses `kind`.
async fn scenario(l: &Listeners, kind: Kind) {
    let app = &l.app;
    let registry = app
        .create_registry(&app.token, &format!("{kind:?}").to_lowercase())
        .await;
    let device = app.create_device(&app.token, &registry, "board").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;
    let events = format!("$devices/{}/events/temperature", device.id);
    let commands = format!("$devices/{}/commands/reboot", device.id);
    let state = format!("$devices/{}/state/firmware", device.id);
    let will_topic = format!("$devices/{}/state/online", device.id);

    // Connect: the device with a will, a registry client watching its events and state.
    let mut options = l.options(kind, &device.id, &device.id, &device.password);
    options.set_last_will(LastWill::new(&will_topic, "lost", QoS::AtLeastOnce, false));
    let mut board = connect(options, format!("{kind:?} device")).await;
    let watcher_id = format!("{user}:watcher");
    let mut watcher = connect(
        l.options(kind, &watcher_id, &user, &pass),
        format!("{kind:?} watcher"),
    )
    .await;
    watcher.subscribe("$devices/+/events/#").await;
    watcher.subscribe("$devices/+/state/#").await;
    board
        .subscribe(&format!("$devices/{}/commands/#", device.id))
        .await;

    // QoS 1 both ways.
    board.publish(&events, false, "21.5").await;
    assert_message(&watcher.next_publish().await, &events, "21.5", false, kind);
    watcher.publish(&commands, false, "now").await;
    assert_message(&board.next_publish().await, &commands, "now", false, kind);

    // Retained: live subscribers get it with RETAIN 0 (MQTT-3.3.1-9), a new subscription
    // with RETAIN 1 (MQTT-3.3.1-6, MQTT-3.3.1-8; 3.1.1 numbering).
    board.publish(&state, true, "1.4.2").await;
    assert_message(&watcher.next_publish().await, &state, "1.4.2", false, kind);
    // A message without RETAIN leaves the retained one alone (MQTT-3.3.1-12; 5.0: -8).
    board.publish(&state, false, "1.4.3-rc").await;
    assert_message(
        &watcher.next_publish().await,
        &state,
        "1.4.3-rc",
        false,
        kind,
    );
    let late_id = format!("{user}:late");
    let mut late = connect(
        l.options(kind, &late_id, &user, &pass),
        format!("{kind:?} late subscriber"),
    )
    .await;
    late.subscribe("$devices/+/state/#").await;
    assert_message(&late.next_publish().await, &state, "1.4.2", true, kind);

    // Will: the device's connection is lost without a DISCONNECT (MQTT-3.1.2-8).
    board.task.abort();
    let will = watcher.next_publish().await;
    assert_message(&will, &will_topic, "lost", false, kind);
    let will = late.next_publish().await;
    assert_message(&will, &will_topic, "lost", false, kind);
}

#[tokio::test]
async fn one_scenario_behaves_the_same_over_tcp_tls_ws_and_wss() {
    let listeners = Listeners::spawn(&[]).await;
    for kind in TRANSPORTS {
        scenario(&listeners, kind).await;
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
