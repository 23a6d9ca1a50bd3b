//! OpenTelemetry over OTLP/HTTP (SPEC §7.1): when `telemetry.otlp_endpoint` is set, the
//! spans of CONNECTs, API requests and rule deliveries go to `{endpoint}/v1/traces`, and
//! every metric of `/metrics` to `{endpoint}/v1/metrics` every
//! `telemetry.otlp_interval_secs`, both as protobuf.
//!
//! Both exporters work on threads of their own with blocking HTTP clients, outside the
//! async runtime: they need no runtime to flush at shutdown, after the services have
//! stopped, and a slow collector costs them, never a connection task. [`Otlp::shutdown`]
//! exports what is left: the spans still waiting in their batch and one last set of
//! metrics, so that a graceful stop (SIGTERM) loses nothing.

mod metrics;

use crate::config::TelemetryConfig;
use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tracing::Metadata;
use tracing_subscriber::layer::{Context as LayerContext, Filter};

/// How long one export may take before it is given up (and logged).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The spans that are exported, by name; every other span (a connection's whole life,
/// a service's) is for log lines only.
const EXPORTED_SPANS: &[&str] = &["connect", "http", "delivery"];

/// The running exporters.
pub struct Otlp {
    traces: SdkTracerProvider,
    metrics: metrics::Pusher,
}

impl Otlp {
    /// Starts exporting to `config.otlp_endpoint`, or returns `None` when it is unset.
    /// `services` names what this process runs (`api,broker,rules`); it becomes the
    /// resource attribute `iotcore.services`.
    pub fn start(config: &TelemetryConfig, services: &str) -> anyhow::Result<Option<Otlp>> {
        let Some(endpoint) = config.otlp_endpoint.as_deref() else {
            return Ok(None);
        };
        let base = endpoint.trim().trim_end_matches('/');
        let resource = resource(services);
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .context("cannot set up the OTLP span exporter (telemetry.otlp_endpoint)")?;
        let traces = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let metrics = metrics::Pusher::start(
            format!("{base}/v1/metrics"),
            Duration::from_secs(config.otlp_interval_secs),
            EXPORT_TIMEOUT,
            &resource,
        )?;
        Ok(Some(Otlp { traces, metrics }))
    }

    /// The tracer the `tracing` layer hands the exported spans to.
    pub fn tracer(&self) -> SdkTracer {
        self.traces.tracer("iotcore")
    }

    /// Exports the last metrics and the spans still waiting, then stops both exporters.
    /// Blocks for at most about twice [`EXPORT_TIMEOUT`].
    pub fn shutdown(self) {
        self.metrics.shutdown();
        if let Err(err) = self.traces.shutdown() {
            tracing::warn!(error = %err, "could not export the last spans over OTLP");
        }
    }
}

/// Describes this process: `service.name` (`iotcore`, unless `OTEL_SERVICE_NAME` says
/// otherwise), `service.version`, `service.instance.id` (host name and process id, so
/// that the cumulative metrics of two processes never mix) and `iotcore.services`.
/// `OTEL_RESOURCE_ATTRIBUTES` adds more.
fn resource(services: &str) -> Resource {
    let mut builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name("iotcore");
    }
    builder
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new(
                "service.instance.id",
                format!("{}:{}", host_name(), std::process::id()),
            ),
            KeyValue::new("iotcore.services", services.to_owned()),
        ])
        .build()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The filter of the OpenTelemetry layer: the spans of [`EXPORTED_SPANS`] from iotcore's
/// own crates, and nothing else (no events, no dependency's spans). Decided once per
/// call site, so that the layer costs nothing where it is not interested.
pub struct ExportedSpans;

impl ExportedSpans {
    fn wants(metadata: &Metadata<'_>) -> bool {
        metadata.is_span()
            && metadata.target().starts_with("iotcore")
            && EXPORTED_SPANS.contains(&metadata.name())
    }
}

impl<S> Filter<S> for ExportedSpans {
    fn enabled(&self, metadata: &Metadata<'_>, _: &LayerContext<'_, S>) -> bool {
        Self::wants(metadata)
    }

    fn callsite_enabled(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if Self::wants(metadata) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }
}
