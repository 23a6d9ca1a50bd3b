//! The registry of families, its snapshots, and the Prometheus text rendering.

use crate::family::{Family, Series};
use crate::value::{Counter, Gauge, Histogram};
use std::fmt::Write;
use std::sync::RwLock;

/// The type of a family, as Prometheus names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The value of one series at the time of a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum SeriesValue {
    Counter(u64),
    Gauge(i64),
    /// Cumulative counts per upper bound (the last one `+Inf`), sum and count.
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

/// One series of a [`FamilySnapshot`].
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSnapshot {
    /// `(label name, value)` in the family's label order.
    pub labels: Vec<(&'static str, String)>,
    pub value: SeriesValue,
}

/// A family and all its series at one moment: what both `/metrics` and an OTLP exporter
/// read.
#[derive(Clone, Debug, PartialEq)]
pub struct FamilySnapshot {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub series: Vec<SeriesSnapshot>,
}

type Collector = Box<dyn Fn() -> FamilySnapshot + Send + Sync>;
type Hook = Box<dyn Fn() + Send + Sync>;

/// A set of metric families. The process has one ([`crate::registry`]); tests may make
/// their own.
#[derive(Default)]
pub struct Registry {
    families: RwLock<Vec<(&'static str, Collector)>>,
    hooks: RwLock<Vec<Hook>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Family<Counter> {
        self.add(Family::new(
            name,
            help,
            Kind::Counter,
            labels,
            Box::new(Counter::default),
        ))
    }

    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Family<Gauge> {
        self.add(Family::new(
            name,
            help,
            Kind::Gauge,
            labels,
            Box::new(Gauge::default),
        ))
    }

    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Family<Histogram> {
        debug_assert!(
            buckets.windows(2).all(|pair| pair[0] < pair[1]),
            "{name}: bucket bounds must ascend"
        );
        self.add(Family::new(
            name,
            help,
            Kind::Histogram,
            labels,
            Box::new(move || Histogram::new(buckets)),
        ))
    }

    fn add<M: Series>(&self, family: Family<M>) -> Family<M> {
        let name = family.inner.name;
        let mut families = self
            .families
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if families.iter().any(|(existing, _)| *existing == name) {
            // Two families of one name would make the exposition invalid; the second one
            // still counts, it is just not shown.
            debug_assert!(false, "metric {name} declared twice");
            tracing::warn!(
                metric = name,
                "metric declared twice; only the first is shown"
            );
            return family;
        }
        let shown = family.clone();
        families.push((
            name,
            Box::new(move || {
                let inner = &shown.inner;
                FamilySnapshot {
                    name: inner.name,
                    help: inner.help,
                    kind: inner.kind,
                    series: shown
                        .series()
                        .into_iter()
                        .map(|(values, value)| SeriesSnapshot {
                            labels: inner.label_names.iter().copied().zip(values).collect(),
                            value,
                        })
                        .collect(),
                }
            }),
        ));
        family
    }

    /// Runs `hook` before every snapshot: for values that are cheaper to read when asked
    /// for than to track (a connection pool's size). Hooks must not block.
    pub fn on_collect(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Box::new(hook));
    }

    /// Every family, sorted by name, after running the collect hooks.
    pub fn snapshot(&self) -> Vec<FamilySnapshot> {
        for hook in self
            .hooks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            hook();
        }
        let mut all: Vec<FamilySnapshot> = self
            .families
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(_, collect)| collect())
            .collect();
        all.sort_by_key(|family| family.name);
        all
    }

    /// The registry in the Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in self.snapshot() {
            write_family(&mut out, &family);
        }
        out
    }
}

fn write_family(out: &mut String, family: &FamilySnapshot) {
    let name = family.name;
    let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
    let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
    for series in &family.series {
        match &series.value {
            SeriesValue::Counter(value) => {
                write_sample(out, name, "", &series.labels, None, &value.to_string());
            }
            SeriesValue::Gauge(value) => {
                write_sample(out, name, "", &series.labels, None, &value.to_string());
            }
            SeriesValue::Histogram {
                buckets,
                sum,
                count,
            } => {
                for (bound, cumulative) in buckets {
                    let le = if bound.is_infinite() {
                        "+Inf".to_owned()
                    } else {
                        bound.to_string()
                    };
                    write_sample(
                        out,
                        name,
                        "_bucket",
                        &series.labels,
                        Some(&le),
                        &cumulative.to_string(),
                    );
                }
                write_sample(out, name, "_sum", &series.labels, None, &sum.to_string());
                write_sample(
                    out,
                    name,
                    "_count",
                    &series.labels,
                    None,
                    &count.to_string(),
                );
            }
        }
    }
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&'static str, String)],
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    let extra = le.map(|le| ("le", le));
    let mut all = labels
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .chain(extra)
        .peekable();
    if all.peek().is_some() {
        out.push('{');
        for (index, (label, value)) in all.enumerate() {
            if index > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::{MAX_SERIES_PER_FAMILY, OVERFLOW_LABEL};

    #[test]
    fn renders_the_prometheus_text_format() {
        let registry = Registry::new();
        let messages = registry.counter("t_messages_total", "Messages.\nIn.", &["tenant", "qos"]);
        let open = registry.gauge("t_open", "Open things", &[]);
        let latency = registry.histogram("t_seconds", "Latency", &["route"], &[0.5, 1.0]);
        messages.with(&["tnt_b", "1"]).add(3);
        messages.with(&["tnt_a", "0"]).inc();
        messages.with(&["a\"b\\c\nd", "0"]).inc();
        open.with(&[]).set(-2);
        latency.with(&["/v1/x/{id}"]).observe(0.7);
        assert_eq!(
            registry.render(),
            "# HELP t_messages_total Messages.\\nIn.\n\
             # TYPE t_messages_total counter\n\
             t_messages_total{tenant=\"a\\\"b\\\\c\\nd\",qos=\"0\"} 1\n\
             t_messages_total{tenant=\"tnt_a\",qos=\"0\"} 1\n\
             t_messages_total{tenant=\"tnt_b\",qos=\"1\"} 3\n\
             # HELP t_open Open things\n\
             # TYPE t_open gauge\n\
             t_open -2\n\
             # HELP t_seconds Latency\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{route=\"/v1/x/{id}\",le=\"0.5\"} 0\n\
             t_seconds_bucket{route=\"/v1/x/{id}\",le=\"1\"} 1\n\
             t_seconds_bucket{route=\"/v1/x/{id}\",le=\"+Inf\"} 1\n\
             t_seconds_sum{route=\"/v1/x/{id}\"} 0.7\n\
             t_seconds_count{route=\"/v1/x/{id}\"} 1\n"
        );
    }

    #[test]
    fn a_handle_and_a_new_lookup_share_one_series() {
        let registry = Registry::new();
        let family = registry.counter("t_total", "T", &["tenant"]);
        let kept = family.with(&["tnt_a"]);
        kept.inc();
        family.with(&["tnt_a"]).inc();
        assert_eq!(kept.get(), 2);
    }

    #[test]
    fn label_sets_beyond_the_limit_share_the_overflow_series() {
        let registry = Registry::new();
        let family = registry.counter("t_total", "T", &["tenant"]);
        for n in 0..MAX_SERIES_PER_FAMILY + 5 {
            family.with(&[&n.to_string()]).inc();
        }
        let snapshot = registry.snapshot();
        let series = &snapshot[0].series;
        assert_eq!(series.len(), MAX_SERIES_PER_FAMILY + 1);
        let overflow = series
            .iter()
            .find(|s| s.labels[0].1 == OVERFLOW_LABEL)
            .unwrap();
        assert_eq!(overflow.value, SeriesValue::Counter(5));
    }

    #[test]
    fn collect_hooks_run_before_each_snapshot() {
        let registry = Registry::new();
        let gauge = registry.gauge("t_pool", "Pool", &["state"]);
        let idle = gauge.with(&["idle"]);
        let source = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(4));
        let read = source.clone();
        registry.on_collect(move || idle.set(read.load(std::sync::atomic::Ordering::Relaxed)));
        assert!(registry.render().contains("t_pool{state=\"idle\"} 4\n"));
        source.store(7, std::sync::atomic::Ordering::Relaxed);
        assert!(registry.render().contains("t_pool{state=\"idle\"} 7\n"));
    }
}
