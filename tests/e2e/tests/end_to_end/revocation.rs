//! SPEC §4.1: control-plane changes reach live connections. A disabled device, a deleted
//! credential or a suspended tenant is disconnected (MQTT 5: 0x87); others carry on.

use iotcore_codec::{Packet, ProtocolVersion, ReasonCode};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::TestApp;
use serde_json::json;

async fn expect_disconnected(raw: &mut Raw) {
    loop {
        match raw.packet().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, ReasonCode::NOT_AUTHORIZED);
                assert!(raw.packet().await.is_none(), "closed after the DISCONNECT");
                return;
            }
            Some(_) => continue,
            None => panic!("closed without DISCONNECT 0x87"),
        }
    }
}

async fn still_connected(raw: &mut Raw) {
    raw.send(&Packet::PingReq).await;
    assert!(
        matches!(raw.packet().await, Some(Packet::PingResp)),
        "a bystander was disconnected"
    );
}

#[tokio::test]
async fn disabling_a_device_or_deleting_its_password_disconnects_it() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let other = app.create_device(&app.token, &registry, "other").await;
    let mut bystander = Raw::connect(app.mqtt, ProtocolVersion::V5, &other, 60).await;

    let mut live = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let path = format!("/v1/devices/{}", device.id);
    let (status, body) = app
        .call(
            "PATCH",
            &path,
            &app.token,
            Some(json!({ "status": "disabled" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    expect_disconnected(&mut live).await;
    let (_, answer) = Raw::handshake(
        app.mqtt,
        Raw::connect_packet(ProtocolVersion::V3_1_1, &device.id, &device, 60),
    )
    .await;
    assert!(
        matches!(answer, Some(Packet::ConnAck(ref c)) if c.code == 5),
        "a disabled device is refused: {answer:?}"
    );
    still_connected(&mut bystander).await;

    // The other device loses its only password while connected.
    let (_, passwords) = app
        .call(
            "GET",
            &format!("/v1/devices/{}/passwords", other.id),
            &app.token,
            None,
        )
        .await;
    let password_id = passwords["items"][0]["id"]
        .as_str()
        .expect("password id")
        .to_owned();
    let path = format!("/v1/devices/{}/passwords/{password_id}", other.id);
    let (status, body) = app.call("DELETE", &path, &app.token, None).await;
    assert!((200..300).contains(&status), "{status} {body}");
    expect_disconnected(&mut bystander).await;
    app.stop().await;
}

#[tokio::test]
async fn suspending_a_tenant_disconnects_its_clients_only() {
    let app = TestApp::spawn().await;
    let (other_tenant, other_token) = app.other_tenant("globex").await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let other_registry = app.create_registry(&other_token, "r").await;
    let other_device = app.create_device(&other_token, &other_registry, "d").await;
    let mut ours = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let mut theirs = Raw::connect(app.mqtt, ProtocolVersion::V5, &other_device, 60).await;

    let path = format!("/v1/tenants/{other_tenant}");
    let (status, body) = app
        .call(
            "PATCH",
            &path,
            &app.operator_token,
            Some(json!({ "status": "suspended" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    expect_disconnected(&mut theirs).await;
    still_connected(&mut ours).await;
    app.stop().await;
}
