//! A metric family: one name, its label names, and a series per set of label values.

use crate::registry::{Kind, SeriesValue};
use crate::value::{Counter, Gauge, Histogram};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// Most series one family creates. Beyond it, new label sets share the overflow series, so
/// a bug that puts an unbounded value in a label costs a warning, not the process's memory
/// or the monitoring system.
pub const MAX_SERIES_PER_FAMILY: usize = 10_000;

/// Every label value of the overflow series (and of a call with the wrong number of label
/// values).
pub const OVERFLOW_LABEL: &str = "_overflow";

/// What a series of a family holds.
pub trait Series: Clone + Send + Sync + 'static {
    fn value(&self) -> SeriesValue;
}

impl Series for Counter {
    fn value(&self) -> SeriesValue {
        SeriesValue::Counter(self.get())
    }
}

impl Series for Gauge {
    fn value(&self) -> SeriesValue {
        SeriesValue::Gauge(self.get())
    }
}

impl Series for Histogram {
    fn value(&self) -> SeriesValue {
        let (buckets, sum, count) = self.snapshot();
        SeriesValue::Histogram {
            buckets,
            sum,
            count,
        }
    }
}

/// A named metric with labels: [`Family::with`] resolves a set of label values to the
/// handle of its series. Cloning gives another handle on the same family.
pub struct Family<M> {
    pub(crate) inner: Arc<Inner<M>>,
}

impl<M> Clone for Family<M> {
    fn clone(&self) -> Self {
        Family {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<M> {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) kind: Kind,
    pub(crate) label_names: &'static [&'static str],
    make: Box<dyn Fn() -> M + Send + Sync>,
    series: RwLock<HashMap<Vec<String>, M>>,
    overflow: OnceLock<M>,
}

impl<M: Series> Family<M> {
    pub(crate) fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        label_names: &'static [&'static str],
        make: Box<dyn Fn() -> M + Send + Sync>,
    ) -> Family<M> {
        let family = Family {
            inner: Arc::new(Inner {
                name,
                help,
                kind,
                label_names,
                make,
                series: RwLock::new(HashMap::new()),
                overflow: OnceLock::new(),
            }),
        };
        if label_names.is_empty() {
            // A family without labels has exactly one series: show it from the start.
            family.with(&[]);
        }
        family
    }

    /// The handle of the series with these label values, in the order of the family's
    /// label names. Creates the series on first use. Keep the handle where the values are
    /// known once (a connection's tenant) rather than calling this per event.
    pub fn with(&self, values: &[&str]) -> M {
        let inner = &self.inner;
        if values.len() != inner.label_names.len() {
            debug_assert!(
                false,
                "{}: {} label values for {} labels",
                inner.name,
                values.len(),
                inner.label_names.len()
            );
            return self.overflow();
        }
        let key: Vec<String> = values.iter().map(|value| (*value).to_owned()).collect();
        if let Some(series) = read(&inner.series).get(&key) {
            return series.clone();
        }
        let mut series = inner
            .series
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = series.get(&key) {
            return existing.clone();
        }
        if series.len() >= MAX_SERIES_PER_FAMILY {
            drop(series);
            return self.overflow();
        }
        let created = (inner.make)();
        series.insert(key, created.clone());
        created
    }

    fn overflow(&self) -> M {
        let inner = &self.inner;
        inner
            .overflow
            .get_or_init(|| {
                tracing::warn!(
                    metric = inner.name,
                    "metric has too many label sets; further ones are counted as {OVERFLOW_LABEL}"
                );
                (inner.make)()
            })
            .clone()
    }

    /// Every series: label values and current value.
    pub(crate) fn series(&self) -> Vec<(Vec<String>, SeriesValue)> {
        let inner = &self.inner;
        let mut all: Vec<(Vec<String>, SeriesValue)> = read(&inner.series)
            .iter()
            .map(|(labels, series)| (labels.clone(), series.value()))
            .collect();
        if let Some(overflow) = inner.overflow.get() {
            let labels = inner
                .label_names
                .iter()
                .map(|_| OVERFLOW_LABEL.to_owned())
                .collect();
            all.push((labels, overflow.value()));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}
