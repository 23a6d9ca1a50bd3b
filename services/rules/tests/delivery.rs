//! The rules service against a real PostgreSQL database and real HTTP webhooks (SPEC §5).

mod harness;

use anyhow::{ensure, Result};
use base64::Engine;
use harness::{eventually, message, queued, rule, stats, tenant, Reply, RuleSpec, TestDb, Webhook};
use hmac::{Hmac, Mac};
use iotcore_rules::RulesConfig;
use serde_json::json;
use sha2::Sha256;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn failed_attempts_are_retried_with_one_message_id_and_identical_bodies() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let mut hook = Webhook::start(|n| {
        if n < 2 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    })
    .await?;
    let t = tenant(store).await?;
    let rule_id = rule(store, &t, RuleSpec::to(&hook.url)).await?;
    let msg = message(&t, &rule_id, br#"{"celsius": 31.5, "tags": ["a", "b"]}"#);
    store.enqueue_deliveries(std::slice::from_ref(&msg)).await?;
    let service = harness::start(store, harness::config());

    let attempts = [hook.next().await?, hook.next().await?, hook.next().await?];
    for received in &attempts {
        assert_eq!(
            received.header("x-iotcore-message-id"),
            Some(msg.id.as_str())
        );
        assert_eq!(received.header("idempotency-key"), Some(msg.id.as_str()));
        assert_eq!(received.body, attempts[0].body);
    }
    let envelope = attempts[0].json()?;
    assert_eq!(
        envelope,
        json!({
            "id": msg.id.as_str(),
            "rule_id": rule_id.as_str(),
            "tenant_id": t.id.as_str(),
            "registry_id": t.registry.as_str(),
            "device_id": msg.device_id.as_ref().map(|d| d.as_str()),
            "topic": "$devices/d1/events/temperature",
            "qos": 1,
            "retain": false,
            "received_at": msg.received_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            "payload": {"celsius": 31.5, "tags": ["a", "b"]},
            "content_type": "application/json",
            "user_properties": [["unit", "C"], ["unit", "K"]],
        })
    );

    let counters = eventually("the delivery to be recorded", || async {
        Ok(stats(store, &rule_id).await?.filter(|s| s.0 == 1))
    })
    .await?;
    assert_eq!((counters.0, counters.1, counters.2), (1, 2, 0));
    assert_eq!(
        counters.3.as_deref(),
        Some("HTTP 500 Internal Server Error")
    );
    assert_eq!(queued(store, &rule_id).await?, 0);
    assert_eq!(hook.count(), 3);

    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn binary_payload_is_sent_as_base64_with_the_rule_headers() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let mut hook = Webhook::start(|_| Reply::Status(204)).await?;
    let t = tenant(store).await?;
    let mut spec = RuleSpec::to(&hook.url);
    // The rule's own headers are sent, but cannot override the service's.
    spec.headers = json!({"Authorization": "Bearer abc", "X-Iotcore-Message-Id": "forged"});
    let rule_id = rule(store, &t, spec).await?;
    let payload = b"\x00\x01\xfenot json";
    let msg = message(&t, &rule_id, payload);
    store.enqueue_deliveries(std::slice::from_ref(&msg)).await?;
    let service = harness::start(store, harness::config());

    let received = hook.next().await?;
    let envelope = received.json()?;
    assert!(envelope.get("payload").is_none());
    let encoded = envelope["payload_base64"].as_str().unwrap_or_default();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(encoded)?,
        payload
    );
    assert_eq!(received.header("content-type"), Some("application/json"));
    assert_eq!(received.header("authorization"), Some("Bearer abc"));
    assert_eq!(
        received.header("x-iotcore-message-id"),
        Some(msg.id.as_str())
    );
    assert_eq!(received.header("x-iotcore-rule-id"), Some(rule_id.as_str()));
    assert_eq!(received.header("x-iotcore-signature"), None);

    eventually("the delivery to be completed", || async {
        Ok((queued(store, &rule_id).await? == 0).then_some(()))
    })
    .await?;
    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn client_error_is_dead_lettered_at_once() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let hook = Webhook::start(|_| Reply::Status(404)).await?;
    let t = tenant(store).await?;
    let rule_id = rule(store, &t, RuleSpec::to(&hook.url)).await?;
    let msg = message(&t, &rule_id, b"{}");
    store.enqueue_deliveries(std::slice::from_ref(&msg)).await?;
    let service = harness::start(store, harness::config());

    let (attempts, last_error, payload): (i32, String, Vec<u8>) =
        eventually("the dead letter", || async {
            Ok(sqlx::query_as(
                "SELECT attempts, last_error, payload FROM dead_letters WHERE tenant_id = $1 AND id = $2",
            )
            .bind(&t.id)
            .bind(&msg.id)
            .fetch_optional(store.pool())
            .await?)
        })
        .await?;
    assert_eq!(attempts, 1);
    assert_eq!(last_error, "HTTP 404 Not Found");
    assert_eq!(payload, b"{}");
    assert_eq!(queued(store, &rule_id).await?, 0);
    let counters = stats(store, &rule_id).await?;
    assert_eq!(
        counters,
        Some((0, 0, 1, Some("HTTP 404 Not Found".to_owned())))
    );
    assert_eq!(hook.count(), 1);

    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn too_many_requests_is_retried_no_sooner_than_retry_after() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let mut hook = Webhook::start(|n| match n {
        0 => Reply::StatusWithHeader(429, "retry-after", "1"),
        _ => Reply::Status(200),
    })
    .await?;
    let t = tenant(store).await?;
    let rule_id = rule(store, &t, RuleSpec::to(&hook.url)).await?;
    store
        .enqueue_deliveries(&[message(&t, &rule_id, b"1")])
        .await?;
    let service = harness::start(store, harness::config());

    let first = hook.next().await?;
    let second = hook.next().await?;
    // A lower bound only: the retry may come later on a busy machine, never sooner. The
    // backoff alone (10 ms initial) would have retried far earlier.
    let waited = second.at.duration_since(first.at);
    ensure!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
    let counters = eventually("the delivery to be recorded", || async {
        Ok(stats(store, &rule_id).await?.filter(|s| s.0 == 1))
    })
    .await?;
    assert_eq!(counters.1, 1);
    assert_eq!(counters.3.as_deref(), Some("HTTP 429 Too Many Requests"));

    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn signature_verifies_with_the_rule_secret() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let mut hook = Webhook::start(|_| Reply::Status(200)).await?;
    let t = tenant(store).await?;
    let mut spec = RuleSpec::to(&hook.url);
    spec.secret = Some("s3cr3t-signing-key");
    let rule_id = rule(store, &t, spec).await?;
    store
        .enqueue_deliveries(&[message(&t, &rule_id, br#"{"on": true}"#)])
        .await?;
    let service = harness::start(store, harness::config());

    let received = hook.next().await?;
    let header = received
        .header("x-iotcore-signature")
        .unwrap_or_default()
        .to_owned();
    let (t_part, v1_part) = header.split_once(',').unwrap_or_default();
    let timestamp = t_part.strip_prefix("t=").unwrap_or_default();
    let given = v1_part.strip_prefix("v1=").unwrap_or_default();
    ensure!(
        timestamp.parse::<i64>().is_ok(),
        "bad timestamp in {header:?}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cr3t-signing-key")?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&received.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(given, expected);
    // The secret itself never travels.
    let all_headers = format!("{:?}", received.headers);
    assert!(
        !all_headers.contains("s3cr3t")
            && !String::from_utf8_lossy(&received.body).contains("s3cr3t")
    );

    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn disabled_rule_deliveries_are_not_sent() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let disabled_hook = Webhook::start(|_| Reply::Status(200)).await?;
    let mut enabled_hook = Webhook::start(|_| Reply::Status(200)).await?;
    let t = tenant(store).await?;
    let mut spec = RuleSpec::to(&disabled_hook.url);
    spec.enabled = false;
    let disabled = rule(store, &t, spec).await?;
    let enabled = rule(store, &t, RuleSpec::to(&enabled_hook.url)).await?;
    store
        .enqueue_deliveries(&[message(&t, &disabled, b"1")])
        .await?;
    store
        .enqueue_deliveries(&[message(&t, &enabled, b"2")])
        .await?;
    let service = harness::start(store, harness::config());

    enabled_hook.next().await?;
    eventually("the enabled rule's delivery to complete", || async {
        Ok((queued(store, &enabled).await? == 0).then_some(()))
    })
    .await?;
    // The worker has claimed since, and the disabled rule's message is neither sent nor
    // claimable.
    let claimable = store
        .claim_deliveries(
            "another-worker",
            100,
            Duration::from_secs(60),
            &HashMap::new(),
        )
        .await?;
    assert!(claimable.is_empty(), "{claimable:?}");
    assert_eq!(queued(store, &disabled).await?, 1);
    assert_eq!(disabled_hook.count(), 0);

    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn hanging_endpoint_does_not_delay_another_rule() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let hanging_hook = Webhook::start(|_| Reply::Hang).await?;
    let mut healthy_hook = Webhook::start(|_| Reply::Status(200)).await?;
    let t = tenant(store).await?;
    let mut spec = RuleSpec::to(&hanging_hook.url);
    spec.max_in_flight = 2;
    spec.timeout_ms = 600_000;
    let hanging = rule(store, &t, spec).await?;
    let healthy = rule(store, &t, RuleSpec::to(&healthy_hook.url)).await?;
    let backlog: Vec<_> = (0..20).map(|_| message(&t, &hanging, b"{}")).collect();
    store.enqueue_deliveries(&backlog).await?;
    // A process-wide bound well below the backlog: the hanging rule must not take it all.
    let config = RulesConfig {
        max_in_flight_total: 4,
        ..harness::config()
    };
    let service = harness::start(store, config);

    eventually("the hanging rule to use its slots", || async {
        Ok((hanging_hook.count() >= 2).then_some(()))
    })
    .await?;
    let msg = message(&t, &healthy, b"{}");
    store.enqueue_deliveries(std::slice::from_ref(&msg)).await?;
    let received = healthy_hook.next().await?;
    assert_eq!(
        received.header("x-iotcore-message-id"),
        Some(msg.id.as_str())
    );
    // The hanging rule never had more than its max_in_flight requests open.
    assert_eq!(hanging_hook.count(), 2);
    assert_eq!(queued(store, &hanging).await?, 20);

    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn expired_lease_is_claimed_again() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let mut hook = Webhook::start(|_| Reply::Status(200)).await?;
    let t = tenant(store).await?;
    let rule_id = rule(store, &t, RuleSpec::to(&hook.url)).await?;
    let msg = message(&t, &rule_id, b"{}");
    store.enqueue_deliveries(std::slice::from_ref(&msg)).await?;

    // A worker claims the message and crashes before sending it.
    let lease = Duration::from_secs(600);
    let claimed = store
        .claim_deliveries("crashed-worker", 10, lease, &HashMap::new())
        .await?;
    assert_eq!(claimed.len(), 1);
    // While the lease runs, nobody else gets the message.
    let again = store
        .claim_deliveries("other-worker", 10, lease, &HashMap::new())
        .await?;
    assert!(again.is_empty());
    // Time passes: the lease expires.
    sqlx::query("UPDATE deliveries SET lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(&msg.id)
        .execute(store.pool())
        .await?;
    let service = harness::start(store, harness::config());

    let received = hook.next().await?;
    assert_eq!(
        received.header("x-iotcore-message-id"),
        Some(msg.id.as_str())
    );
    eventually("the delivery to be recorded", || async {
        Ok(stats(store, &rule_id).await?.filter(|s| s.0 == 1))
    })
    .await?;

    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn lease_holder_alone_can_reschedule_or_dead_letter() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let t = tenant(store).await?;
    let rule_id = rule(store, &t, RuleSpec::to("http://127.0.0.1:9/")).await?;
    let msg = message(&t, &rule_id, b"{}");
    store.enqueue_deliveries(std::slice::from_ref(&msg)).await?;
    let claimed = store
        .claim_deliveries("holder", 10, Duration::from_secs(60), &HashMap::new())
        .await?;
    assert_eq!(claimed.len(), 1);

    let later = chrono::Utc::now() + chrono::Duration::seconds(60);
    assert!(
        !store
            .reschedule_delivery(&t.id, &msg.id, "intruder", later, "x")
            .await?
    );
    assert!(
        !store
            .dead_letter_delivery(&t.id, &msg.id, "intruder", "x")
            .await?
    );
    // Another tenant's id for the same message addresses nothing.
    let other = tenant(store).await?;
    assert!(
        !store
            .dead_letter_delivery(&other.id, &msg.id, "holder", "x")
            .await?
    );
    assert!(!store.complete_delivery(&other.id, &msg.id).await?);
    assert_eq!(queued(store, &rule_id).await?, 1);

    assert!(
        store
            .reschedule_delivery(
                &t.id,
                &msg.id,
                "holder",
                later,
                "HTTP 503 Service Unavailable"
            )
            .await?
    );
    // Rescheduled into the future: not due, so not claimable.
    let due = store
        .claim_deliveries("holder", 10, Duration::from_secs(60), &HashMap::new())
        .await?;
    assert!(due.is_empty());
    assert_eq!(stats(store, &rule_id).await?.map(|s| s.1), Some(1));
    db.drop_db().await
}

#[tokio::test]
async fn message_past_its_maximum_age_is_dead_lettered_instead_of_retried() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let hook = Webhook::start(|_| Reply::Status(503)).await?;
    let t = tenant(store).await?;
    let rule_id = rule(store, &t, RuleSpec::to(&hook.url)).await?;
    let msg = message(&t, &rule_id, b"{}");
    store.enqueue_deliveries(std::slice::from_ref(&msg)).await?;
    let config = RulesConfig {
        max_age_secs: 0,
        ..harness::config()
    };
    let service = harness::start(store, config);

    let last_error: String = eventually("the dead letter", || async {
        Ok(
            sqlx::query_scalar("SELECT last_error FROM dead_letters WHERE id = $1")
                .bind(&msg.id)
                .fetch_optional(store.pool())
                .await?,
        )
    })
    .await?;
    assert!(
        last_error.starts_with("HTTP 503 Service Unavailable"),
        "{last_error}"
    );
    assert_eq!(hook.count(), 1);

    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn new_deliveries_wake_an_idle_worker_without_polling() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let mut hook = Webhook::start(|_| Reply::Status(200)).await?;
    let t = tenant(store).await?;
    let rule_id = rule(store, &t, RuleSpec::to(&hook.url)).await?;
    // Polling so rare that only a wake-up can explain a delivery within the test.
    let config = RulesConfig {
        poll_interval_ms: 3_600_000,
        ..harness::config()
    };
    let service = harness::start(store, config);
    for _ in 0..3 {
        let msg = message(&t, &rule_id, b"{}");
        store.enqueue_deliveries(std::slice::from_ref(&msg)).await?;
        let received = hook.next().await?;
        assert_eq!(
            received.header("x-iotcore-message-id"),
            Some(msg.id.as_str())
        );
        eventually("the delivery to complete", || async {
            Ok((queued(store, &rule_id).await? == 0).then_some(()))
        })
        .await?;
    }
    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn backlogs_beyond_the_rule_and_process_bounds_are_delivered_in_full() -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let mut hook = Webhook::start(|_| Reply::Status(200)).await?;
    let t = tenant(store).await?;
    let mut narrow = RuleSpec::to(&hook.url);
    narrow.max_in_flight = 1;
    let narrow = rule(store, &t, narrow).await?;
    let wide = rule(store, &t, RuleSpec::to(&hook.url)).await?;
    // Polling so rare that only finished deliveries freeing capacity can explain the
    // rest of each backlog being claimed.
    let config = RulesConfig {
        poll_interval_ms: 3_600_000,
        max_in_flight_total: 2,
        ..harness::config()
    };
    let service = harness::start(store, config);
    for rule_id in [&narrow, &wide] {
        let backlog: Vec<_> = (0..8).map(|_| message(&t, rule_id, b"{}")).collect();
        store.enqueue_deliveries(&backlog).await?;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < backlog.len() {
            let received = hook.next().await?;
            seen.insert(
                received
                    .header("x-iotcore-message-id")
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        ensure!(backlog.iter().all(|m| seen.contains(m.id.as_str())));
        eventually("the backlog to be recorded", || async {
            Ok(stats(store, rule_id).await?.filter(|s| s.0 == 8))
        })
        .await?;
    }
    service.stop().await?;
    db.drop_db().await
}

#[tokio::test]
async fn completions_of_several_tenants_and_rules_go_in_one_statement_each_in_its_tenant(
) -> Result<()> {
    let db = TestDb::new().await?;
    let store = &db.store;
    let (a, b) = (tenant(store).await?, tenant(store).await?);
    let url = "http://127.0.0.1:9/unused";
    let (rule_a, rule_b) = (
        rule(store, &a, RuleSpec::to(url)).await?,
        rule(store, &b, RuleSpec::to(url)).await?,
    );
    let of_a: Vec<_> = (0..3).map(|_| message(&a, &rule_a, b"{}")).collect();
    let of_b: Vec<_> = (0..2).map(|_| message(&b, &rule_b, b"{}")).collect();
    store.enqueue_deliveries(&of_a).await?;
    store.enqueue_deliveries(&of_b).await?;

    // One of b's messages named with a's tenant addresses nothing.
    let done = store
        .complete_deliveries_of(&[
            (&a.id, &of_a[0].id),
            (&b.id, &of_b[0].id),
            (&a.id, &of_a[1].id),
            (&a.id, &of_b[1].id),
        ])
        .await?;
    assert_eq!(done, 3);
    assert_eq!(queued(store, &rule_a).await?, 1);
    assert_eq!(queued(store, &rule_b).await?, 1);
    assert_eq!(stats(store, &rule_a).await?.map(|s| s.0), Some(2));
    assert_eq!(stats(store, &rule_b).await?.map(|s| s.0), Some(1));
    // Completing again counts nothing twice.
    assert_eq!(
        store
            .complete_deliveries_of(&[(&a.id, &of_a[0].id)])
            .await?,
        0
    );
    assert_eq!(stats(store, &rule_a).await?.map(|s| s.0), Some(2));
    assert_eq!(store.complete_deliveries_of(&[]).await?, 0);
    db.drop_db().await
}
