//! Tenant isolation (SPEC §3.2): nothing a tenant's devices publish reaches another tenant.

use iotcore_codec::{ProtocolVersion, ReasonCode};
use iotcore_e2e::mqtt::{connect_v311, connect_v5, WAIT};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::TestApp;
use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
use rumqttc::v5::mqttbytes::QoS;
use std::time::Duration;

#[tokio::test]
async fn device_of_another_tenant_never_receives_and_cannot_subscribe_to_everything() {
    let app = TestApp::spawn().await;
    let (_, token_b) = app.other_tenant("globex").await;
    let registry_a = app.create_registry(&app.token, "shared-name").await;
    let registry_b = app.create_registry(&token_b, "shared-name").await;
    let device_a = app
        .create_device(&app.token, &registry_a, "same-device-name")
        .await;
    let device_b = app
        .create_device(&token_b, &registry_b, "same-device-name")
        .await;

    // Registry clients of both tenants watch every device's events and state.
    let (user_a, pass_a) = app.create_registry_password(&app.token, &registry_a).await;
    let (user_b, pass_b) = app.create_registry_password(&token_b, &registry_b).await;
    let mut watcher_a = connect_v5(app.mqtt, &user_a, &user_a, &pass_a)
        .await
        .expect("registry client A");
    let mut watcher_b = connect_v5(app.mqtt, &user_b, &user_b, &pass_b)
        .await
        .expect("registry client B");
    for watcher in [&mut watcher_a, &mut watcher_b] {
        watcher
            .client
            .subscribe("$devices/+/events/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        assert_eq!(
            watcher.suback().await.return_codes,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        watcher
            .subscribe("$devices/+/state/#", QoS::AtLeastOnce)
            .await;
    }

    // Device A asks for everything: refused, whatever wildcard it tries.
    let mut spy = Raw::connect(app.mqtt, ProtocolVersion::V5, &device_a, 60).await;
    for filter in [
        "#",
        "+/#",
        "$devices/#",
        "$devices/+/events/#",
        "$share/g/#",
    ] {
        assert!(spy.subscribe_qos1(filter).await.is_error(), "{filter}");
    }

    // Device B publishes events and a retained state.
    let publisher = app.mqtt_v5(&device_b).await.expect("device B");
    let events = format!("$devices/{}/events/secret", device_b.id);
    let state = format!("$devices/{}/state", device_b.id);
    publisher
        .client
        .publish(&events, QoS::AtLeastOnce, false, "tenant B only")
        .await
        .expect("publish");
    publisher
        .client
        .publish(&state, QoS::AtLeastOnce, true, "retained for B")
        .await
        .expect("publish");

    let got = watcher_b
        .next_publish(WAIT)
        .await
        .expect("tenant B's registry client receives it");
    assert_eq!(got.payload.as_ref(), b"tenant B only");
    watcher_b.next_publish(WAIT).await.expect("and the state");
    assert!(
        watcher_a
            .next_publish(Duration::from_secs(1))
            .await
            .is_none(),
        "tenant A received tenant B's message"
    );

    // A late subscriber of tenant A gets no retained message of tenant B.
    let mut late_a = connect_v311(app.mqtt, &format!("{user_a}:late"), &user_a, &pass_a)
        .await
        .expect("late A");
    late_a
        .subscribe("$devices/+/state/#", rumqttc::QoS::AtLeastOnce)
        .await;
    assert!(
        late_a.next_publish(Duration::from_secs(1)).await.is_none(),
        "retained message crossed tenants"
    );

    // Device A cannot publish into tenant B's device topics: they are not its topics.
    let forged = format!("$devices/{}/events/forged", device_b.id);
    assert_eq!(
        spy.publish_qos1(&forged, b"forged").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert!(watcher_b
        .next_publish(Duration::from_millis(500))
        .await
        .is_none());
    app.stop().await;
}

#[tokio::test]
async fn another_tenants_resources_are_not_found_through_the_api() {
    let app = TestApp::spawn().await;
    let (_, token_b) = app.other_tenant("initech").await;
    let registry_a = app.create_registry(&app.token, "r").await;
    let device_a = app.create_device(&app.token, &registry_a, "d").await;
    for path in [
        format!("/v1/registries/{registry_a}"),
        format!("/v1/devices/{}", device_a.id),
    ] {
        let (status, body) = app.call("GET", &path, &token_b, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        let (status, _) = app.call("GET", &path, &app.token, None).await;
        assert_eq!(status, 200, "{path}");
    }
    app.stop().await;
}
