//! Process-wide `tracing` setup: human-readable or JSON lines on stderr, filtered by
//! `log.level`, and, when OTLP export is on, the spans of [`crate::otlp::ExportedSpans`]
//! handed to OpenTelemetry. Standard output stays free for what commands print (tokens,
//! configuration).

use crate::config::{LogConfig, LogFormat};
use opentelemetry_sdk::trace::SdkTracer;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber, with `tracer` receiving the exported spans. Fails if
/// the filter is invalid or a subscriber is already installed.
pub fn init(config: &LogConfig, tracer: Option<SdkTracer>) -> anyhow::Result<()> {
    let filter = EnvFilter::builder().parse(&config.level)?;
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match config.format {
        LogFormat::Pretty => lines
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => lines.with_ansi(false).json().with_filter(filter).boxed(),
    };
    // Its own filter: what is exported does not depend on `log.level`.
    let spans = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(crate::otlp::ExportedSpans)
    });
    tracing_subscriber::registry()
        .with(lines)
        .with(spans)
        .try_init()
        .map_err(|err| anyhow::anyhow!("cannot install the log subscriber: {err}"))
}
