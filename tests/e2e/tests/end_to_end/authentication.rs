//! CONNECT authentication and the client id rule (SPEC §3.3, §4.1).

use iotcore_e2e::mqtt::{connect_v311, connect_v5};
use iotcore_e2e::TestApp;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use rumqttc::ConnectReturnCode as V311Code;

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
