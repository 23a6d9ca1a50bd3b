//! Batching per rule against the real binary (SPEC §5): requests carry JSON arrays of
//! envelopes, and the at-least-once rules hold for every envelope of a batch — a 5xx
//! retries the batch whole, a 4xx dead-letters each of its messages, replay delivers them.

use iotcore_e2e::webhook::{Received, Webhook};
use iotcore_e2e::{Device, TestApp};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a test waits for something that should happen; it ends as soon as it does.
const PATIENCE: Duration = Duration::from_secs(60);

/// The envelopes of a batched request; panics when the body is not an array.
fn envelopes(received: &Received) -> Vec<Value> {
    match received.json() {
        Value::Array(items) => items,
        other => panic!("a batching rule sent something else than an array: {other}"),
    }
}

fn ids(envelopes: &[Value]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn batched_rule(app: &TestApp, url: &str, batch: Value, secret: Option<&str>) -> String {
    let mut webhook = json!({ "url": url, "batch": batch });
    if let Some(secret) = secret {
        webhook["secret"] = json!(secret);
    }
    let rule = app
        .ok(
            "POST",
            "/v1/rules",
            json!({ "name": "batched", "topic_filter": "$devices/+/events/#", "webhook": webhook }),
        )
        .await;
    assert_eq!(rule["webhook"]["batch"], batch, "{rule}");
    rule["id"].as_str().unwrap_or_default().to_owned()
}

/// Publishes `count` QoS 1 messages `{"seq": n}` without waiting between them, then waits
/// for every acknowledgement.
async fn publish(app: &TestApp, device: &Device, count: u64) {
    let mut mqtt = app.mqtt_v311(device).await.expect("device connects");
    let topic = format!("$devices/{}/events/readings", device.id);
    for seq in 0..count {
        let payload = json!({ "seq": seq }).to_string().into_bytes();
        mqtt.client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    for _ in 0..count {
        mqtt.puback().await;
    }
}

/// Polls `/metrics` until the series `series` (name and labels as rendered) reads `value`.
async fn wait_for_metric(app: &TestApp, series: &str, value: u64) {
    let expected = format!("{series} {value}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = app.metrics().await;
        if text.lines().any(|line| line == expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{expected} never appeared in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn batched_rule_delivers_every_message_once_in_signed_arrays() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    let secret = "a-shared-signing-secret";
    // The longest wait allowed: the 45 messages are queued long before any batch's wait
    // ends, so four batches leave because they are full and only the last five wait —
    // the sizes below do not depend on how fast the machine is.
    let batch = json!({ "max_messages": 10, "max_wait_ms": 10000 });
    let rule_id = batched_rule(&app, &webhook.url, batch, Some(secret)).await;

    const COUNT: u64 = 45;
    publish(&app, &device, COUNT).await;

    let mut seen_ids = Vec::new();
    let mut seqs = Vec::new();
    let mut sizes = Vec::new();
    let mut requests = 0;
    while seen_ids.len() < COUNT as usize {
        let received = webhook.next(PATIENCE).await.expect("a batch");
        requests += 1;
        assert!(received.signature_is_valid(secret), "{received:?}");
        assert!(!received.signature_is_valid("another-secret"));
        let items = envelopes(&received);
        assert!((1..=10).contains(&items.len()), "{} envelopes", items.len());
        sizes.push(items.len());
        assert_eq!(
            received.header("x-iotcore-batch-size"),
            Some(items.len().to_string().as_str())
        );
        assert!(received
            .header("idempotency-key")
            .is_some_and(|k| k.starts_with("bat_")));
        assert_eq!(received.header("x-iotcore-rule-id"), Some(rule_id.as_str()));
        for item in &items {
            assert_eq!(item["rule_id"], rule_id.as_str());
            seqs.push(item["payload"]["seq"].as_u64().unwrap_or(u64::MAX));
        }
        seen_ids.extend(ids(&items));
    }
    let distinct: BTreeSet<&String> = seen_ids.iter().collect();
    assert_eq!(distinct.len(), seen_ids.len(), "no duplicates");
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..COUNT).collect::<Vec<_>>(),
        "exactly the published ones"
    );
    assert!(
        requests < COUNT,
        "{requests} requests: messages published together travel together"
    );
    assert_eq!(
        sizes,
        [10, 10, 10, 10, 5],
        "full batches leave when full, the rest when its wait is over"
    );
    assert!(webhook.nothing_within(Duration::from_millis(1000)).await);
    let stats = app
        .wait_for_rule_stats(&rule_id, |s| s["delivered"] == COUNT)
        .await;
    assert_eq!(stats["queue_depth"], 0);
    app.stop().await;
}

#[tokio::test]
async fn batch_answered_5xx_is_retried_whole() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    webhook.answer_with(&[503]);
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    // Five messages fill the batch exactly: it goes out when full, not when the wait ends.
    let batch = json!({ "max_messages": 5, "max_wait_ms": 10000 });
    let rule_id = batched_rule(&app, &webhook.url, batch, None).await;
    publish(&app, &device, 5).await;

    let failed = webhook.next(PATIENCE).await.expect("the first attempt");
    assert_eq!(failed.status, 503);
    let failed_ids = ids(&envelopes(&failed));
    assert_eq!(failed_ids.len(), 5);
    let retried = webhook.next(PATIENCE).await.expect("the retry");
    assert_eq!(retried.status, 200);
    assert_eq!(ids(&envelopes(&retried)), failed_ids, "the same batch");
    assert_eq!(
        retried.header("idempotency-key"),
        failed.header("idempotency-key")
    );
    let stats = app
        .wait_for_rule_stats(&rule_id, |s| s["delivered"] == 5)
        .await;
    assert_eq!(stats["retried"], 5);
    assert_eq!(stats["dead_lettered"], 0);
    assert_eq!(stats["queue_depth"], 0);
    // The metrics count messages, not requests: one retried and one delivered batch of 5.
    let t = &app.tenant_id;
    let deliveries = "iotcore_rules_deliveries_total";
    wait_for_metric(
        &app,
        &format!("{deliveries}{{tenant=\"{t}\",outcome=\"retry\"}}"),
        5,
    )
    .await;
    wait_for_metric(
        &app,
        &format!("{deliveries}{{tenant=\"{t}\",outcome=\"success\"}}"),
        5,
    )
    .await;
    assert!(webhook.nothing_within(Duration::from_millis(1000)).await);
    app.stop().await;
}

#[tokio::test]
async fn rejected_batch_dead_letters_each_message_and_replay_delivers_them() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    webhook.answer_with(&[422]);
    let registry = app.create_registry(&app.token, "meters").await;
    let device = app.create_device(&app.token, &registry, "m-1").await;
    let batch = json!({ "max_messages": 4, "max_wait_ms": 10000 });
    let rule_id = batched_rule(&app, &webhook.url, batch, None).await;
    publish(&app, &device, 4).await;

    let refused = webhook.next(PATIENCE).await.expect("the first attempt");
    assert_eq!(refused.status, 422);
    let refused_ids: BTreeSet<String> = ids(&envelopes(&refused)).into_iter().collect();
    assert_eq!(refused_ids.len(), 4);
    let stats = app
        .wait_for_rule_stats(&rule_id, |s| s["dead_letters"] == 4)
        .await;
    assert_eq!(stats["dead_lettered"], 4);
    assert_eq!(stats["last_error"], "HTTP 422 Unprocessable Entity");
    let t = &app.tenant_id;
    let outcome =
        format!("iotcore_rules_deliveries_total{{tenant=\"{t}\",outcome=\"dead_letter\"}}");
    wait_for_metric(&app, &outcome, 4).await;
    wait_for_metric(
        &app,
        &format!("iotcore_rules_dead_letters_total{{tenant=\"{t}\"}}"),
        4,
    )
    .await;
    assert!(
        webhook.nothing_within(Duration::from_millis(1000)).await,
        "a 4xx is not retried"
    );
    let letters = app
        .ok(
            "GET",
            &format!("/v1/rules/{rule_id}/dead-letters"),
            Value::Null,
        )
        .await;
    let dead: BTreeSet<String> = letters["items"]
        .as_array()
        .map(|items| ids(items).into_iter().collect())
        .unwrap_or_default();
    assert_eq!(dead, refused_ids);

    let replayed = app
        .ok(
            "POST",
            &format!("/v1/rules/{rule_id}/dead-letters/replay"),
            json!({}),
        )
        .await;
    assert_eq!(replayed["replayed"], 4);
    let mut delivered = BTreeSet::new();
    while delivered.len() < 4 {
        let received = webhook.next(PATIENCE).await.expect("the replayed messages");
        assert_eq!(received.status, 200);
        delivered.extend(ids(&envelopes(&received)));
    }
    assert_eq!(delivered, refused_ids);
    let stats = app
        .wait_for_rule_stats(&rule_id, |s| s["delivered"] == 4)
        .await;
    assert_eq!(stats["dead_letters"], 0);
    assert_eq!(stats["queue_depth"], 0);
    app.stop().await;
}

#[tokio::test]
async fn batch_settings_are_validated_shown_and_changed() {
    let app = TestApp::spawn().await;
    let url = "http://127.0.0.1:9/hook";
    let body = json!({ "name": "b", "topic_filter": "#",
        "webhook": { "url": url, "batch": { "max_messages": 0, "max_wait_ms": 60000 } } });
    let (status, problem) = app.call("POST", "/v1/rules", &app.token, Some(body)).await;
    assert_eq!(status, 422, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        fields,
        ["webhook.batch.max_messages", "webhook.batch.max_wait_ms"]
    );

    let rule_id = app.create_rule(&app.token, "plain", "#", url).await;
    let path = format!("/v1/rules/{rule_id}");
    let rule = app.ok("GET", &path, Value::Null).await;
    assert_eq!(
        rule["webhook"]["batch"],
        json!({ "max_messages": 1, "max_wait_ms": 0 })
    );
    let changed = app
        .ok(
            "PATCH",
            &path,
            json!({ "webhook": { "batch": { "max_messages": 25 } } }),
        )
        .await;
    assert_eq!(
        changed["webhook"]["batch"],
        json!({ "max_messages": 25, "max_wait_ms": 0 })
    );
    let changed = app
        .ok(
            "PATCH",
            &path,
            json!({ "webhook": { "batch": { "max_wait_ms": 250 } } }),
        )
        .await;
    assert_eq!(
        changed["webhook"]["batch"],
        json!({ "max_messages": 25, "max_wait_ms": 250 })
    );
    let (status, problem) = app
        .call(
            "PATCH",
            &path,
            &app.token,
            Some(json!({ "webhook": { "batch": { "max_messages": 101 } } })),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "webhook.batch.max_messages");
    // Only batching is changeable on a webhook; anything else is refused, not ignored.
    let (status, _) = app
        .call(
            "PATCH",
            &path,
            &app.token,
            Some(json!({ "webhook": { "url": "http://127.0.0.1:10/x" } })),
        )
        .await;
    assert!((400..500).contains(&status), "{status}");
    let rule = app.ok("GET", &path, Value::Null).await;
    assert_eq!(rule["webhook"]["url"], url);
    assert_eq!(rule["webhook"]["batch"]["max_messages"], 25);
    app.stop().await;
}
