//! Policies (SPEC §4.2, §6.2): the API, and their effect on live MQTT sessions.

use iotcore_codec::{Packet, ProtocolVersion, ReasonCode};
use iotcore_e2e::raw::Raw;
use iotcore_e2e::{Device, TestApp};
use serde_json::{json, Value};
use std::time::Duration;

/// How long a change may take to reach the broker before a test gives up (SPEC: 1 s;
/// generous for a busy machine, and never asserted as a duration).
const PROPAGATION: Duration = Duration::from_secs(10);

async fn create_policy(app: &TestApp, name: &str, statements: Value) -> String {
    let body = app
        .ok(
            "POST",
            "/v1/policies",
            json!({ "name": name, "statements": statements }),
        )
        .await;
    body["id"].as_str().unwrap_or_default().to_owned()
}

/// Subscribes until the answer is `want` (a policy change is on its way).
async fn subscribe_until(mqtt: &mut Raw, filter: &str, want: ReasonCode) {
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        let got = mqtt.subscribe_qos1(filter).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{filter}: still {got:?}, never {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The topics of the PUBLISH packets received until one on `marker` arrives.
async fn received_until(mqtt: &mut Raw, marker: &str) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        match mqtt.packet().await {
            Some(Packet::Publish(publish)) => {
                if let Some(id) = publish.packet_id {
                    mqtt.send(&Packet::PubAck(iotcore_codec::PubAck {
                        packet_id: id,
                        reason: ReasonCode::SUCCESS,
                        properties: Default::default(),
                    }))
                    .await;
                }
                if publish.topic == marker {
                    return topics;
                }
                topics.push(publish.topic);
            }
            Some(_) => continue,
            None => panic!("connection closed before {marker}"),
        }
    }
}

async fn two_devices(app: &TestApp) -> (String, Device, Device) {
    let registry = app.create_registry(&app.token, "fleet").await;
    let publisher = app.create_device(&app.token, &registry, "publisher").await;
    let subscriber = app.create_device(&app.token, &registry, "subscriber").await;
    (registry, publisher, subscriber)
}

#[tokio::test]
async fn attached_policy_allows_and_detaching_it_stops_a_live_subscription() {
    let app = TestApp::spawn().await;
    let (registry, publisher, subscriber) = two_devices(&app).await;
    let publish = create_policy(
        &app,
        "publish",
        json!([{"effect": "allow", "actions": ["publish"], "topics": ["fleet/${registry.id}/#"]}]),
    )
    .await;
    let subscribe = create_policy(
        &app,
        "subscribe",
        json!([{"effect": "allow", "actions": ["subscribe"], "topics": ["fleet/${registry.id}/#"]}]),
    )
    .await;
    let mut sub = Raw::connect(app.mqtt, ProtocolVersion::V5, &subscriber, 60).await;
    let mut publ = Raw::connect(app.mqtt, ProtocolVersion::V5, &publisher, 60).await;
    let topic = format!("fleet/{registry}/t");
    assert_eq!(
        sub.subscribe_qos1(&format!("fleet/{registry}/#")).await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        publ.publish_qos1(&topic, b"x").await,
        ReasonCode::NOT_AUTHORIZED
    );

    app.ok(
        "PUT",
        &format!("/v1/devices/{}/policies/{publish}", publisher.id),
        Value::Null,
    )
    .await;
    app.ok(
        "PUT",
        &format!("/v1/registries/{registry}/policies/{subscribe}"),
        Value::Null,
    )
    .await;
    // Live sessions get the new rights without reconnecting.
    subscribe_until(
        &mut sub,
        &format!("fleet/{registry}/#"),
        ReasonCode::GRANTED_QOS_1,
    )
    .await;
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    while publ.publish_qos1(&topic, b"probe").await != ReasonCode::SUCCESS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish never allowed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(publ.publish_qos1(&topic, b"one").await, ReasonCode::SUCCESS);
    let marker = format!("fleet/{registry}/marker");
    assert_eq!(publ.publish_qos1(&marker, b"m").await, ReasonCode::SUCCESS);
    let got = received_until(&mut sub, &marker).await;
    assert!(got.contains(&topic), "{got:?}");

    app.ok(
        "DELETE",
        &format!("/v1/registries/{registry}/policies/{subscribe}"),
        Value::Null,
    )
    .await;
    // Once a new subscription is refused, the old one no longer receives either.
    subscribe_until(
        &mut sub,
        &format!("fleet/{registry}/probe"),
        ReasonCode::NOT_AUTHORIZED,
    )
    .await;
    assert_eq!(publ.publish_qos1(&topic, b"two").await, ReasonCode::SUCCESS);
    // A topic the subscriber is still allowed to receive marks the end.
    let own = format!("$devices/{}/commands/end", subscriber.id);
    assert_eq!(
        sub.subscribe_qos1(&format!("$devices/{}/commands/#", subscriber.id))
            .await,
        ReasonCode::GRANTED_QOS_1
    );
    app.ok(
        "POST",
        &format!("/v1/devices/{}/commands", subscriber.id),
        json!({"subtopic": "end", "payload": "x", "qos": 1}),
    )
    .await;
    let got = received_until(&mut sub, &own).await;
    assert!(got.is_empty(), "received after the detach: {got:?}");
}

#[tokio::test]
async fn overlap_with_a_deny_is_granted_without_the_denied_topics_retained_included() {
    let app = TestApp::spawn().await;
    let (_registry, publisher, subscriber) = two_devices(&app).await;
    let policy = create_policy(
        &app,
        "fleet",
        json!([
            {"effect": "allow", "actions": ["publish", "subscribe"], "topics": ["fleet/#"]},
            {"effect": "deny", "actions": ["subscribe"], "topics": ["fleet/secret/#"]}
        ]),
    )
    .await;
    app.ok("PUT", &format!("/v1/tenant/policies/{policy}"), Value::Null)
        .await;
    let mut publ = Raw::connect(app.mqtt, ProtocolVersion::V5, &publisher, 60).await;
    for topic in ["fleet/secret/a", "fleet/open/a"] {
        assert_eq!(
            publ.publish_qos1_retained(topic, b"r").await,
            ReasonCode::SUCCESS
        );
    }
    let mut sub = Raw::connect(app.mqtt, ProtocolVersion::V5, &subscriber, 60).await;
    assert_eq!(
        sub.subscribe_qos1("fleet/secret/#").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        sub.subscribe_qos1("fleet/secret/x").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        sub.subscribe_qos1("fleet/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    for topic in ["fleet/secret/b", "fleet/open/b", "fleet/open/end"] {
        assert_eq!(publ.publish_qos1(topic, b"l").await, ReasonCode::SUCCESS);
    }
    let got = received_until(&mut sub, "fleet/open/end").await;
    assert!(got.contains(&"fleet/open/a".to_owned()), "{got:?}");
    assert!(got.contains(&"fleet/open/b".to_owned()), "{got:?}");
    assert!(
        !got.iter().any(|t| t.starts_with("fleet/secret/")),
        "{got:?}"
    );
}

#[tokio::test]
async fn variables_with_unsafe_label_values_do_not_match() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let safe = app.create_device(&app.token, &registry, "safe").await;
    let sneaky = app.create_device(&app.token, &registry, "sneaky").await;
    for (device, site) in [(&safe, "north"), (&sneaky, "#")] {
        app.ok(
            "PATCH",
            &format!("/v1/devices/{}", device.id),
            json!({"labels": {"site": site}}),
        )
        .await;
    }
    let policy = create_policy(
        &app,
        "sites",
        json!([{"effect": "allow", "actions": ["subscribe", "publish"], "topics": ["sites/${device.labels.site}"]}]),
    )
    .await;
    app.ok("PUT", &format!("/v1/tenant/policies/{policy}"), Value::Null)
        .await;
    let mut ok = Raw::connect(app.mqtt, ProtocolVersion::V5, &safe, 60).await;
    assert_eq!(
        ok.subscribe_qos1("sites/north").await,
        ReasonCode::GRANTED_QOS_1
    );
    assert_eq!(
        ok.subscribe_qos1("sites/#").await,
        ReasonCode::NOT_AUTHORIZED
    );
    let mut bad = Raw::connect(app.mqtt, ProtocolVersion::V5, &sneaky, 60).await;
    assert_eq!(
        bad.subscribe_qos1("sites/#").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        bad.subscribe_qos1("sites/north").await,
        ReasonCode::NOT_AUTHORIZED
    );
}

#[tokio::test]
async fn repeated_denied_publishes_disconnect_the_client() {
    let app = TestApp::spawn_with(&[("IOTCORE_MQTT_MAX_DENIED_PUBLISHES", "3")]).await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let mut mqtt = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    for _ in 0..2 {
        assert_eq!(
            mqtt.publish_qos1("not/mine", b"x").await,
            ReasonCode::NOT_AUTHORIZED
        );
    }
    assert_eq!(
        mqtt.publish_qos1(&format!("$devices/{}/events", device.id), b"x")
            .await,
        ReasonCode::SUCCESS
    );
    mqtt.send(&Packet::Publish(iotcore_codec::Publish {
        dup: false,
        qos: iotcore_codec::QoS::AtLeastOnce,
        retain: false,
        topic: "not/mine".into(),
        packet_id: Some(77),
        payload: bytes::Bytes::from_static(b"x"),
        properties: Default::default(),
    }))
    .await;
    match mqtt.packet().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert!(mqtt.packet().await.is_none());
}

#[tokio::test]
async fn deleted_password_is_refused_although_it_was_remembered() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    // Twice: the second CONNECT is answered from the remembered check.
    for _ in 0..2 {
        let connect = Raw::connect_packet(ProtocolVersion::V5, &device.id, &device, 60);
        let (_mqtt, connack) = Raw::handshake(app.mqtt, connect).await;
        assert!(
            matches!(connack, Some(Packet::ConnAck(ref c)) if c.code == 0),
            "{connack:?}"
        );
    }
    let passwords = app
        .ok(
            "GET",
            &format!("/v1/devices/{}/passwords", device.id),
            Value::Null,
        )
        .await;
    let id = passwords["items"][0]["id"].as_str().unwrap_or_default();
    app.ok(
        "DELETE",
        &format!("/v1/devices/{}/passwords/{id}", device.id),
        Value::Null,
    )
    .await;
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        let connect = Raw::connect_packet(ProtocolVersion::V5, &device.id, &device, 60);
        let (_mqtt, connack) = Raw::handshake(app.mqtt, connect).await;
        match connack {
            Some(Packet::ConnAck(c)) if c.code == ReasonCode::BAD_USER_NAME_OR_PASSWORD.0 => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "still accepted: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn policy_api_validates_versions_and_isolates_tenants() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let (status, broker) = app
        .call(
            "POST",
            "/v1/brokers",
            &app.token,
            Some(json!({"name": "b"})),
        )
        .await;
    assert_eq!(status, 201, "{broker}");
    let broker = broker["id"].as_str().unwrap_or_default().to_owned();
    let (_other, other_token) = app.other_tenant("other").await;

    // Validation names each bad field.
    let (status, problem) = app
        .call(
            "POST",
            "/v1/policies",
            &app.token,
            Some(json!({"name": "", "statements": [
                {"effect": "allow", "actions": [], "topics": ["a/#/b", "x/${device.name}"]}
            ]})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    for field in [
        "name",
        "statements[0].actions",
        "statements[0].topics[0]",
        "statements[0].topics[1]",
    ] {
        assert!(fields.contains(&field), "{field} in {problem}");
    }
    let (status, problem) = app
        .call(
            "POST",
            "/v1/policies",
            &app.token,
            Some(json!({"name": "p", "statements": [{"effect": "maybe", "actions": ["publish"], "topics": ["a"]}]})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let (status, _) = app
        .call(
            "POST",
            "/v1/policies",
            &app.token,
            Some(json!({"name": "p", "statements": []})),
        )
        .await;
    assert_eq!(status, 422);

    let statements =
        json!([{"effect": "allow", "actions": ["publish"], "topics": ["a/${device.id}"]}]);
    let (status, created) = app
        .call(
            "POST",
            "/v1/policies",
            &app.token,
            Some(json!({"name": "p", "statements": statements})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("pol_"));
    assert_eq!(created["statements"], statements);
    let (status, _) = app
        .call(
            "POST",
            "/v1/policies",
            &app.token,
            Some(json!({"name": "p", "statements": statements})),
        )
        .await;
    assert_eq!(status, 409);
    let list = app
        .ok("GET", "/v1/policies?name_prefix=p", Value::Null)
        .await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));

    // ETag and If-Match on PUT and DELETE.
    let response = app
        .http
        .get(format!("{}/v1/policies/{id}", app.api))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let replaced = json!({"name": "p2", "statements": [{"effect": "deny", "actions": ["subscribe"], "topics": ["#"]}]});
    let put = |tag: String| {
        app.http
            .put(format!("{}/v1/policies/{id}", app.api))
            .bearer_auth(&app.token)
            .header("If-Match", tag)
            .json(&replaced)
            .send()
    };
    assert_eq!(put(etag.clone()).await.unwrap().status(), 200);
    assert_eq!(put(etag.clone()).await.unwrap().status(), 412);
    let got = app
        .ok("GET", &format!("/v1/policies/{id}"), Value::Null)
        .await;
    assert_eq!(got["name"], "p2");

    // Attach, list and detach on every kind of target.
    for base in [
        "/v1/tenant".to_owned(),
        format!("/v1/registries/{registry}"),
        format!("/v1/devices/{}", device.id),
        format!("/v1/brokers/{broker}"),
    ] {
        let path = format!("{base}/policies/{id}");
        let (status, body) = app.call("PUT", &path, &app.token, None).await;
        assert_eq!(status, 204, "{path}: {body}");
        let (status, _) = app.call("PUT", &path, &app.token, None).await;
        assert_eq!(status, 204, "attaching again is the same");
        let attached = app
            .ok("GET", &format!("{base}/policies"), Value::Null)
            .await;
        assert_eq!(attached["items"][0]["id"], id.as_str(), "{base}");
        // Another tenant learns nothing.
        let (status, _) = app.call("PUT", &path, &other_token, None).await;
        assert_eq!(status, 404, "{path}");
        if base != "/v1/tenant" {
            let (status, _) = app
                .call("GET", &format!("{base}/policies"), &other_token, None)
                .await;
            assert_eq!(status, 404, "{base}");
        }
        let (status, _) = app.call("DELETE", &path, &other_token, None).await;
        assert_eq!(status, 404);
        let (status, _) = app.call("DELETE", &path, &app.token, None).await;
        assert_eq!(status, 204);
        let (status, _) = app.call("DELETE", &path, &app.token, None).await;
        assert_eq!(status, 404, "detached already");
    }
    let (status, body) = app
        .call("GET", "/v1/tenant/policies", &other_token, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["items"], json!([]));
    let (status, _) = app
        .call(
            "PUT",
            &format!("/v1/registries/{registry}/policies/pol_00000000000000000000"),
            &app.token,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .call("PUT", "/v1/tenant/policies/not-a-policy", &app.token, None)
        .await;
    assert_eq!(status, 400);

    // Another tenant's policy is not found anywhere.
    for (method, body) in [
        ("GET", None),
        ("PUT", Some(replaced.clone())),
        ("DELETE", None),
    ] {
        let (status, _) = app
            .call(method, &format!("/v1/policies/{id}"), &other_token, body)
            .await;
        assert_eq!(status, 404, "{method}");
    }
    // A deleted device takes its attachments with it.
    app.ok(
        "PUT",
        &format!("/v1/devices/{}/policies/{id}", device.id),
        Value::Null,
    )
    .await;
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/v1/devices/{}", device.id),
            &app.token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call("DELETE", &format!("/v1/policies/{id}"), &app.token, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call("GET", &format!("/v1/policies/{id}"), &app.token, None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_changed_label_moves_a_live_subscription() {
    let app = TestApp::spawn().await;
    let (_registry, publisher, device) = two_devices(&app).await;
    app.ok(
        "PATCH",
        &format!("/v1/devices/{}", device.id),
        json!({"labels": {"site": "north"}}),
    )
    .await;
    let sites = create_policy(
        &app,
        "sites",
        json!([{"effect": "allow", "actions": ["subscribe"], "topics": ["sites/${device.labels.site}/#"]}]),
    )
    .await;
    let publish = create_policy(
        &app,
        "publish",
        json!([{"effect": "allow", "actions": ["publish"], "topics": ["sites/#"]}]),
    )
    .await;
    app.ok("PUT", &format!("/v1/tenant/policies/{sites}"), Value::Null)
        .await;
    app.ok(
        "PUT",
        &format!("/v1/devices/{}/policies/{publish}", publisher.id),
        Value::Null,
    )
    .await;
    let mut sub = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let mut publ = Raw::connect(app.mqtt, ProtocolVersion::V5, &publisher, 60).await;
    assert_eq!(
        sub.subscribe_qos1("sites/north/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    assert_eq!(
        sub.subscribe_qos1("sites/south/#").await,
        ReasonCode::NOT_AUTHORIZED
    );

    app.ok(
        "PATCH",
        &format!("/v1/devices/{}", device.id),
        json!({"labels": {"site": "south"}}),
    )
    .await;
    subscribe_until(&mut sub, "sites/south/#", ReasonCode::GRANTED_QOS_1).await;
    for topic in ["sites/north/t", "sites/south/t", "sites/south/end"] {
        assert_eq!(publ.publish_qos1(topic, b"x").await, ReasonCode::SUCCESS);
    }
    let got = received_until(&mut sub, "sites/south/end").await;
    assert_eq!(got, vec!["sites/south/t".to_owned()]);
}

#[tokio::test]
async fn a_registry_turning_its_defaults_off_takes_them_from_live_devices() {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let mut mqtt = Raw::connect(app.mqtt, ProtocolVersion::V5, &device, 60).await;
    let events = format!("$devices/{}/events", device.id);
    assert_eq!(mqtt.publish_qos1(&events, b"x").await, ReasonCode::SUCCESS);
    app.ok(
        "PATCH",
        &format!("/v1/registries/{registry}"),
        json!({"default_policy": false}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    while mqtt.publish_qos1(&events, b"x").await != ReasonCode::NOT_AUTHORIZED {
        assert!(
            tokio::time::Instant::now() < deadline,
            "defaults never taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A policy gives back what the registry wants its devices to have.
    let policy = create_policy(
        &app,
        "events-only",
        json!([{"effect": "allow", "actions": ["publish"], "topics": ["$devices/${device.id}/events/#"]}]),
    )
    .await;
    app.ok(
        "PUT",
        &format!("/v1/registries/{registry}/policies/{policy}"),
        Value::Null,
    )
    .await;
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    while mqtt.publish_qos1(&events, b"x").await != ReasonCode::SUCCESS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        mqtt.publish_qos1(&format!("$devices/{}/state", device.id), b"x")
            .await,
        ReasonCode::NOT_AUTHORIZED
    );
}

#[tokio::test]
async fn a_virtual_broker_policy_denies_one_filter_inside_the_broker() {
    let app = TestApp::spawn().await;
    let (status, broker) = app
        .call(
            "POST",
            "/v1/brokers",
            &app.token,
            Some(json!({"name": "lab"})),
        )
        .await;
    assert_eq!(status, 201, "{broker}");
    let broker = broker["id"].as_str().unwrap_or_default().to_owned();
    let password = app
        .ok(
            "POST",
            &format!("/v1/brokers/{broker}/passwords"),
            json!({}),
        )
        .await;
    let client = Device {
        id: broker.clone(),
        registry_id: String::new(),
        password: password["password"].as_str().unwrap_or_default().to_owned(),
    };
    let policy = create_policy(
        &app,
        "suite",
        json!([{"effect": "deny", "actions": ["subscribe"], "topics": ["test/nosubscribe"]}]),
    )
    .await;
    app.ok(
        "PUT",
        &format!("/v1/brokers/{broker}/policies/{policy}"),
        Value::Null,
    )
    .await;
    let mut mqtt = Raw::connect_as(app.mqtt, ProtocolVersion::V5, "tester", &client, 60).await;
    assert_eq!(
        mqtt.subscribe_qos1("test/nosubscribe").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        mqtt.subscribe_qos1("test/#").await,
        ReasonCode::GRANTED_QOS_1
    );
    for topic in ["test/nosubscribe", "test/ok"] {
        assert_eq!(mqtt.publish_qos1(topic, b"x").await, ReasonCode::SUCCESS);
    }
    let got = received_until(&mut mqtt, "test/ok").await;
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn repeated_failures_slow_down_but_never_lock_out_the_right_password() {
    let app = TestApp::spawn_with(&[
        ("IOTCORE_MQTT_AUTH_FAILURES_BEFORE_DELAY", "2"),
        ("IOTCORE_MQTT_AUTH_FAILURE_MAX_DELAY_MS", "200"),
    ])
    .await;
    let registry = app.create_registry(&app.token, "r").await;
    let device = app.create_device(&app.token, &registry, "d").await;
    let wrong = Device {
        password: "not the password at all".into(),
        ..device.clone()
    };
    let unknown = Device {
        id: "dev_00000000000000000000".into(),
        ..wrong.clone()
    };
    for who in [&wrong, &unknown, &wrong, &unknown, &wrong] {
        let connect = Raw::connect_packet(ProtocolVersion::V5, &who.id, who, 60);
        match Raw::handshake(app.mqtt, connect).await.1 {
            // The same answer for an unknown username and a wrong password.
            Some(Packet::ConnAck(c)) => {
                assert_eq!(c.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD.0)
            }
            other => panic!("{other:?}"),
        }
    }
    let connect = Raw::connect_packet(ProtocolVersion::V5, &device.id, &device, 60);
    match Raw::handshake(app.mqtt, connect).await.1 {
        Some(Packet::ConnAck(c)) => assert_eq!(c.code, 0),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rumqttc_clients_of_3_1_1_use_a_tenant_policy_and_denied_publishes_are_acked_and_dropped() {
    let app = TestApp::spawn().await;
    let (_registry, publisher, subscriber) = two_devices(&app).await;
    let policy = create_policy(
        &app,
        "shared-space",
        json!([
            {"effect": "allow", "actions": ["publish", "subscribe"], "topics": ["space/#"]},
            {"effect": "deny", "actions": ["publish"], "topics": ["space/readonly/#"]}
        ]),
    )
    .await;
    app.ok("PUT", &format!("/v1/tenant/policies/{policy}"), Value::Null)
        .await;
    let mut sub = app.mqtt_v311(&subscriber).await.expect("connect");
    let suback = sub.subscribe("space/#", rumqttc::QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )]
    );
    let suback = sub
        .subscribe("elsewhere/#", rumqttc::QoS::AtLeastOnce)
        .await;
    assert_eq!(
        suback.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );

    let mut publ = app.mqtt_v311(&publisher).await.expect("connect");
    for topic in ["space/readonly/x", "space/open"] {
        publ.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
        // MQTT 3.1.1 cannot refuse: the denied one is acknowledged too (SPEC §4.2).
        publ.puback().await;
    }
    let got = sub
        .next_publish(iotcore_e2e::mqtt::WAIT)
        .await
        .expect("a message");
    assert_eq!(got.topic, "space/open");
}
