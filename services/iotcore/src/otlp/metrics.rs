//! The metrics of `/metrics` over OTLP: every family of the process-wide registry, turned
//! into an OTLP `ExportMetricsServiceRequest` and POSTed as protobuf on a fixed interval.
//!
//! The registry already holds cumulative values (counters since the start, histogram
//! buckets since the start), so they go out as they are, with cumulative temporality and
//! the process start as their start time: counters as monotonic sums, gauges as gauges,
//! histograms as explicit-bucket histograms with the same bounds as on `/metrics`.

use anyhow::Context;
use iotcore_telemetry::{FamilySnapshot, Kind, SeriesSnapshot, SeriesValue};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The thread that exports the registry every interval, and once more when told to stop.
pub struct Pusher {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Pusher {
    /// Starts the thread; the first export happens one `interval` from now.
    pub fn start(
        url: String,
        interval: Duration,
        timeout: Duration,
        resource: &opentelemetry_sdk::Resource,
    ) -> anyhow::Result<Pusher> {
        let resource = proto_resource(resource);
        let headers = headers_from_env();
        let started = unix_nanos(SystemTime::now());
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("otlp-metrics".into())
            .spawn(move || {
                // Built here: a blocking client must not be created inside the runtime.
                let client = match reqwest::blocking::Client::builder()
                    .timeout(timeout)
                    .default_headers(headers)
                    .build()
                {
                    Ok(client) => client,
                    Err(err) => {
                        tracing::error!(error = %err, "cannot build the OTLP metrics client; metrics are not exported");
                        return;
                    }
                };
                let mut failing = false;
                loop {
                    let last = match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => false,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                    };
                    let families = iotcore_telemetry::snapshot();
                    let now = unix_nanos(SystemTime::now());
                    let body = request(&resource, &families, started, now).encode_to_vec();
                    match post(&client, &url, body) {
                        Ok(()) if failing => {
                            tracing::info!("exporting metrics over OTLP works again");
                            failing = false;
                        }
                        Ok(()) => {}
                        // Said once per outage, not once per interval.
                        Err(err) if !failing || last => {
                            tracing::warn!(error = %err, "cannot export metrics over OTLP");
                            failing = true;
                        }
                        Err(_) => {}
                    }
                    if last {
                        return;
                    }
                }
            })
            .context("cannot start the OTLP metrics thread")?;
        Ok(Pusher { stop, thread })
    }

    /// Exports once more and waits for the thread to end.
    pub fn shutdown(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("the OTLP metrics thread panicked");
        }
    }
}

/// The headers every export of metrics carries, read as the OpenTelemetry SDK reads them for
/// spans: `OTEL_EXPORTER_OTLP_METRICS_HEADERS`, or else `OTEL_EXPORTER_OTLP_HEADERS`.
fn headers_from_env() -> HeaderMap {
    let text = std::env::var("OTEL_EXPORTER_OTLP_METRICS_HEADERS")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_HEADERS"))
        .unwrap_or_default();
    let (headers, ignored) = parse_headers(&text);
    for key in ignored {
        // The value may be a secret: only the key is named.
        tracing::warn!(
            key,
            "an OTLP header is not a valid HTTP header; it is not sent"
        );
    }
    headers
}

/// `key=value,key=value` with percent-encoded values, as the OpenTelemetry specification
/// writes `OTEL_EXPORTER_OTLP_HEADERS`. Entries with an empty key or value are skipped as the
/// SDK skips them; the keys of entries that are not valid HTTP headers are returned.
fn parse_headers(text: &str) -> (HeaderMap, Vec<String>) {
    let mut headers = HeaderMap::new();
    let mut ignored = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, value)) = entry.split_once('=') else {
            // Not even a key: the entry itself may be a secret, so it is not repeated.
            ignored.push("(an entry without '=')".to_owned());
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            continue;
        }
        let name = HeaderName::from_bytes(key.as_bytes());
        let value = HeaderValue::from_bytes(&percent_decode(value));
        match (name, value) {
            (Ok(name), Ok(mut value)) => {
                value.set_sensitive(true);
                headers.append(name, value);
            }
            _ => ignored.push(key.chars().take(64).collect()),
        }
    }
    (headers, ignored)
}

/// `%XX` sequences turned into their bytes; a `%` not followed by two hex digits is kept.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

fn post(client: &reqwest::blocking::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let response = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        // The collector's URL may carry credentials: keep it out of the message.
        .map_err(|err| err.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}

/// One export of `families`: a single resource and scope holding every metric.
pub fn request(
    resource: &ProtoResource,
    families: &[FamilySnapshot],
    start_nanos: u64,
    now_nanos: u64,
) -> ExportMetricsServiceRequest {
    let metrics = families
        .iter()
        .map(|family| metric(family, start_nanos, now_nanos))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "iotcore".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn metric(family: &FamilySnapshot, start: u64, now: u64) -> Metric {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match family.kind {
        Kind::Counter => metric::Data::Sum(Sum {
            data_points: numbers(&family.series, start, now),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        Kind::Gauge => metric::Data::Gauge(Gauge {
            data_points: numbers(&family.series, 0, now),
        }),
        Kind::Histogram => metric::Data::Histogram(Histogram {
            data_points: family
                .series
                .iter()
                .filter_map(|series| histogram_point(series, start, now))
                .collect(),
            aggregation_temporality: cumulative,
        }),
    };
    Metric {
        name: family.name.into(),
        description: family.help.into(),
        unit: unit(family.name).into(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

/// The unit, in UCUM as OTLP wants it, from the Prometheus suffix of the name.
fn unit(name: &str) -> &'static str {
    let name = name.strip_suffix("_total").unwrap_or(name);
    if name.ends_with("_seconds") {
        "s"
    } else if name.ends_with("_bytes") {
        "By"
    } else {
        ""
    }
}

fn numbers(series: &[SeriesSnapshot], start: u64, now: u64) -> Vec<NumberDataPoint> {
    series
        .iter()
        .filter_map(|series| {
            let value = match series.value {
                SeriesValue::Counter(value) => {
                    number_data_point::Value::AsInt(i64::try_from(value).unwrap_or(i64::MAX))
                }
                SeriesValue::Gauge(value) => number_data_point::Value::AsInt(value),
                SeriesValue::Histogram { .. } => return None,
            };
            Some(NumberDataPoint {
                attributes: attributes(series),
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(value),
                ..NumberDataPoint::default()
            })
        })
        .collect()
}

fn histogram_point(series: &SeriesSnapshot, start: u64, now: u64) -> Option<HistogramDataPoint> {
    let SeriesValue::Histogram {
        buckets,
        sum,
        count,
    } = &series.value
    else {
        return None;
    };
    // The registry's buckets are cumulative and end with +Inf; OTLP wants the count of
    // each bucket and only the finite bounds.
    let mut previous = 0;
    let bucket_counts = buckets
        .iter()
        .map(|(_, cumulative)| {
            let count = cumulative.saturating_sub(previous);
            previous = *cumulative;
            count
        })
        .collect();
    let explicit_bounds = buckets
        .iter()
        .map(|(bound, _)| *bound)
        .filter(|bound| bound.is_finite())
        .collect();
    Some(HistogramDataPoint {
        attributes: attributes(series),
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: *count,
        sum: Some(*sum),
        bucket_counts,
        explicit_bounds,
        ..HistogramDataPoint::default()
    })
}

fn attributes(series: &SeriesSnapshot) -> Vec<KeyValue> {
    series
        .labels
        .iter()
        .map(|(name, value)| string_attribute(name, value.clone()))
        .collect()
}

fn string_attribute(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
    }
}

/// The SDK's resource (what the spans carry) in protobuf, so both signals describe the
/// process alike.
pub fn proto_resource(resource: &opentelemetry_sdk::Resource) -> ProtoResource {
    use opentelemetry::Value;
    let mut attributes: Vec<KeyValue> = resource
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Bool(value) => any_value::Value::BoolValue(*value),
                Value::I64(value) => any_value::Value::IntValue(*value),
                Value::F64(value) => any_value::Value::DoubleValue(*value),
                other => any_value::Value::StringValue(other.to_string()),
            };
            KeyValue {
                key: key.to_string(),
                value: Some(AnyValue { value: Some(value) }),
            }
        })
        .collect();
    attributes.sort_by(|a, b| a.key.cmp(&b.key));
    ProtoResource {
        attributes,
        ..ProtoResource::default()
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotcore_telemetry::Registry;

    #[test]
    fn otlp_headers_are_read_as_the_specification_writes_them() {
        let (headers, ignored) = parse_headers(
            " authorization=Bearer%20a%2Cb ,x-tenant=acme,,empty=,=novalue,bad key=1,secret,x-odd=50%,x-utf=%C3%A9",
        );
        assert_eq!(headers["authorization"], "Bearer a,b");
        assert!(headers["authorization"].is_sensitive());
        assert_eq!(headers["x-tenant"], "acme");
        assert_eq!(headers["x-odd"], "50%");
        assert_eq!(headers["x-utf"].as_bytes(), "é".as_bytes());
        assert_eq!(headers.len(), 4);
        assert_eq!(ignored, ["bad key", "(an entry without '=')"]);
        assert!(parse_headers("").0.is_empty());
        // A decoded control character is not a valid header value.
        let (headers, ignored) = parse_headers("x-a=1%0A2");
        assert!(headers.is_empty());
        assert_eq!(ignored, ["x-a"]);
    }

    fn export(registry: &Registry) -> Vec<Metric> {
        let resource = ProtoResource::default();
        let request = request(&resource, &registry.snapshot(), 10, 20);
        let decoded = ExportMetricsServiceRequest::decode(request.encode_to_vec().as_slice())
            .expect("a valid protobuf message");
        decoded.resource_metrics[0].scope_metrics[0].metrics.clone()
    }

    #[test]
    fn counters_are_cumulative_monotonic_sums_with_their_labels() {
        let registry = Registry::new();
        let family = registry.counter("t_messages_total", "Messages", &["tenant", "qos"]);
        family.with(&["tnt_a", "1"]).add(3);
        let metrics = export(&registry);
        assert_eq!(metrics[0].name, "t_messages_total");
        assert_eq!(metrics[0].description, "Messages");
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("not a sum: {:?}", metrics[0]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let point = &sum.data_points[0];
        assert_eq!(point.value, Some(number_data_point::Value::AsInt(3)));
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (10, 20));
        let labels: Vec<(String, Option<any_value::Value>)> = point
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
            .collect();
        assert_eq!(
            labels,
            vec![
                (
                    "tenant".into(),
                    Some(any_value::Value::StringValue("tnt_a".into()))
                ),
                (
                    "qos".into(),
                    Some(any_value::Value::StringValue("1".into()))
                ),
            ]
        );
    }

    #[test]
    fn gauges_keep_their_sign() {
        let registry = Registry::new();
        registry.gauge("t_open", "Open", &[]).with(&[]).set(-2);
        let metrics = export(&registry);
        let Some(metric::Data::Gauge(gauge)) = &metrics[0].data else {
            panic!("not a gauge: {:?}", metrics[0]);
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsInt(-2))
        );
    }

    #[test]
    fn histograms_send_counts_per_bucket_and_the_finite_bounds() {
        let registry = Registry::new();
        let family = registry.histogram("t_request_seconds", "Latency", &[], &[0.1, 1.0]);
        for value in [0.05, 0.1, 0.5, 7.0] {
            family.with(&[]).observe(value);
        }
        let metrics = export(&registry);
        assert_eq!(metrics[0].unit, "s");
        let Some(metric::Data::Histogram(histogram)) = &metrics[0].data else {
            panic!("not a histogram: {:?}", metrics[0]);
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(point.bucket_counts, vec![2, 1, 1]);
        assert_eq!(point.count, 4);
        assert!((point.sum.unwrap_or_default() - 7.65).abs() < 1e-9);
    }

    #[test]
    fn units_come_from_the_name() {
        assert_eq!(unit("iotcore_mqtt_bytes_total"), "By");
        assert_eq!(unit("iotcore_http_request_seconds"), "s");
        assert_eq!(unit("iotcore_mqtt_connections"), "");
    }
}
