//! OpenTelemetry over OTLP/HTTP (SPEC §7.1): with `telemetry.otlp_endpoint` pointing at a
//! real receiver, a device's CONNECT, API requests and a rule delivery arrive as spans with
//! their ids and outcomes (and never a secret), the metrics of `/metrics` arrive too, and a
//! graceful stop exports what was still waiting. Log lines carry the connection's ids.

use iotcore_e2e::mqtt::{connect_v311, WAIT};
use iotcore_e2e::otlp::{Collector, MetricData, NumberValue, ReceivedMetric, ReceivedSpan};
use iotcore_e2e::webhook::Webhook;
use iotcore_e2e::TestApp;
use serde_json::Value;
use std::time::Duration;

/// How long a test waits for an export; it ends as soon as one arrives.
const PATIENCE: Duration = Duration::from_secs(30);

/// A caller's trace, as in the W3C recommendation's example.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn spans_and_metrics_of_a_real_run_reach_an_otlp_receiver() {
    let collector = Collector::start().await;
    let app = TestApp::spawn_with(&[
        ("IOTCORE_TELEMETRY_OTLP_ENDPOINT", &collector.endpoint),
        ("IOTCORE_TELEMETRY_OTLP_INTERVAL_SECS", "1"),
        // Spans go out every 200 ms rather than every 5 s: the test ends sooner.
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        // A collector that wants a token gets it with both signals (percent-encoded, as
        // the OpenTelemetry specification writes header values).
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20otlp-token,x-empty=",
        ),
    ])
    .await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "sensors").await;
    let device = app.create_device(&app.token, &registry, "thermo-1").await;
    let rule = app
        .create_rule(&app.token, "all", "$devices/+/events/#", &webhook.url)
        .await;

    // An API request that continues the caller's trace.
    let response = app
        .http
        .get(format!("{}/v1/devices/{}", app.api, device.id))
        .bearer_auth(&app.token)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
        .send()
        .await
        .expect("GET /v1/devices/{id}");
    assert_eq!(response.status().as_u16(), 200);

    // A refused CONNECT (wrong password), then the device connects and publishes.
    let wrong_password = "not-the-password-of-this-device";
    assert!(
        connect_v311(app.mqtt, &device.id, &device.id, wrong_password)
            .await
            .is_err(),
        "a wrong password is refused"
    );
    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    mqtt.client
        .publish(
            format!("$devices/{}/events/temperature", device.id),
            rumqttc::QoS::AtLeastOnce,
            false,
            b"{\"celsius\": 21.5}".to_vec(),
        )
        .await
        .expect("publish");
    mqtt.puback().await;
    assert!(webhook.next(WAIT).await.is_some(), "the rule delivers");

    // CONNECT: the ids, the transport and the outcome.
    let connect = collector
        .wait_for_span(PATIENCE, |span| {
            span.name() == "mqtt CONNECT"
                && span.attribute("outcome").as_deref() == Some("accepted")
        })
        .await;
    assert_eq!(connect.attribute("tenant_id"), Some(app.tenant_id.clone()));
    assert_eq!(connect.attribute("registry_id"), Some(registry.clone()));
    assert_eq!(connect.attribute("device_id"), Some(device.id.clone()));
    assert_eq!(connect.attribute("transport").as_deref(), Some("tcp"));
    assert!(
        connect
            .attribute("connection_id")
            .is_some_and(|id| id.parse::<u64>().is_ok()),
        "{:?}",
        connect.attributes()
    );
    assert_eq!(
        connect.resource.get("service.name").map(String::as_str),
        Some("iotcore")
    );
    let refused = collector
        .wait_for_span(PATIENCE, |span| {
            span.name() == "mqtt CONNECT" && span.attribute("outcome").as_deref() == Some("refused")
        })
        .await;
    assert!(
        refused.attribute("reason").is_some(),
        "{:?}",
        refused.attributes()
    );

    // The API request: named and attributed by its route template, in the caller's trace.
    let request = collector
        .wait_for_span(PATIENCE, |span| span.name() == "GET /v1/devices/{id}")
        .await;
    assert_eq!(
        request.attribute("http.route").as_deref(),
        Some("/v1/devices/{id}")
    );
    assert_eq!(
        request.attribute("http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        request.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(request.attribute("tenant_id"), Some(app.tenant_id.clone()));
    assert_eq!(request.trace_id_hex(), TRACE_ID);
    assert_eq!(request.parent_span_id_hex(), PARENT_SPAN_ID);
    let created = collector
        .wait_for_span(PATIENCE, |span| {
            span.name() == "POST /v1/registries/{id}/devices"
        })
        .await;
    assert_eq!(
        created.attribute("http.response.status_code").as_deref(),
        Some("201")
    );
    assert_ne!(
        created.trace_id_hex(),
        TRACE_ID,
        "without traceparent, a trace of its own"
    );

    // The rule delivery: rule, attempt, outcome and the webhook's status.
    let delivery = collector
        .wait_for_span(PATIENCE, |span| span.name() == "rule delivery")
        .await;
    assert_eq!(delivery.attribute("rule_id"), Some(rule.clone()));
    assert_eq!(delivery.attribute("attempt").as_deref(), Some("1"));
    assert_eq!(delivery.attribute("outcome").as_deref(), Some("success"));
    assert_eq!(
        delivery.attribute("http.response.status_code").as_deref(),
        Some("200")
    );

    // Nothing secret, and no raw path, in any attribute of any span.
    let secrets = [
        device.password.as_str(),
        wrong_password,
        app.token.as_str(),
        app.operator_token.as_str(),
    ];
    for span in collector.spans() {
        for (key, value) in span.attributes() {
            for secret in secrets {
                assert!(
                    !value.contains(secret),
                    "span {} attribute {key} carries a secret",
                    span.name()
                );
            }
            if key.starts_with("http.") || key == "route" {
                assert!(
                    !value.contains(&device.id),
                    "span {} attribute {key} = {value} is a raw path",
                    span.name()
                );
            }
        }
        assert!(
            !span.name().contains(&device.id),
            "span name {}",
            span.name()
        );
    }

    // Metrics: the same families as /metrics, counters, gauges and histograms.
    let connects = collector
        .wait_for_metric(PATIENCE, |m| {
            m.metric.name == "iotcore_mqtt_connects_total"
                && sum_value(m, &[("result", "accepted")]) >= 1
        })
        .await;
    assert_eq!(
        connects.resource.get("service.name").map(String::as_str),
        Some("iotcore")
    );
    let latency = collector
        .wait_for_metric(PATIENCE, |m| {
            m.metric.name == "iotcore_http_request_seconds"
                && histogram_count(m, &[("route", "/v1/devices/{id}")]) >= 1
        })
        .await;
    assert_eq!(latency.metric.unit, "s");
    collector
        .wait_for_metric(PATIENCE, |m| {
            m.metric.name == "iotcore_rules_deliveries_total"
                && sum_value(
                    m,
                    &[("tenant", app.tenant_id.as_str()), ("outcome", "success")],
                ) >= 1
        })
        .await;
    collector
        .wait_for_metric(PATIENCE, |m| {
            m.metric.name == "iotcore_mqtt_connections"
                && matches!(m.metric.data, Some(MetricData::Gauge(_)))
        })
        .await;
    let scrape = app.metrics().await;
    let exported: std::collections::BTreeSet<String> = collector
        .metrics()
        .into_iter()
        .map(|m| m.metric.name)
        .collect();
    for family in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap_or_default();
        assert!(
            exported.contains(name),
            "{name} is on /metrics but not exported"
        );
    }
    assert!(collector.refused().is_empty(), "{:?}", collector.refused());
    let authorizations = collector.authorizations();
    for signal in ["traces", "metrics"] {
        assert!(
            authorizations.iter().any(|(s, _)| *s == signal),
            "no {signal} export: {authorizations:?}"
        );
    }
    assert!(
        authorizations
            .iter()
            .all(|(_, value)| value.as_deref() == Some("Bearer otlp-token")),
        "every export carries the configured header: {authorizations:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_graceful_stop_exports_what_was_waiting() {
    let collector = Collector::start().await;
    // Nothing would go out within the test but for the stop.
    let app = TestApp::spawn_with(&[
        ("IOTCORE_TELEMETRY_OTLP_ENDPOINT", &collector.endpoint),
        ("IOTCORE_TELEMETRY_OTLP_INTERVAL_SECS", "3600"),
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
    ])
    .await;
    let registry = app.create_registry(&app.token, "sensors").await;
    let device = app.create_device(&app.token, &registry, "thermo-1").await;
    let mqtt = app.mqtt_v311(&device).await.expect("device connects");
    drop(mqtt);

    let exit = app.terminate().await;
    assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
    // The receiver has had everything by the time the process exits.
    let spans = collector.spans();
    assert!(
        spans.iter().any(|s| s.name() == "POST /v1/registries"),
        "{:?}",
        spans.iter().map(ReceivedSpan::name).collect::<Vec<_>>()
    );
    assert!(spans.iter().any(|s| s.name() == "mqtt CONNECT"));
    let metrics = collector.metrics();
    let requests = metrics
        .iter()
        .find(|m| m.metric.name == "iotcore_http_requests_total")
        .expect("the last metrics were exported at the stop");
    assert!(sum_value(requests, &[("route", "/v1/registries"), ("status", "201")]) >= 1);
    let connects = metrics
        .iter()
        .find(|m| m.metric.name == "iotcore_mqtt_connections")
        .expect("connections exported");
    assert!(matches!(connects.metric.data, Some(MetricData::Gauge(_))));
}

#[tokio::test]
async fn a_connections_json_log_lines_carry_tenant_registry_device_and_connection_ids() {
    let app = TestApp::spawn_with(&[("IOTCORE_LOG_FORMAT", "json")]).await;
    let registry = app.create_registry(&app.token, "sensors").await;
    let device = app.create_device(&app.token, &registry, "thermo-1").await;
    let mqtt = app.mqtt_v311(&device).await.expect("device connects");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let connected = loop {
        let log = std::fs::read_to_string(&app.log).unwrap_or_default();
        let line = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| {
                line["fields"]["message"] == "connected"
                    && line["span"]["device_id"] == device.id.as_str()
            });
        if let Some(line) = line {
            break line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `connected` line in {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let span = &connected["span"];
    assert_eq!(span["name"], "mqtt");
    assert_eq!(span["tenant_id"], app.tenant_id.as_str());
    assert_eq!(span["registry_id"], registry.as_str());
    assert_eq!(span["device_id"], device.id.as_str());
    assert!(span["connection_id"].is_u64(), "{connected}");
    let log = std::fs::read_to_string(&app.log).unwrap_or_default();
    assert!(
        !log.contains(&device.password),
        "the password is never logged"
    );
    drop(mqtt);
    app.stop().await;
}

/// The value of the monotonic sum's point whose attributes include `labels`.
fn sum_value(metric: &ReceivedMetric, labels: &[(&str, &str)]) -> i64 {
    let Some(MetricData::Sum(sum)) = &metric.metric.data else {
        return 0;
    };
    sum.data_points
        .iter()
        .filter(|point| has_labels(&point.attributes, labels))
        .map(|point| match point.value {
            Some(NumberValue::AsInt(value)) => value,
            Some(NumberValue::AsDouble(value)) => value as i64,
            None => 0,
        })
        .sum()
}

/// The count of the histogram's point whose attributes include `labels`.
fn histogram_count(metric: &ReceivedMetric, labels: &[(&str, &str)]) -> u64 {
    let Some(MetricData::Histogram(histogram)) = &metric.metric.data else {
        return 0;
    };
    histogram
        .data_points
        .iter()
        .filter(|point| has_labels(&point.attributes, labels))
        .map(|point| {
            assert_eq!(
                point.bucket_counts.iter().sum::<u64>(),
                point.count,
                "the buckets add up to the count"
            );
            assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
            point.count
        })
        .sum()
}

fn has_labels(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    labels: &[(&str, &str)],
) -> bool {
    labels.iter().all(|(key, value)| {
        iotcore_e2e::otlp::attribute(attributes, key).as_deref() == Some(*value)
    })
}
