//! PROXY protocol v2 on a listener (SPEC §3.1): the client's address comes from the header a
//! load balancer sends first; a connection without a valid header is closed.

use iotcore_codec::{Packet, ProtocolVersion};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};
use serde_json::Value;
use std::net::Ipv6Addr;
use std::time::Duration;

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut bytes = SIGNATURE.to_vec();
    bytes.push(0x20 | command);
    bytes.push(family);
    bytes.extend_from_slice(&(block.len() as u16).to_be_bytes());
    bytes.extend_from_slice(block);
    bytes
}

/// Connects `device` after writing `preamble`; returns the connection and whether the
/// broker answered with a successful CONNACK (`None`: it closed the connection).
async fn connect_after(app: &TestApp, device: &Device, preamble: &[u8]) -> (Raw, Option<u8>) {
    let mut raw = Raw::open(app.mqtt, ProtocolVersion::V5).await;
    // One write: a broker that refuses the preamble may close before a second one.
    let mut bytes = bytes::BytesMut::from(preamble);
    let connect = Raw::connect_packet(ProtocolVersion::V5, &device.id, device, 60);
    Packet::Connect(connect)
        .encode(ProtocolVersion::V5, &mut bytes)
        .expect("encode");
    raw.write(&bytes).await;
    let code = match raw.packet().await {
        Some(Packet::ConnAck(connack)) => Some(connack.code),
        None => None,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    (raw, code)
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

#[tokio::test]
async fn the_client_address_comes_from_a_proxy_protocol_v2_header() {
    let app = TestApp::spawn_with(&[
        ("IOTCORE_MQTT_TCP_PROXY_PROTOCOL", "true"),
        ("IOTCORE_MQTT_CONNECT_TIMEOUT_SECS", "2"),
    ])
    .await;
    let registry = app.create_registry(&app.token, "r").await;
    let v4 = app.create_device(&app.token, &registry, "v4").await;
    let v6 = app.create_device(&app.token, &registry, "v6").await;
    let local = app.create_device(&app.token, &registry, "local").await;

    // TCP over IPv4 from 203.0.113.7:4242 to 10.0.0.2:1883.
    let ipv4 = header(
        1,
        0x11,
        &[203, 0, 113, 7, 10, 0, 0, 2, 0x10, 0x92, 0x07, 0x5b],
    );
    let (mut v4_raw, code) = connect_after(&app, &v4, &ipv4).await;
    assert_eq!(code, Some(0));
    assert_eq!(client_address(&app, &v4.id).await, "203.0.113.7:4242");

    // TCP over IPv6, with a TLV after the addresses.
    let mut block = Vec::new();
    block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("v6").octets());
    block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("v6").octets());
    block.extend_from_slice(&[0x10, 0x92, 0x07, 0x5b, 0x04, 0x00, 0x01, 0x00]);
    let (_v6_raw, code) = connect_after(&app, &v6, &header(1, 0x21, &block)).await;
    assert_eq!(code, Some(0));
    assert_eq!(client_address(&app, &v6.id).await, "[2001:db8::7]:4242");

    // LOCAL (the balancer's own health check): the socket's address is used.
    let (_local_raw, code) = connect_after(&app, &local, &header(0, 0x00, &[])).await;
    assert_eq!(code, Some(0));
    assert!(client_address(&app, &local.id)
        .await
        .starts_with("127.0.0.1:"));

    // Without a header, or with a malformed one, the connection is closed unanswered.
    let mut version_1 = ipv4.clone();
    version_1[12] = 0x11;
    let mut truncated = header(1, 0x21, &[0; 12]);
    truncated.truncate(20);
    let too_long = {
        let mut h = header(1, 0x11, &[]);
        h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        h
    };
    let text_v1 = b"PROXY TCP4 203.0.113.7 10.0.0.2 4242 1883\r\n".to_vec();
    for (name, preamble) in [
        ("no header", Vec::new()),
        ("version 1 in a v2 header", version_1),
        (
            "IPv6 family with an IPv4-sized block",
            header(1, 0x21, &[0; 12]),
        ),
        ("text PROXY v1 header", text_v1),
        ("oversized address block", too_long),
    ] {
        let (_, code) = connect_after(&app, &local, &preamble).await;
        assert_eq!(code, None, "{name}: closed without CONNACK");
    }
    // A header cut short, then silence: closed (at the latest by the CONNECT timeout).
    let mut cut = Raw::open(app.mqtt, ProtocolVersion::V5).await;
    cut.write(&truncated).await;
    assert!(cut.packet().await.is_none());

    v4_raw.send(&Packet::PingReq).await;
    assert!(
        matches!(v4_raw.packet().await, Some(Packet::PingResp)),
        "the proxied connection carries on"
    );
    app.stop().await;
}
