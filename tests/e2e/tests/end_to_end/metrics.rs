//! Prometheus metrics (SPEC §7.1): `/metrics` on the API port lists the series of the
//! operations contract, and they move when devices connect, publish and receive, when a
//! CONNECT is refused and when a rule delivers to a webhook.

use iotcore_e2e::mqtt::{connect_v311, WAIT};
use iotcore_e2e::webhook::Webhook;
use iotcore_e2e::TestApp;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a test waits for a series to reach a value; it ends as soon as it does.
const PATIENCE: Duration = Duration::from_secs(30);

/// One scrape: each series (name and sorted `label="value"` pairs) and its value, and the
/// families declared with `# TYPE`.
#[derive(Debug)]
struct Scrape(BTreeMap<String, f64>, BTreeSet<String>);

impl Scrape {
    async fn of(app: &TestApp) -> Scrape {
        let response = app
            .http
            .get(format!("{}/metrics", app.api))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.expect("body");
        let mut series = BTreeMap::new();
        let families = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_owned)
            .collect();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ').expect("`series value` lines");
            let value: f64 = value.parse().expect("a number");
            series.insert(normalize(key), value);
        }
        Scrape(series, families)
    }

    /// The value of `name` with exactly `labels`; 0 when the series does not exist yet.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(&key(name, labels)).copied().unwrap_or_default()
    }

    /// Whether the family `name` is declared.
    fn has_family(&self, name: &str) -> bool {
        self.1.contains(name)
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut pairs: Vec<String> = labels
        .iter()
        .map(|(label, value)| format!("{label}=\"{value}\""))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", pairs.join(","))
    }
}

/// `name{b="2",a="1"}` → `name{a="1",b="2"}` (label values here hold no commas).
fn normalize(series: &str) -> String {
    match series.split_once('{') {
        None => series.to_owned(),
        Some((name, labels)) => {
            let mut pairs: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
            pairs.sort();
            format!("{name}{{{}}}", pairs.join(","))
        }
    }
}

/// Scrapes until `done` holds, and returns that scrape.
async fn wait_for(app: &TestApp, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let scrape = Scrape::of(app).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened: {scrape:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn metrics_move_when_devices_connect_publish_receive_and_rules_deliver() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant_id.clone();
    let t = tenant.as_str();
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    app.create_rule(&app.token, "all", "$devices/+/events/#", &webhook.url)
        .await;

    let before = Scrape::of(&app).await;
    for family in [
        "iotcore_mqtt_connections",
        "iotcore_rules_delivery_seconds",
        "iotcore_rules_queue_depth",
        "iotcore_mqtt_dropped_total",
        "iotcore_db_pool_connections",
        "iotcore_http_requests_total",
    ] {
        assert!(before.has_family(family), "{family} missing: {before:#?}");
    }
    assert_eq!(
        before.value(
            "iotcore_mqtt_connections",
            &[("tenant", t), ("transport", "tcp")]
        ),
        0.0
    );
    let pool = before.value("iotcore_db_pool_connections", &[("state", "idle")])
        + before.value("iotcore_db_pool_connections", &[("state", "in_use")]);
    assert!(pool >= 1.0, "the pool has connections: {before:#?}");
    // Route templates, never raw paths with ids.
    assert!(
        before.value(
            "iotcore_http_requests_total",
            &[("route", "/v1/rules"), ("status", "201")]
        ) >= 1.0
    );
    let create_device = [("route", "/v1/registries/{id}/devices"), ("status", "201")];
    assert!(
        before.value("iotcore_http_requests_total", &create_device) >= 1.0,
        "{before:#?}"
    );
    assert!(
        !before.0.keys().any(|k| k.contains(&registry)),
        "a raw path became a label: {before:#?}"
    );

    // A wrong password: one refused CONNECT and one authentication failure.
    let refused = connect_v311(app.mqtt, &device.id, &device.id, "not-the-password").await;
    assert!(refused.is_err());
    let bad_password = [("reason", "bad_password")];
    let bad_credentials = [("result", "bad_credentials")];
    wait_for(&app, "counting the refused CONNECT", |s| {
        s.value("iotcore_mqtt_auth_failures_total", &bad_password)
            > before.value("iotcore_mqtt_auth_failures_total", &bad_password)
            && s.value("iotcore_mqtt_connects_total", &bad_credentials)
                > before.value("iotcore_mqtt_connects_total", &bad_credentials)
    })
    .await;

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    let commands = format!("$devices/{}/commands/#", device.id);
    mqtt.subscribe(&commands, rumqttc::QoS::AtLeastOnce).await;
    let topic = format!("$devices/{}/events/reading", device.id);
    for n in 0..3 {
        let payload = json!({ "n": n }).to_string();
        mqtt.client
            .publish(
                &topic,
                rumqttc::QoS::AtLeastOnce,
                n == 2,
                payload.into_bytes(),
            )
            .await
            .expect("publish");
        mqtt.puback().await;
    }
    let body = json!({ "subtopic": "reboot", "payload": "now", "qos": 0 });
    let (status, answer) = app
        .call(
            "POST",
            &format!("/v1/devices/{}/commands", device.id),
            &app.token,
            Some(body),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert!(
        mqtt.next_publish(WAIT).await.is_some(),
        "the command arrives"
    );
    for _ in 0..3 {
        webhook
            .next(WAIT)
            .await
            .expect("the webhook receives each reading");
    }

    let tenant_tcp = [("tenant", t), ("transport", "tcp")];
    let success = [("tenant", t), ("outcome", "success")];
    let after = wait_for(&app, "counting the traffic and the deliveries", |s| {
        s.value("iotcore_rules_deliveries_total", &success) >= 3.0
            && s.value(
                "iotcore_mqtt_messages_out_total",
                &[("tenant", t), ("qos", "0")],
            ) >= 1.0
    })
    .await;
    assert_eq!(
        after.value("iotcore_mqtt_connections", &tenant_tcp),
        1.0,
        "{after:#?}"
    );
    assert_eq!(
        after.value(
            "iotcore_mqtt_messages_in_total",
            &[("tenant", t), ("qos", "1")]
        ),
        3.0
    );
    assert_eq!(
        after.value("iotcore_mqtt_subscriptions", &[("tenant", t)]),
        1.0
    );
    assert_eq!(
        after.value("iotcore_mqtt_retained_messages", &[("tenant", t)]),
        1.0
    );
    assert!(after.value("iotcore_mqtt_bytes_in_total", &[("tenant", t)]) > 0.0);
    assert!(after.value("iotcore_mqtt_bytes_out_total", &[("tenant", t)]) > 0.0);
    assert!(
        after.value("iotcore_rules_delivery_seconds_count", &[])
            >= before.value("iotcore_rules_delivery_seconds_count", &[]) + 3.0
    );
    assert_eq!(
        after.value("iotcore_rules_dead_letters_total", &[("tenant", t)]),
        0.0
    );
    assert!(
        after.value(
            "iotcore_http_requests_total",
            &[("route", "/v1/devices/{id}/commands"), ("status", "202")]
        ) >= 1.0,
        "{after:#?}"
    );
    // Topics, client ids and device ids never become label values.
    assert!(
        !after.0.keys().any(|k| k.contains(&device.id)),
        "{after:#?}"
    );

    // Disconnecting gives the connection back; a clean session's subscription goes too.
    mqtt.client.disconnect().await.expect("disconnect");
    wait_for(&app, "the connection closing", |s| {
        s.value("iotcore_mqtt_connections", &tenant_tcp) == 0.0
            && s.value("iotcore_mqtt_subscriptions", &[("tenant", t)]) == 0.0
    })
    .await;
    app.stop().await;
}
