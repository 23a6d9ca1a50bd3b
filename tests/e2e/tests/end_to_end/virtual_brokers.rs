//! Virtual brokers (SPEC §3.6): free-form namespaces inside a tenant, where any client
//! holding one of the broker's credentials uses any client id and any topic, and nothing
//! crosses to the tenant's registries or to other brokers.

use iotcore_codec::{Connect, Packet, Properties, ProtocolVersion};
use iotcore_e2e::mqtt::{connect_v311, connect_v5, WAIT};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::TestApp;
use serde_json::json;
use std::time::Duration;

/// Creates a virtual broker and a password for it: `(broker_id, password)`.
pub(crate) async fn create_broker(app: &TestApp, name: &str) -> (String, String) {
    let (status, broker) = app
        .call(
            "POST",
            "/v1/brokers",
            &app.token,
            Some(json!({ "name": name })),
        )
        .await;
    assert_eq!(status, 201, "{broker}");
    let id = broker["id"].as_str().unwrap_or_default().to_owned();
    let (status, password) = app
        .call(
            "POST",
            &format!("/v1/brokers/{id}/passwords"),
            &app.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{password}");
    (
        id,
        password["password"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn clients_of_a_virtual_broker_use_free_topics_and_nothing_crosses() {
    let app = TestApp::spawn().await;
    let (lab, lab_password) = create_broker(&app, "lab").await;
    let (other, other_password) = create_broker(&app, "other").await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;

    let mut dashboard = connect_v5(app.mqtt, "dashboard", &lab, &lab_password)
        .await
        .expect("lab client");
    dashboard
        .subscribe("#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let mut outsider = connect_v311(app.mqtt, "dashboard", &other, &other_password)
        .await
        .expect("other broker");
    outsider.subscribe("#", rumqttc::QoS::AtLeastOnce).await;
    let mut target = app.mqtt_v311(&device).await.expect("device");
    target
        .subscribe(
            format!("$devices/{}/commands/#", device.id),
            rumqttc::QoS::AtLeastOnce,
        )
        .await;

    let sensor = connect_v311(app.mqtt, "sensor-a", &lab, &lab_password)
        .await
        .expect("lab client");
    sensor
        .client
        .publish(
            "lab/room-1/temperature",
            rumqttc::QoS::AtLeastOnce,
            false,
            "21.5",
        )
        .await
        .expect("publish");
    let command = format!("$devices/{}/commands/reboot", device.id);
    sensor
        .client
        .publish(&command, rumqttc::QoS::AtLeastOnce, false, "crossing?")
        .await
        .expect("publish");

    let got = dashboard
        .next_publish(WAIT)
        .await
        .expect("same broker receives");
    assert_eq!(got.topic.as_ref(), b"lab/room-1/temperature");
    // The same client id in another broker is another session, and sees nothing of lab.
    assert!(
        outsider
            .next_publish(Duration::from_secs(1))
            .await
            .is_none(),
        "crossed to another broker"
    );
    // `$devices/…` inside a virtual broker is just a topic of that broker.
    assert!(
        target
            .next_publish(Duration::from_millis(500))
            .await
            .is_none(),
        "crossed to the registries"
    );
    app.stop().await;
}

#[tokio::test]
async fn anonymous_clients_land_in_the_operators_anonymous_broker_only() {
    let app = TestApp::spawn().await;
    let (lab, lab_password) = create_broker(&app, "playground").await;
    // Anonymous access is off by default.
    let connect = |client_id: &str| Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    let (_, answer) = Raw::handshake(app.mqtt, connect("anyone")).await;
    assert!(
        matches!(answer, Some(Packet::ConnAck(ref c)) if c.code == 4),
        "{answer:?}"
    );

    let app = app
        .restart_with(&[("IOTCORE_MQTT_ANONYMOUS_BROKER", lab.as_str())])
        .await;
    let mut member = connect_v311(app.mqtt, "member", &lab, &lab_password)
        .await
        .expect("broker client");
    member.subscribe("test/#", rumqttc::QoS::AtLeastOnce).await;
    let (mut anonymous, answer) = Raw::handshake(app.mqtt, connect("anonymous-1")).await;
    assert!(
        matches!(answer, Some(Packet::ConnAck(ref c)) if c.code == 0),
        "{answer:?}"
    );
    let publish = iotcore_codec::Publish {
        dup: false,
        qos: iotcore_codec::QoS::AtMostOnce,
        retain: false,
        topic: "test/hello".into(),
        packet_id: None,
        payload: bytes::Bytes::from_static(b"from nobody"),
        properties: Properties::default(),
    };
    anonymous.send(&Packet::Publish(publish)).await;
    let got = member
        .next_publish(WAIT)
        .await
        .expect("the anonymous client's message");
    assert_eq!(got.payload.as_ref(), b"from nobody");
    app.stop().await;
}
