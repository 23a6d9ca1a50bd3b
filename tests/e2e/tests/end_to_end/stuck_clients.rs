//! A client that stops reading (its TCP receive window full, the broker's writes to it
//! blocked) cannot hold its connection: a session takeover ends it, `mqtt.write_timeout_secs`
//! closes it as a network loss (its will is published), and nobody else notices.
//! Inside a virtual broker, where client ids and topics are free.

use crate::sessions::next_publish;
use crate::virtual_brokers::create_broker;
use iotcore_codec::{
    Connect, Packet, Properties, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscriptionOptions,
    Will,
};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};
use std::time::Duration;

/// Messages queued towards one connection in these tests: small, so that a blocked
/// connection fills its queue soon after its socket.
const QUEUE: &str = "8";
/// The payload of one flood message; the socket buffers of a loopback connection hold a few
/// megabytes.
const PAYLOAD: usize = 60 * 1024;
/// The most flood messages a test sends before it gives up on blocking the broker's writes
/// (some 120 MB; a blocked connection is seen after a few megabytes).
const MAX_FLOOD: usize = 2000;
/// How long a test waits for an event that a blocked write must not prevent; it goes on as
/// soon as the event happens.
const PATIENCE: Duration = Duration::from_secs(60);

async fn broker_credential(app: &TestApp) -> Device {
    let (id, password) = create_broker(app, "stuck").await;
    Device {
        id,
        registry_id: String::new(),
        password,
    }
}

/// A CONNECT for `client_id` with a session of 300 s and a will on `status/{client_id}`.
fn connect_packet(vb: &Device, client_id: &str, clean_start: bool) -> Connect {
    let mut connect = Raw::connect_packet(ProtocolVersion::V5, client_id, vb, 0);
    connect.clean_start = clean_start;
    connect.properties.session_expiry_interval = Some(300);
    connect.will = Some(Will {
        topic: format!("status/{client_id}"),
        payload: "lost".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    connect
}

async fn connected(app: &TestApp, connect: Connect) -> (Raw, bool) {
    match Raw::handshake(app.mqtt, connect).await {
        (raw, Some(Packet::ConnAck(ack))) if ack.code == 0 => (raw, ack.session_present),
        (_, other) => panic!("CONNECT refused: {other:?}"),
    }
}

/// Subscribes `raw` to `filter` at QoS 0 (no in-flight window: only the socket holds the
/// broker back) and waits for the SUBACK.
async fn subscribe_qos0(raw: &mut Raw, filter: &str) {
    let options = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    };
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(filter.to_owned(), options)],
        properties: Properties::default(),
    }))
    .await;
    match raw.packet().await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_0]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publishes large messages to `flood/x` until the broker drops some for a full queue:
/// the only subscriber's connection no longer takes messages from its queue, because its
/// write to the socket is blocked. Returns how many were published.
async fn flood_until_blocked(app: &TestApp, publisher: &mut Raw) -> usize {
    let series = format!(
        "iotcore_mqtt_dropped_total{{tenant=\"{}\",reason=\"queue_full\"}}",
        app.tenant_id
    );
    let payload = vec![b'x'; PAYLOAD];
    for sent in 1..=MAX_FLOOD {
        assert_eq!(
            publisher.publish_qos1("flood/x", &payload).await,
            ReasonCode::SUCCESS,
            "the publisher is not held back by a subscriber that does not read"
        );
        if sent % 10 == 0 && app.metric(&series).await > 0.0 {
            return sent;
        }
    }
    panic!("{MAX_FLOOD} messages of {PAYLOAD} bytes never blocked the subscriber's socket");
}

/// Reads what the broker wrote to `raw` until it closes the connection; panics when it
/// neither writes nor closes for the harness's wait.
async fn drain_until_closed(raw: &mut Raw) {
    while raw.packet().await.is_some() {}
}

/// Waits for a PUBLISH on `topic`, skipping others.
async fn publish_on(raw: &mut Raw, topic: &str) -> iotcore_codec::Publish {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let publish = next_publish(raw).await;
            if publish.topic == topic {
                return publish;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no PUBLISH on {topic}"))
}

/// A takeover ends a connection whose writes are blocked: the new connection gets its
/// CONNACK with the session (MQTT-3.1.4-3), the old socket is closed, and meanwhile other
/// clients are served as usual.
#[tokio::test]
async fn a_takeover_ends_a_connection_blocked_on_a_client_that_does_not_read() {
    let app = TestApp::spawn_with(&[
        ("IOTCORE_MQTT_OUTBOUND_QUEUE", QUEUE),
        // Nothing but the takeover may end the stuck connection here.
        ("IOTCORE_MQTT_WRITE_TIMEOUT_SECS", "3600"),
    ])
    .await;
    let vb = broker_credential(&app).await;
    let (mut stuck, present) = connected(&app, connect_packet(&vb, "stuck", true)).await;
    assert!(!present);
    subscribe_qos0(&mut stuck, "flood/#").await;
    let mut watcher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "watcher", &vb, 0).await;
    assert_eq!(
        watcher.subscribe_qos1("status/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    let mut publisher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "pub", &vb, 0).await;
    flood_until_blocked(&app, &mut publisher).await;

    // Other clients are served while one connection waits on its socket.
    assert_eq!(
        publisher.publish_qos1("status/alive", b"yes").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish_on(&mut watcher, "status/alive").await.payload,
        &b"yes"[..]
    );

    let (mut successor, present) = tokio::time::timeout(
        PATIENCE,
        connected(&app, connect_packet(&vb, "stuck", false)),
    )
    .await
    .expect("the takeover is answered");
    assert!(present, "the session of the stuck connection is taken over");
    drain_until_closed(&mut stuck).await;

    // The session goes on in the new connection: its subscription delivers.
    assert_eq!(
        publisher.publish_qos1("flood/y", b"after").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish_on(&mut successor, "flood/y").await.payload,
        &b"after"[..]
    );
    // MQTT-3.1.4-3: the will of the connection taken over is published (it has no delay).
    assert_eq!(
        publish_on(&mut watcher, "status/stuck").await.payload,
        &b"lost"[..]
    );
    let taken_over = format!(
        "iotcore_mqtt_disconnects_total{{tenant=\"{}\",reason=\"session_taken_over\"}}",
        app.tenant_id
    );
    assert_eq!(app.metric(&taken_over).await, 1.0);
    app.stop().await;
}

/// `mqtt.write_timeout_secs`: a connection whose write the client takes nothing of for that
/// long is closed as on a network loss, its will is published and the close is counted;
/// other clients are not affected.
#[tokio::test]
async fn a_client_that_does_not_read_is_closed_after_the_write_timeout_and_its_will_sent() {
    let app = TestApp::spawn_with(&[
        ("IOTCORE_MQTT_OUTBOUND_QUEUE", QUEUE),
        ("IOTCORE_MQTT_WRITE_TIMEOUT_SECS", "2"),
    ])
    .await;
    let vb = broker_credential(&app).await;
    let mut watcher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "watcher", &vb, 0).await;
    assert_eq!(
        watcher.subscribe_qos1("status/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    let (mut stuck, _) = connected(&app, connect_packet(&vb, "stuck", true)).await;
    subscribe_qos0(&mut stuck, "flood/#").await;
    let mut publisher = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "pub", &vb, 0).await;
    flood_until_blocked(&app, &mut publisher).await;

    let will = publish_on(&mut watcher, "status/stuck").await;
    assert_eq!(will.payload, &b"lost"[..]);
    drain_until_closed(&mut stuck).await;
    let timeouts = format!(
        "iotcore_mqtt_disconnects_total{{tenant=\"{}\",reason=\"write_timeout\"}}",
        app.tenant_id
    );
    assert_eq!(app.metric(&timeouts).await, 1.0);

    // The publisher and the watcher were never disturbed.
    assert_eq!(
        publisher.publish_qos1("status/after", b"ok").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish_on(&mut watcher, "status/after").await.payload,
        &b"ok"[..]
    );
    app.stop().await;
}
