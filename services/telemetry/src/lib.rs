//! iotcore's metrics: one process-wide [`Registry`] of counters, gauges and histograms with
//! labels, rendered as Prometheus text on `/metrics` (SPEC §7.1).
//!
//! # Declaring and bumping a metric
//!
//! A metric is a [`Family`]: a name, a help text and the names of its labels. Declare it once,
//! as a static, and it registers itself in the global registry the first time it is touched:
//!
//! ```
//! use std::sync::LazyLock;
//! use iotcore_telemetry::{Counter, Family};
//!
//! /// Sessions parked for a later reconnect, by tenant.
//! static SESSIONS_PARKED: LazyLock<Family<Counter>> = LazyLock::new(|| {
//!     iotcore_telemetry::counter(
//!         "iotcore_mqtt_sessions_parked_total",
//!         "Sessions parked for a later reconnect",
//!         &["tenant"],
//!     )
//! });
//!
//! // Resolve the label set once, where it becomes known (at CONNECT, say), and keep the
//! // handle: bumping it is one atomic add, with no lookup and no formatting.
//! let parked = SESSIONS_PARKED.with(&["tnt_0123"]);
//! parked.inc();
//! ```
//!
//! Rules that keep `/metrics` cheap and useful:
//! - Label values come from small sets: a tenant id, a QoS, a reason from a fixed list, a
//!   route template. Never a topic, a client id, a device id or a raw URL path. A family
//!   stops creating series at [`MAX_SERIES_PER_FAMILY`] and counts the rest in one series
//!   whose labels are all [`OVERFLOW_LABEL`].
//! - On a hot path, keep the handle ([`Counter`], [`Gauge`], [`Histogram`] are clones of one
//!   shared cell) instead of calling [`Family::with`] per message.
//! - Names follow Prometheus: `iotcore_<area>_<what>`, `_total` for counters, a unit suffix
//!   (`_seconds`, `_bytes`) where there is a unit.
//!
//! The metrics of the operations contract (`deploy/README.md`, the Grafana dashboard) are
//! declared in [`metrics`]; a family is listed on `/metrics` once it has been touched, and
//! [`render`] touches every family of [`metrics`] first so that the contract's names are
//! always there.

mod family;
pub mod metrics;
mod registry;
pub mod trace_context;
mod value;

pub use family::{Family, MAX_SERIES_PER_FAMILY, OVERFLOW_LABEL};
pub use registry::{FamilySnapshot, Kind, Registry, SeriesSnapshot, SeriesValue};
pub use value::{Counter, Gauge, GaugeGuard, Histogram, DEFAULT_SECONDS_BUCKETS};

use std::sync::LazyLock;

static GLOBAL: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The process-wide registry that [`counter`], [`gauge`] and [`histogram`] register in.
pub fn registry() -> &'static Registry {
    &GLOBAL
}

/// Declares a counter family in the global registry.
pub fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Family<Counter> {
    GLOBAL.counter(name, help, labels)
}

/// Declares a gauge family in the global registry.
pub fn gauge(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Family<Gauge> {
    GLOBAL.gauge(name, help, labels)
}

/// Declares a histogram family in the global registry; `buckets` are the upper bounds,
/// ascending (`+Inf` is implied).
pub fn histogram(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
) -> Family<Histogram> {
    GLOBAL.histogram(name, help, labels, buckets)
}

/// The global registry in the Prometheus text exposition format (version 0.0.4), with
/// every family of the operations contract present.
pub fn render() -> String {
    metrics::touch_all();
    GLOBAL.render()
}

/// Every family of the global registry, those of the operations contract included: what
/// an OTLP export sends, the same as [`render`] shows.
pub fn snapshot() -> Vec<FamilySnapshot> {
    metrics::touch_all();
    GLOBAL.snapshot()
}

/// The `Content-Type` of [`render`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
