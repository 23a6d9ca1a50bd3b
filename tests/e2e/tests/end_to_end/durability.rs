//! What survives a restart of the broker.

use iotcore_e2e::mqtt::{connect_v311, WAIT};
use iotcore_e2e::TestApp;
use std::time::Duration;

/// Retained messages are kept in PostgreSQL: after a restart, a new subscriber receives
/// them (and not the ones deleted with an empty payload).
#[tokio::test]
async fn retained_messages_survive_a_restart() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, pass) = app.create_registry_password(&app.token, &registry).await;

    let mut publisher = connect_v311(app.mqtt, &device.id, &device.id, &device.password)
        .await
        .expect("device");
    let firmware = format!("$devices/{}/state/firmware", device.id);
    let scratch = format!("$devices/{}/state/scratch", device.id);
    for (topic, payload) in [
        (&firmware, "1.0"),
        (&scratch, "temporary"),
        (&firmware, "1.2.3"),
        (&scratch, ""),
    ] {
        publisher
            .client
            .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
        publisher.puback().await;
    }
    drop(publisher);

    let app = app.restart_gracefully().await;
    let mut subscriber = connect_v311(app.mqtt, &format!("{user}:after"), &user, &pass)
        .await
        .expect("subscriber");
    subscriber
        .client
        .subscribe("$devices/+/state/#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    subscriber.suback().await;
    let retained = subscriber
        .next_publish(WAIT)
        .await
        .expect("the retained message after the restart");
    assert!(retained.retain);
    assert_eq!(retained.topic, firmware);
    assert_eq!(retained.payload.as_ref(), b"1.2.3", "the last value");
    assert!(
        subscriber
            .next_publish(Duration::from_millis(500))
            .await
            .is_none(),
        "the deleted one stays deleted"
    );
    app.stop().await;
}
