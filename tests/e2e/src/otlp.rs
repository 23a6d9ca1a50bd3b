//! A real OTLP/HTTP receiver, as an OpenTelemetry collector would be: it accepts
//! `POST /v1/traces` and `POST /v1/metrics` with protobuf bodies, decodes them with the
//! `opentelemetry-proto` types and keeps every span and metric it got.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use opentelemetry_proto::tonic::metrics::v1::metric::Data as MetricData;
pub use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;

/// A span as received, with its resource's attributes.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub span: Span,
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The attribute `key` as text (numbers and booleans written out).
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    /// Every attribute as `key → text`.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        self.span
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
            .collect()
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn parent_span_id_hex(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

/// One metric of one export, with its resource's attributes.
#[derive(Clone, Debug)]
pub struct ReceivedMetric {
    pub metric: Metric,
    pub resource: BTreeMap<String, String>,
}

/// An export's signal (`traces` or `metrics`) and the `authorization` header it came with.
pub type Authorization = (&'static str, Option<String>);

#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    metrics: Arc<Mutex<Vec<ReceivedMetric>>>,
    /// Bodies that were not valid protobuf, or came with another content type.
    refused: Arc<Mutex<Vec<String>>>,
    /// The `authorization` header of each export, by signal (`traces`, `metrics`).
    authorizations: Arc<Mutex<Vec<Authorization>>>,
}

/// The receiver, listening on a loopback port.
pub struct Collector {
    /// The base URL to configure as `telemetry.otlp_endpoint`.
    pub endpoint: String,
    received: Received,
}

impl Collector {
    pub async fn start() -> Collector {
        let received = Received::default();
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            .with_state(received.clone());
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => panic!("binding the OTLP receiver: {e}"),
        };
        let endpoint = format!(
            "http://{}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { endpoint, received }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.received.spans).clone()
    }

    /// Every metric of every export received so far, oldest export first.
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        lock(&self.received.metrics).clone()
    }

    /// What the receiver could not decode.
    pub fn refused(&self) -> Vec<String> {
        lock(&self.received.refused).clone()
    }

    /// The `authorization` header of every export received so far, with its signal
    /// (`traces` or `metrics`), oldest first.
    pub fn authorizations(&self) -> Vec<Authorization> {
        lock(&self.received.authorizations).clone()
    }

    /// Waits up to `patience` for a span that `wanted` accepts, and returns it; panics
    /// with the names of the spans received otherwise.
    pub async fn wait_for_span(
        &self,
        patience: Duration,
        wanted: impl Fn(&ReceivedSpan) -> bool,
    ) -> ReceivedSpan {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(span) = self.spans().into_iter().find(|span| wanted(span)) {
                return span;
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = self
                    .spans()
                    .iter()
                    .map(|s| format!("{} {:?}", s.name(), s.attributes()))
                    .collect();
                panic!("no such span arrived; received: {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `patience` for a metric that `wanted` accepts in the latest export
    /// that has `wanted`'s name, and returns it.
    pub async fn wait_for_metric(
        &self,
        patience: Duration,
        wanted: impl Fn(&ReceivedMetric) -> bool,
    ) -> ReceivedMetric {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(metric) = self.metrics().into_iter().rev().find(|m| wanted(m)) {
                return metric;
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = self
                    .metrics()
                    .iter()
                    .map(|m| m.metric.name.clone())
                    .collect();
                panic!("no such metric arrived; received: {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn traces(
    State(received): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    record_authorization(&received, "traces", &headers);
    if !is_protobuf(&headers) {
        lock(&received.refused).push(format!("traces with content type {headers:?}"));
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => {
            lock(&received.refused).push(format!("traces: {e}"));
            return (StatusCode::BAD_REQUEST, Vec::new());
        }
    };
    let mut spans = lock(&received.spans);
    for resource_spans in request.resource_spans {
        let resource = resource_map(resource_spans.resource.map(|r| r.attributes));
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    span,
                    resource: resource.clone(),
                });
            }
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

async fn metrics(
    State(received): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    record_authorization(&received, "metrics", &headers);
    if !is_protobuf(&headers) {
        lock(&received.refused).push(format!("metrics with content type {headers:?}"));
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
    }
    let request = match ExportMetricsServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => {
            lock(&received.refused).push(format!("metrics: {e}"));
            return (StatusCode::BAD_REQUEST, Vec::new());
        }
    };
    let mut metrics = lock(&received.metrics);
    for resource_metrics in request.resource_metrics {
        let resource = resource_map(resource_metrics.resource.map(|r| r.attributes));
        for scope in resource_metrics.scope_metrics {
            for metric in scope.metrics {
                metrics.push(ReceivedMetric {
                    metric,
                    resource: resource.clone(),
                });
            }
        }
    }
    (
        StatusCode::OK,
        ExportMetricsServiceResponse::default().encode_to_vec(),
    )
}

fn record_authorization(received: &Received, signal: &'static str, headers: &HeaderMap) {
    let value = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    lock(&received.authorizations).push((signal, value));
}

fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"))
}

fn resource_map(attributes: Option<Vec<KeyValue>>) -> BTreeMap<String, String> {
    attributes
        .unwrap_or_default()
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// The attribute `key` of `attributes` as text.
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.as_ref()))
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
