//! CONNECT authentication and the client id rule (SPEC §3.3, §4.1).

use bytes::BytesMut;
use iotcore_codec::{decode, Connect, Packet, Properties, ProtocolVersion};
use iotcore_e2e::mqtt::{connect_v311, connect_v5, WAIT};
use iotcore_e2e::{Device, TestApp};
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use rumqttc::ConnectReturnCode as V311Code;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn wrong_password_and_unknown_device_get_the_same_refusal_in_v311_and_v5() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let unknown = "dev_00000000000000000000";

    // 3.1.1: return code 4, bad user name or password, for both.
    let wrong = connect_v311(app.mqtt, &device.id, &device.id, "not-the-password")
        .await
        .err();
    assert_eq!(wrong, Some(V311Code::BadUserNamePassword));
    let missing = connect_v311(app.mqtt, unknown, unknown, "whatever-password")
        .await
        .err();
    assert_eq!(missing, Some(V311Code::BadUserNamePassword));

    // 5.0: reason code 0x86 for both.
    let wrong = connect_v5(app.mqtt, &device.id, &device.id, "not-the-password")
        .await
        .err();
    assert_eq!(wrong, Some(V5Code::BadUserNamePassword));
    let missing = connect_v5(app.mqtt, unknown, unknown, "whatever-password")
        .await
        .err();
    assert_eq!(missing, Some(V5Code::BadUserNamePassword));

    // The right password is accepted, in both versions.
    assert!(app.mqtt_v311(&device).await.is_ok());
    assert!(app.mqtt_v5(&device).await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn a_client_id_other_than_the_device_id_is_refused() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let other = app.create_device(&app.token, &registry, "other").await;

    // A device cannot take another device's session by naming its client id.
    let v311 = connect_v311(app.mqtt, &other.id, &device.id, &device.password)
        .await
        .err();
    assert_eq!(v311, Some(V311Code::BadClientId));
    let v5 = connect_v5(app.mqtt, "some-name", &device.id, &device.password)
        .await
        .err();
    assert_eq!(v5, Some(V5Code::ClientIdentifierNotValid));
    app.stop().await;
}

/// The CONNACK code (MQTT 3.1.1) that `device` with `password` gets when it connects from
/// the loopback address `from` (all of 127.0.0.0/8 is this host).
async fn connack_from(app: &TestApp, from: IpAddr, device: &Device, password: &str) -> u8 {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    let mut stream = socket.connect(app.mqtt).await.expect("TCP connect");
    let connect = Packet::Connect(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 30,
        client_id: device.id.clone(),
        will: None,
        username: Some(device.id.clone()),
        password: Some(password.as_bytes().to_vec().into()),
        properties: Properties::default(),
    });
    let mut out = BytesMut::new();
    connect
        .encode(ProtocolVersion::V3_1_1, &mut out)
        .expect("encode");
    stream.write_all(&out).await.expect("send CONNECT");
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(packet)) = decode(&mut buf, ProtocolVersion::V3_1_1, 1 << 16) {
            match packet {
                Packet::ConnAck(connack) => return connack.code,
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        // The slow-down is bounded by mqtt.auth_failure_max_delay_ms (200 ms here).
        match tokio::time::timeout(WAIT, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            other => panic!("no CONNACK: {other:?}"),
        }
    }
}

/// `iotcore_mqtt_auth_throttled_total{by}` on /metrics (0 before the first).
async fn throttled(app: &TestApp, by: &str) -> f64 {
    app.metric(&format!("iotcore_mqtt_auth_throttled_total{{by=\"{by}\"}}"))
        .await
}

#[tokio::test]
async fn repeated_wrong_passwords_are_slowed_down_and_counted_but_others_still_connect() {
    let app = TestApp::spawn_with(&[
        ("IOTCORE_MQTT_AUTH_FAILURES_BEFORE_DELAY", "2"),
        ("IOTCORE_MQTT_AUTH_FAILURE_MAX_DELAY_MS", "200"),
    ])
    .await;
    let registry = app.create_registry(&app.token, "r").await;
    let target = app.create_device(&app.token, &registry, "target").await;
    let neighbour = app.create_device(&app.token, &registry, "neighbour").await;
    let third = app.create_device(&app.token, &registry, "third").await;
    let guesser: IpAddr = [127, 0, 0, 1].into();
    let elsewhere: IpAddr = [127, 0, 0, 2].into();

    // Two failures are let through at once; the third and fourth wait first.
    for _ in 0..4 {
        let code = connack_from(&app, guesser, &target, "not-the-password").await;
        assert_eq!(code, 4, "bad user name or password");
    }
    assert_eq!(throttled(&app, "address").await, 2.0);
    assert_eq!(throttled(&app, "username").await, 0.0);

    // The right password from another address still connects; the username's failures
    // make it wait first, and count.
    assert_eq!(
        connack_from(&app, elsewhere, &target, &target.password).await,
        0
    );
    assert_eq!(throttled(&app, "username").await, 1.0);
    // Another device from that address is not held up at all.
    assert_eq!(
        connack_from(&app, elsewhere, &neighbour, &neighbour.password).await,
        0
    );
    assert_eq!(throttled(&app, "address").await, 2.0);
    assert_eq!(throttled(&app, "username").await, 1.0);
    // The guessing address stays slowed down for credentials not seen before (one valid
    // credential does not unlock guessing the others) ...
    assert_eq!(
        connack_from(&app, guesser, &third, &third.password).await,
        0
    );
    assert_eq!(throttled(&app, "address").await, 3.0);
    // ... while a remembered one, say another client behind the same NAT, is not held up.
    assert_eq!(
        connack_from(&app, guesser, &neighbour, &neighbour.password).await,
        0
    );
    assert_eq!(throttled(&app, "address").await, 3.0);
    app.stop().await;
}

/// `iotcore_mqtt_auth_failures_total{reason}` on /metrics (0 before the first).
async fn auth_failures(app: &TestApp, reason: &str) -> f64 {
    app.metric(&format!(
        "iotcore_mqtt_auth_failures_total{{reason=\"{reason}\"}}"
    ))
    .await
}

fn encoded_connect(username: &str, password: &str) -> BytesMut {
    let connect = Packet::Connect(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 30,
        client_id: username.to_owned(),
        will: None,
        username: Some(username.to_owned()),
        password: Some(password.as_bytes().to_vec().into()),
        properties: Properties::default(),
    });
    let mut out = BytesMut::new();
    connect
        .encode(ProtocolVersion::V3_1_1, &mut out)
        .expect("encode");
    out
}

/// In a reconnect storm, clients that gave up close their connection while their CONNECT
/// waits for a password verification. Those are not verified once their turn comes (the
/// verification is skipped and counted as `client_gone`), while a client that is still
/// there, even one that sent more packets after its CONNECT, is.
#[tokio::test]
async fn connects_whose_client_has_gone_skip_the_password_verification() {
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_AUTH_FAILURES_BEFORE_DELAY", "1000")]).await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "stays").await;
    let before_gone = auth_failures(&app, "client_gone").await;
    let before_unknown = auth_failures(&app, "unknown_principal").await;

    // Unknown usernames cost a verification too (of a decoy hash), and none is remembered.
    let closers = 16;
    for n in 0..closers {
        let mut stream = tokio::net::TcpStream::connect(app.mqtt)
            .await
            .expect("TCP connect");
        let name = format!("dev_gone{n:016}");
        stream
            .write_all(&encoded_connect(&name, "some-password"))
            .await
            .expect("send CONNECT");
        drop(stream);
    }

    // The one that stays pipelines a PINGREQ after its CONNECT and is answered.
    let mut stream = tokio::net::TcpStream::connect(app.mqtt)
        .await
        .expect("TCP connect");
    let mut out = encoded_connect(&device.id, &device.password);
    Packet::PingReq
        .encode(ProtocolVersion::V3_1_1, &mut out)
        .expect("encode");
    stream.write_all(&out).await.expect("send CONNECT");
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        if let Ok(Some(packet)) = decode(&mut buf, ProtocolVersion::V3_1_1, 1 << 16) {
            answers.push(packet);
            continue;
        }
        match tokio::time::timeout(WAIT * 4, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            other => panic!("no CONNACK: {other:?}"),
        }
    }
    assert!(
        matches!(&answers[0], Packet::ConnAck(connack) if connack.code == 0),
        "{answers:?}"
    );
    assert!(matches!(answers[1], Packet::PingResp), "{answers:?}");

    // Every closed client is accounted for: verified before its close was seen (at most
    // one per core could start at once), or skipped.
    let mut waited = 0;
    let (gone, verified) = loop {
        let gone = auth_failures(&app, "client_gone").await - before_gone;
        let verified = auth_failures(&app, "unknown_principal").await - before_unknown;
        if gone + verified >= f64::from(closers) || waited >= 600 {
            break (gone, verified);
        }
        waited += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        gone + verified,
        f64::from(closers),
        "{gone} skipped, {verified} verified"
    );
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert!(
        gone >= f64::from(closers) - cores as f64,
        "{gone} of {closers} skipped with {cores} cores"
    );
    app.stop().await;
}
