//! MQTT 5 topic aliases from the broker to clients that accept them (MQTT 5 §3.3.2.3.4).

use iotcore_codec::{Packet, ProtocolVersion};
use iotcore_e2e::mqtt::{connect_v5_with, options_v5, WAIT};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};
use std::collections::HashMap;

/// Publishes `topics` (suffixes of the device's events topic) at QoS 1, in order.
async fn publish_all(app: &TestApp, device: &Device, topics: &[&str]) -> Vec<String> {
    let mut publisher = app.mqtt_v311(device).await.expect("publisher");
    let mut full = Vec::new();
    for topic in topics {
        let topic = format!("$devices/{}/events/{topic}", device.id);
        publisher
            .client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, false, "p")
            .await
            .expect("publish");
        publisher.puback().await;
        full.push(topic);
    }
    full
}

/// MQTT-3.1.2-26/27 and MQTT-3.3.2-12: the broker sends a topic with a new alias the first
/// time and the alias with an empty topic afterwards, never an alias above the client's
/// Topic Alias Maximum; a client that announced none gets full topics only.
#[tokio::test]
async fn the_broker_sends_topic_aliases_within_the_client_maximum() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, password) = app.create_registry_password(&app.token, &registry).await;
    let backend = Device {
        id: user.clone(),
        registry_id: registry.clone(),
        password,
    };
    let mut connect = Raw::connect_packet(
        ProtocolVersion::V5,
        &format!("{user}:aliases"),
        &backend,
        60,
    );
    connect.properties.topic_alias_maximum = Some(2);
    let (mut aliased, connack) = Raw::handshake(app.mqtt, connect).await;
    assert!(matches!(connack, Some(Packet::ConnAck(c)) if c.code == 0));
    let mut plain = Raw::connect_as(
        app.mqtt,
        ProtocolVersion::V5,
        &format!("{user}:plain"),
        &backend,
        60,
    )
    .await;
    for raw in [&mut aliased, &mut plain] {
        assert_eq!(
            raw.subscribe_qos1("$devices/+/events/#").await.0,
            1,
            "SUBACK"
        );
    }
    let sent = publish_all(&app, &device, &["a", "a", "b", "c", "a", "a", "b"]).await;

    // The aliased client resolves topics the way MQTT 5 tells it to.
    let mut known: HashMap<u16, String> = HashMap::new();
    let mut received = Vec::new();
    let mut empty_topics = 0;
    while received.len() < sent.len() {
        let Some(Packet::Publish(publish)) = aliased.packet().await else {
            continue;
        };
        let topic = match publish.properties.topic_alias {
            Some(alias) => {
                assert!(
                    (1..=2).contains(&alias),
                    "alias {alias} above the maximum 2"
                );
                if publish.topic.is_empty() {
                    empty_topics += 1;
                    known.get(&alias).cloned().expect("an alias sent before")
                } else {
                    known.insert(alias, publish.topic.clone());
                    publish.topic.clone()
                }
            }
            None => publish.topic.clone(),
        };
        received.push(topic);
    }
    assert_eq!(received, sent);
    assert!(
        empty_topics >= 2,
        "repeated topics go by alias alone ({empty_topics} did)"
    );

    let mut seen = 0;
    while seen < sent.len() {
        match plain.packet().await {
            Some(Packet::Publish(publish)) => {
                assert_eq!(publish.properties.topic_alias, None, "MQTT-3.1.2-27");
                assert_eq!(publish.topic, sent[seen]);
                seen += 1;
            }
            Some(_) => continue,
            None => panic!("closed"),
        }
    }
    app.stop().await;
}

/// rumqttc v5 with a Topic Alias Maximum receives every message on its right topic.
#[tokio::test]
async fn rumqttc_v5_resolves_the_aliases_the_broker_sends() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (user, password) = app.create_registry_password(&app.token, &registry).await;
    let mut options = options_v5(app.mqtt, &format!("{user}:rumqttc"), &user, &password);
    options.set_topic_alias_max(Some(1));
    let mut subscriber = connect_v5_with(options).await.expect("connect");
    subscriber
        .subscribe(
            "$devices/+/events/#",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await;
    let sent = publish_all(&app, &device, &["x", "x", "y", "x", "y", "y"]).await;
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let publish = subscriber
            .next_publish(WAIT)
            .await
            .expect("every message arrives");
        received.push(String::from_utf8_lossy(&publish.topic).into_owned());
    }
    assert_eq!(received, sent);
    app.stop().await;
}
