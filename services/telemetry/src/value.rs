//! The cells behind one series: plain atomics, so that bumping a metric never locks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds, in seconds, for latencies from a millisecond to half a minute: an HTTP
/// request, a webhook call, a database query.
pub const DEFAULT_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A value that only goes up. Cloning gives another handle on the same series.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        // Relaxed: a scrape needs each value, not an order between them.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (open connections, queue depth). Cloning gives another
/// handle on the same series.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn dec(&self) {
        self.add(-1);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Adds one now and takes it back when the guard is dropped, so a count of things
    /// alive (connections, subscriptions) stays right on every way out of a scope.
    pub fn guard(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

/// Holds one unit of a [`Gauge`]; see [`Gauge::guard`].
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A distribution of observations (latencies) in fixed buckets. Cloning gives another
/// handle on the same series.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    bounds: &'static [f64],
    /// One per bound plus `+Inf`; not cumulative (the rendering sums them).
    buckets: Box<[AtomicU64]>,
    /// The sum of observations, as the bits of an `f64`.
    sum: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(Arc::new(HistogramCells {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, value: f64) {
        let cells = &self.0;
        let index = cells
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(cells.bounds.len());
        if let Some(bucket) = cells.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        // No atomic float add exists; the loop retries only when two observations race.
        let _ = cells
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Observes a duration in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Cumulative counts per upper bound (the last is `+Inf`), the sum and the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let cells = &self.0;
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(cells.buckets.len());
        for (index, bucket) in cells.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let bound = cells.bounds.get(index).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        let sum = f64::from_bits(cells.sum.load(Ordering::Relaxed));
        (buckets, sum, cumulative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_guard_gives_back_what_it_took() {
        let gauge = Gauge::default();
        let first = gauge.guard();
        let second = gauge.guard();
        assert_eq!(gauge.get(), 2);
        drop(first);
        assert_eq!(gauge.get(), 1);
        drop(second);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_infinity() {
        let histogram = Histogram::new(&[0.1, 1.0]);
        for value in [0.05, 0.1, 0.5, 7.0] {
            histogram.observe(value);
        }
        let (buckets, sum, count) = histogram.snapshot();
        assert_eq!(buckets, vec![(0.1, 2), (1.0, 3), (f64::INFINITY, 4)]);
        assert!((sum - 7.65).abs() < 1e-9);
        assert_eq!(count, 4);
    }
}
