//! mosquitto_sub and mosquitto_pub, clients written by other people, on both ends of the
//! broker: members of a shared subscription, and MQTT 3.1 (MQIsdp) in both directions.

use iotcore_e2e::mosquitto::MosquittoSub;
use iotcore_e2e::mqtt::WAIT;
use iotcore_e2e::{Device, TestApp};

/// A device and a registry client credential `(username, password)` of its registry.
async fn device_and_registry_client(app: &TestApp) -> (Device, (String, String)) {
    let registry = app.create_registry(&app.token, "interop").await;
    let device = app.create_device(&app.token, &registry, "board").await;
    let client = app.create_registry_password(&app.token, &registry).await;
    (device, client)
}

/// Runs `mosquitto_pub` against the app's TCP listener and asserts that it succeeded.
async fn mosquitto_pub(app: &TestApp, args: &[&str]) {
    let output = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &app.mqtt.port().to_string()])
        .args(args)
        .output()
        .await
        .expect("mosquitto_pub is installed (the test command installs mosquitto-clients)");
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// MQTT 5 §4.8.2 (and the same `$share/` filters from a 3.1.1 client): two mosquitto_sub
/// members of one group, one speaking MQTT 5 and one 3.1.1, split the messages between
/// them, each message going to exactly one member. After the messages, each member
/// receives a marker on a topic of its own (non-shared) subscription: the broker sends a
/// connection its messages in the order it routed them, so anything sent twice would have
/// arrived before the marker.
#[tokio::test]
async fn mosquitto_sub_members_of_a_shared_subscription_split_the_messages() {
    let app = TestApp::spawn().await;
    let (device, (user, pass)) = device_and_registry_client(&app).await;
    let port = app.mqtt.port().to_string();
    let mut members = Vec::new();
    for (name, version) in [("m5", "mqttv5"), ("m311", "mqttv311")] {
        let client_id = format!("{user}:{name}");
        let member = MosquittoSub::start(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-q",
            "1",
            "-i",
            &client_id,
            "-u",
            &user,
            "-P",
            &pass,
            "-t",
            "$share/workers/$devices/+/events/#",
            "-t",
            "$devices/+/state/marker",
        ])
        .await;
        assert_eq!(member.granted, "1, 1", "{name}: {}", member.output());
        members.push((name, member));
    }

    let mut publisher = app.mqtt_v311(&device).await.expect("device");
    let events = format!("$devices/{}/events/reading", device.id);
    let sent: Vec<String> = (0..10).map(|n| format!("reading-{n}")).collect();
    for payload in &sent {
        publisher
            .client
            .publish(&events, rumqttc::QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("publish");
        publisher.puback().await;
    }
    let marker = format!("$devices/{}/state/marker", device.id);
    publisher
        .client
        .publish(&marker, rumqttc::QoS::AtLeastOnce, false, "end")
        .await
        .expect("publish");
    publisher.puback().await;

    let mut received = Vec::new();
    for (name, member) in &mut members {
        let mut share = Vec::new();
        loop {
            let Some((topic, payload)) = member.next_message(WAIT).await else {
                panic!("{name}: no marker; output:\n{}", member.output());
            };
            if topic == marker {
                break;
            }
            assert_eq!(topic, events, "{name}");
            share.push(payload);
        }
        assert!(
            !share.is_empty(),
            "{name} got no share: {}",
            member.output()
        );
        received.extend(share);
    }
    received.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(received, expected, "each message to exactly one member");
    app.stop().await;
}

/// MQTT 3.1 (protocol name MQIsdp, level 3) on both ends: `mosquitto_sub -V mqttv31`
/// receives what `mosquitto_pub -V mqttv31` publishes at QoS 0, 1 and 2 (granted QoS 2),
/// and a later 3.1 subscriber gets the retained message with its RETAIN flag.
#[tokio::test]
async fn mosquitto_mqttv31_publish_and_subscribe_round_trip() {
    let app = TestApp::spawn().await;
    let (device, (user, pass)) = device_and_registry_client(&app).await;
    let port = app.mqtt.port().to_string();
    let client_id = format!("{user}:v31");
    let mut subscriber = MosquittoSub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "mqttv31",
        "-q",
        "2",
        "-i",
        &client_id,
        "-u",
        &user,
        "-P",
        &pass,
        "-t",
        "$devices/+/events/#",
    ])
    .await;
    assert_eq!(subscriber.granted, "2", "{}", subscriber.output());

    let events = format!("$devices/{}/events/legacy", device.id);
    let credentials = ["-i", &device.id, "-u", &device.id, "-P", &device.password];
    for qos in ["0", "1", "2"] {
        let payload = format!("qos {qos} over 3.1");
        let mut args = vec!["-V", "mqttv31", "-q", qos, "-t", &events, "-m", &payload];
        args.extend(credentials);
        mosquitto_pub(&app, &args).await;
        let got = subscriber.next_message(WAIT).await;
        assert_eq!(
            got,
            Some((events.clone(), payload.clone())),
            "{}",
            subscriber.output()
        );
    }

    let state = format!("$devices/{}/state/firmware", device.id);
    let mut args = vec![
        "-V", "mqttv31", "-q", "1", "-r", "-t", &state, "-m", "3.1.0",
    ];
    args.extend(credentials);
    mosquitto_pub(&app, &args).await;
    // -R would drop messages with RETAIN set: this one must have it, so only -C 1.
    let late_id = format!("{user}:late");
    let output = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv31", "-q", "1"])
        .args(["-i", &late_id, "-u", &user, "-P", &pass])
        .args(["-t", "$devices/+/state/#", "-C", "1", "-W", "10"])
        .args(["-F", "%r %t %p"])
        .output()
        .await
        .expect("mosquitto_sub is installed");
    assert!(
        output.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("1 {state} 3.1.0"),
        "the retained message, RETAIN set (MQTT-3.3.1-8 in 3.1.1)"
    );
    app.stop().await;
}
