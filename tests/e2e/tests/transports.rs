//! MQTT over TLS, WebSocket and WebSocket over TLS (SPEC §3.1, last bullet): the real
//! binary with certificates made by the test, rumqttc and mosquitto_pub as clients, and raw
//! TLS and WebSocket connections where the point is what the broker does with bad input.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use iotcore_codec::{decode, Connect, Packet, Properties, ProtocolVersion};
use iotcore_e2e::mqtt::WAIT;
use iotcore_e2e::tls::TestPki;
use iotcore_e2e::{free_port, Device, TestApp};
use rumqttc::{TlsConfiguration, Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A running broker with every transport on its own free port.
struct Transports {
    app: TestApp,
    pki: TestPki,
    tls: u16,
    ws: u16,
    wss: u16,
}

impl Transports {
    async fn spawn() -> Transports {
        let pki = TestPki::generate();
        let (tls, ws, wss) = (free_port(), free_port(), free_port());
        let mut env = pki.broker_env();
        env.push(("IOTCORE_MQTT_TLS_LISTEN".into(), format!("127.0.0.1:{tls}")));
        env.push(("IOTCORE_MQTT_WS_LISTEN".into(), format!("127.0.0.1:{ws}")));
        env.push(("IOTCORE_MQTT_WSS_LISTEN".into(), format!("127.0.0.1:{wss}")));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = TestApp::spawn_with(&env).await;
        Transports {
            app,
            pki,
            tls,
            ws,
            wss,
        }
    }

    /// A device and a registry client of its registry: `(device, (username, password))`.
    async fn device_and_registry_client(&self) -> (Device, (String, String)) {
        let app = &self.app;
        let registry = app.create_registry(&app.token, "transports").await;
        let device = app.create_device(&app.token, &registry, "board").await;
        let registry_client = app.create_registry_password(&app.token, &registry).await;
        (device, registry_client)
    }

    fn tls_config(&self, alpn: Option<&[u8]>, with_client_cert: bool) -> TlsConfiguration {
        TlsConfiguration::Simple {
            ca: self.pki.ca_pem.clone().into_bytes(),
            alpn: alpn.map(|p| vec![p.to_vec()]),
            client_auth: with_client_cert.then(|| {
                (
                    self.pki.client_cert_pem.clone().into_bytes(),
                    self.pki.client_key_pem.clone().into_bytes(),
                )
            }),
        }
    }

    fn tls_options(&self, client_id: &str, client_cert: bool) -> rumqttc::MqttOptions {
        let mut options = rumqttc::MqttOptions::new(client_id, "localhost", self.tls);
        options.set_transport(Transport::tls_with_config(
            self.tls_config(Some(b"mqtt"), client_cert),
        ));
        options
    }

    fn ws_options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let url = format!("ws://127.0.0.1:{}/mqtt", self.ws);
        let mut options = rumqttc::MqttOptions::new(client_id, url, self.ws);
        options.set_transport(Transport::Ws);
        options
    }

    fn wss_options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let url = format!("wss://localhost:{}/mqtt", self.wss);
        let mut options = rumqttc::MqttOptions::new(client_id, url, self.wss);
        options.set_transport(Transport::wss_with_config(self.tls_config(None, false)));
        options
    }
}

/// An MQTT 3.1.1 client over any transport, with its incoming packets on a channel.
struct Client {
    client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<rumqttc::Packet>,
}

async fn connect(mut options: rumqttc::MqttOptions, username: &str, password: &str) -> Client {
    options.set_credentials(username, password);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    loop {
        match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                break;
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("connect failed: {e:?}"),
            Err(_) => panic!("connect timed out"),
        }
    }
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(packet) = event {
                if tx.send(packet).is_err() {
                    return;
                }
            }
        }
    });
    Client { client, events }
}

impl Client {
    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            match tokio::time::timeout(WAIT, self.events.recv()).await {
                Ok(Some(rumqttc::Packet::SubAck(ack))) => {
                    assert!(
                        ack.return_codes
                            .iter()
                            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                        "{ack:?}"
                    );
                    return;
                }
                Ok(Some(_)) => continue,
                other => panic!("no SUBACK: {other:?}"),
            }
        }
    }

    async fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .expect("publish");
    }

    async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            match tokio::time::timeout(WAIT, self.events.recv()).await {
                Ok(Some(rumqttc::Packet::Publish(publish))) => return publish,
                Ok(Some(_)) => continue,
                other => panic!("no PUBLISH: {other:?}"),
            }
        }
    }
}

/// The device publishes an event and receives a command; the registry client receives the
/// event and sends the command. Each side uses the transport its options name.
async fn exchange(device: &Device, mut device_client: Client, mut registry_client: Client) {
    let events = format!("$devices/{}/events", device.id);
    let commands = format!("$devices/{}/commands", device.id);
    registry_client.subscribe("$devices/+/events").await;
    device_client.subscribe(&commands).await;

    device_client.publish(&events, b"21.5").await;
    let event = registry_client.next_publish().await;
    assert_eq!(event.topic, events);
    assert_eq!(&event.payload[..], b"21.5");

    registry_client.publish(&commands, b"reboot").await;
    let command = device_client.next_publish().await;
    assert_eq!(command.topic, commands);
    assert_eq!(&command.payload[..], b"reboot");
}

#[tokio::test]
async fn tls_clients_authenticate_with_passwords_and_exchange_messages() {
    let t = Transports::spawn().await;
    let (device, (registry, registry_password)) = t.device_and_registry_client().await;
    // The device also presents a certificate from a CA the broker does not know: the TLS
    // layer accepts it (possession is proven by the handshake) and the password decides.
    let device_client = connect(
        t.tls_options(&device.id, true),
        &device.id,
        &device.password,
    )
    .await;
    let registry_client = connect(
        t.tls_options(&registry, false),
        &registry,
        &registry_password,
    )
    .await;
    exchange(&device, device_client, registry_client).await;
    t.app.stop().await;
}

#[tokio::test]
async fn tls_refuses_a_wrong_password_like_tcp_does() {
    let t = Transports::spawn().await;
    let (device, _) = t.device_and_registry_client().await;
    let mut options = t.tls_options(&device.id, false);
    options.set_credentials(&device.id, "not-the-password");
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 8);
    let refused = loop {
        match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => break e,
            Err(_) => panic!("neither accepted nor refused"),
        }
    };
    // MQTT 3.1.1 return code 4: bad user name or password.
    assert!(
        matches!(
            refused,
            rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::BadUserNamePassword
            )
        ),
        "{refused:?}"
    );
    t.app.stop().await;
}

#[tokio::test]
async fn mosquitto_pub_over_tls_reaches_a_subscriber_on_plain_tcp() {
    let t = Transports::spawn().await;
    let (device, (registry, registry_password)) = t.device_and_registry_client().await;
    let tcp = rumqttc::MqttOptions::new(&registry, "127.0.0.1", t.app.mqtt.port());
    let mut subscriber = connect(tcp, &registry, &registry_password).await;
    subscriber.subscribe("$devices/+/events").await;

    let topic = format!("$devices/{}/events", device.id);
    let output = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &t.tls.to_string()])
        .args(["--cafile", &t.pki.ca_file.display().to_string()])
        .args(["-V", "mqttv311", "-q", "1", "-i", &device.id])
        .args(["-u", &device.id, "-P", &device.password])
        .args(["-t", &topic, "-m", "over-tls"])
        .output()
        .await
        .expect("mosquitto_pub is installed (the test command installs mosquitto-clients)");
    assert!(
        output.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let publish = subscriber.next_publish().await;
    assert_eq!(publish.topic, topic);
    assert_eq!(&publish.payload[..], b"over-tls");
    t.app.stop().await;
}

#[tokio::test]
async fn websocket_clients_exchange_messages() {
    let t = Transports::spawn().await;
    let (device, (registry, registry_password)) = t.device_and_registry_client().await;
    let device_client = connect(t.ws_options(&device.id), &device.id, &device.password).await;
    let tcp = rumqttc::MqttOptions::new(&registry, "127.0.0.1", t.app.mqtt.port());
    let registry_client = connect(tcp, &registry, &registry_password).await;
    exchange(&device, device_client, registry_client).await;
    t.app.stop().await;
}

#[tokio::test]
async fn websocket_over_tls_clients_exchange_messages() {
    let t = Transports::spawn().await;
    let (device, (registry, registry_password)) = t.device_and_registry_client().await;
    let device_client = connect(t.wss_options(&device.id), &device.id, &device.password).await;
    let registry_client = connect(t.wss_options(&registry), &registry, &registry_password).await;
    exchange(&device, device_client, registry_client).await;
    t.app.stop().await;
}

/// Reads until the broker closes the connection; `true` when it did within [`WAIT`].
async fn closed_by_broker<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A TLS alert may come first.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn connect_packet(device: &Device) -> Vec<u8> {
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

#[tokio::test]
async fn tls_listener_closes_plain_mqtt_and_garbage_and_keeps_serving_others() {
    let t = Transports::spawn().await;
    let (device, (registry, registry_password)) = t.device_and_registry_client().await;
    let mut registry_client = connect(
        t.tls_options(&registry, false),
        &registry,
        &registry_password,
    )
    .await;
    registry_client.subscribe("$devices/+/events").await;

    let tls_addr = format!("127.0.0.1:{}", t.tls);
    let mut plain = TcpStream::connect(&tls_addr).await.expect("connect");
    plain
        .write_all(&connect_packet(&device))
        .await
        .expect("write");
    assert!(
        closed_by_broker(&mut plain).await,
        "plain MQTT on the TLS listener"
    );

    let mut garbage = TcpStream::connect(&tls_addr).await.expect("connect");
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef])
        .await
        .expect("write");
    garbage.write_all(&[0x42; 4096]).await.expect("write");
    assert!(
        closed_by_broker(&mut garbage).await,
        "garbage on the TLS listener"
    );

    // The client connected before still works, and new ones are accepted.
    let device_client = connect(
        t.tls_options(&device.id, false),
        &device.id,
        &device.password,
    )
    .await;
    let events = format!("$devices/{}/events", device.id);
    device_client.publish(&events, b"still here").await;
    let publish = registry_client.next_publish().await;
    assert_eq!(&publish.payload[..], b"still here");
    t.app.stop().await;
}

fn rustls_client(
    pki: &TestPki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca =
        rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("CA PEM");
    roots.add(ca).expect("CA certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn alpn_mqtt_is_negotiated_over_tls_1_2_and_1_3() {
    let t = Transports::spawn().await;
    let (device, _) = t.device_and_registry_client().await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let connector = rustls_client(&t.pki, &[version]);
        let tcp = TcpStream::connect(("127.0.0.1", t.tls))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let (_, connection) = tls.get_ref();
        assert_eq!(connection.alpn_protocol(), Some(&b"mqtt"[..]));
        assert_eq!(connection.protocol_version(), Some(version.version));

        tls.write_all(&connect_packet(&device))
            .await
            .expect("write");
        let mut buf = BytesMut::new();
        let connack = loop {
            if let Ok(Some(packet)) = decode(&mut buf, ProtocolVersion::V3_1_1, 1 << 20) {
                break packet;
            }
            let n = tokio::time::timeout(WAIT, tls.read_buf(&mut buf))
                .await
                .expect("CONNACK in time")
                .expect("read");
            assert!(n > 0, "closed before CONNACK");
        };
        match connack {
            Packet::ConnAck(ack) => assert_eq!(ack.code, 0),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
    t.app.stop().await;
}

/// Sends a raw HTTP upgrade request and returns the status line and headers.
async fn upgrade(port: u16, path: &str, subprotocol: Option<&str>) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let protocol = subprotocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no HTTP response"),
        }
    }
    String::from_utf8_lossy(&response).to_ascii_lowercase()
}

#[tokio::test]
async fn websocket_needs_path_mqtt_and_subprotocol_mqtt() {
    let t = Transports::spawn().await;
    let wrong_path = upgrade(t.ws, "/", Some("mqtt")).await;
    assert!(wrong_path.starts_with("http/1.1 404"), "{wrong_path}");
    let no_subprotocol = upgrade(t.ws, "/mqtt", None).await;
    assert!(
        no_subprotocol.starts_with("http/1.1 400"),
        "{no_subprotocol}"
    );
    let other_subprotocol = upgrade(t.ws, "/mqtt", Some("chat, superchat")).await;
    assert!(
        other_subprotocol.starts_with("http/1.1 400"),
        "{other_subprotocol}"
    );
    // [MQTT-6.0.0-4]: the server selects "mqtt" and says so.
    let accepted = upgrade(t.ws, "/mqtt", Some("chat, mqtt")).await;
    assert!(accepted.starts_with("http/1.1 101"), "{accepted}");
    assert!(
        accepted.contains("sec-websocket-protocol: mqtt\r\n"),
        "{accepted}"
    );
    t.app.stop().await;
}

async fn websocket_client(port: u16) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let mut request = format!("ws://127.0.0.1:{port}/mqtt")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "mqtt".parse().expect("header value"),
    );
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("WebSocket upgrade");
    ws
}

/// Reads binary frames until `want` MQTT packets have arrived.
async fn packets(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    want: usize,
) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    while packets.len() < want {
        while let Ok(Some(packet)) = decode(&mut buf, ProtocolVersion::V3_1_1, 1 << 20) {
            packets.push(packet);
        }
        if packets.len() >= want {
            break;
        }
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => buf.extend_from_slice(&data),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected MQTT data, got {other:?}"),
        }
    }
    packets
}

/// [MQTT-6.0.0-2]: packets are not aligned on frames; the broker must cope with a packet
/// split over frames and with several packets in one frame.
#[tokio::test]
async fn websocket_packets_may_span_and_share_frames() {
    let t = Transports::spawn().await;
    let (device, _) = t.device_and_registry_client().await;
    let mut ws = websocket_client(t.ws).await;
    let connect = connect_packet(&device);
    let (head, tail) = connect.split_at(connect.len() / 2);
    ws.send(Message::Binary(head.to_vec().into()))
        .await
        .expect("send");
    ws.send(Message::Binary(tail.to_vec().into()))
        .await
        .expect("send");
    match packets(&mut ws, 1).await.as_slice() {
        [Packet::ConnAck(ack)] => assert_eq!(ack.code, 0),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Two PINGREQs in one frame, answered by two PINGRESPs.
    ws.send(Message::Binary(vec![0xc0, 0x00, 0xc0, 0x00].into()))
        .await
        .expect("send");
    let pongs = packets(&mut ws, 2).await;
    assert!(
        pongs.iter().all(|p| matches!(p, Packet::PingResp)),
        "{pongs:?}"
    );
    // WebSocket pings are answered by the transport, below MQTT.
    ws.send(Message::Ping(b"hi".to_vec().into()))
        .await
        .expect("send");
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Pong(data)))) => {
                assert_eq!(&data[..], b"hi");
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    t.app.stop().await;
}

/// [MQTT-6.0.0-1]: MQTT travels in binary frames; a text frame closes the connection.
#[tokio::test]
async fn websocket_text_frame_closes_the_connection_with_1003() {
    let t = Transports::spawn().await;
    let (device, _) = t.device_and_registry_client().await;
    let mut ws = websocket_client(t.ws).await;
    ws.send(Message::Binary(connect_packet(&device).into()))
        .await
        .expect("send");
    match packets(&mut ws, 1).await.as_slice() {
        [Packet::ConnAck(ack)] => assert_eq!(ack.code, 0),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    ws.send(Message::Text("hello".into())).await.expect("send");
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Unsupported));
    t.app.stop().await;
}
