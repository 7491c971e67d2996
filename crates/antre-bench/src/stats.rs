//! Counting what happened: a latency histogram, the shared counters every
//! producer and consumer bumps, and per-interval samples for the live view and
//! the chart.
//!
//! The histogram is a small log-linear one (the idea of HdrHistogram, written
//! out here because it is fifty lines and must be merged and swapped cheaply):
//! values below 128 get one bucket each, larger values 64 buckets per power of
//! two, so a percentile is off by at most 1/64 (1.6 %) of its value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

/// Values below this get an exact bucket each.
const LINEAR: u64 = 128;
/// Buckets per power of two above [`LINEAR`].
const SUB: u64 = 64;
/// 128 exact buckets + 64 for each exponent from 7 to 63.
const BUCKETS: usize = (LINEAR + (64 - 7) * SUB) as usize;

/// A histogram of u64 values (nanoseconds of latency, here).
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - u64::from(v.leading_zeros()); // >= 7
    let mantissa = v >> (exp - 6); // in [64, 128)
    (LINEAR + (exp - 7) * SUB + (mantissa - SUB)) as usize
}

/// The smallest and largest value that fall in bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, i);
    }
    let exp = (i - LINEAR) / SUB + 7;
    let mantissa = (i - LINEAR) % SUB + SUB;
    let shift = exp - 6;
    let low = mantissa << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The smallest value recorded (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// The arithmetic mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest recorded value
    /// such that at least `q` of all values are at or below it, to within a
    /// bucket's width, and never outside [min, max].
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // The middle of the bucket halves the worst-case error.
                let (lo, hi) = bucket_range(i);
                return (lo + (hi - lo) / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Adds every value of `other` to `self`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// p50, p99, p99.9 and max in microseconds, for reports.
    pub fn summary_us(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: self.total,
            min_us: us(self.min()),
            mean_us: self.mean() / 1000.0,
            p50_us: us(self.quantile(0.50)),
            p99_us: us(self.quantile(0.99)),
            p999_us: us(self.quantile(0.999)),
            max_us: us(self.max),
        }
    }
}

/// End-to-end latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LatencySummary {
    /// Number of messages measured.
    pub count: u64,
    /// Smallest latency.
    pub min_us: f64,
    /// Mean latency.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest latency.
    pub max_us: f64,
}

/// Nanoseconds since the Unix epoch: the clock written into every message
/// body. It is read from the wall clock once per process and advanced with
/// the monotonic clock after that, so it never steps backwards within a run,
/// and a message published by one run and consumed by another (a backlog
/// drained later) still gets its real age.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();
    let (start, wall) = EPOCH.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (Instant::now(), wall)
    });
    wall + start.elapsed().as_nanos() as u64
}

/// Counters shared by all producers and consumers of one run. Plain relaxed
/// atomics: each task adds once per batch, the reporter reads once a second.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages written to a socket.
    pub published: AtomicU64,
    /// Messages the broker confirmed (basic.ack to a publisher).
    pub confirmed: AtomicU64,
    /// Messages the broker refused (basic.nack to a publisher).
    pub nacked: AtomicU64,
    /// Messages consumers received.
    pub delivered: AtomicU64,
    /// Nanosecond timestamp (see [`now_ns`]) of the latest delivery.
    pub last_delivery_ns: AtomicU64,
    /// Latencies recorded since the reporter last took them. Consumers lock
    /// it once per socket read, not per message.
    pub interval_latency: Mutex<Histogram>,
}

impl Counters {
    /// Takes the latencies recorded since the last call.
    pub fn take_interval_latency(&self) -> Histogram {
        std::mem::take(&mut *self.interval_latency.lock().expect("not poisoned"))
    }

    /// The current (published, confirmed, delivered) totals.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.published.load(Ordering::Relaxed),
            self.confirmed.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
        )
    }
}

/// One point of the time series: rates over one interval.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Sample {
    /// Seconds since the start of the run, at the end of the interval.
    pub t: f64,
    /// Messages published per second over the interval.
    pub publish_rate: f64,
    /// Messages confirmed per second over the interval.
    pub confirm_rate: f64,
    /// Messages delivered per second over the interval.
    pub deliver_rate: f64,
    /// Median latency of the messages delivered in the interval (µs).
    pub p50_us: f64,
    /// 99th percentile latency of the interval (µs).
    pub p99_us: f64,
    /// Broker resident memory at the end of the interval (KiB), if watched.
    pub broker_rss_kib: Option<u64>,
}

/// A rate in messages per second, 0 when no time has passed.
pub fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Turns two consecutive counter snapshots into per-second rates.
pub fn interval_rates(before: (u64, u64, u64), after: (u64, u64, u64), secs: f64) -> [f64; 3] {
    [
        rate(after.0.saturating_sub(before.0), secs),
        rate(after.1.saturating_sub(before.1), secs),
        rate(after.2.saturating_sub(before.2), secs),
    ]
}

/// Formats a rate compactly for the live view and tables: 12.3k, 1.25M.
pub fn human_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        for v in (0..5000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket_of(v);
            let (lo, hi) = bucket_range(b);
            assert!(lo <= v && v <= hi, "{v} not in bucket {b} [{lo},{hi}]");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for i in 1..BUCKETS {
            assert_eq!(bucket_range(i).0, bucket_range(i - 1).1 + 1, "gap at {i}");
        }
    }

    #[test]
    fn quantiles_of_uniform_values_are_within_bucket_precision() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100_000);
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.016, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 100_000);
        assert_eq!(h.quantile(0.0), 1);
        assert!((h.mean() - 50_000.5).abs() < 1e-6);
    }

    #[test]
    fn small_values_are_exact_and_outliers_show_in_the_tail() {
        let mut h = Histogram::default();
        for _ in 0..990 {
            h.record(10);
        }
        for _ in 0..10 {
            h.record(1_000_000);
        }
        assert_eq!(h.quantile(0.5), 10);
        assert_eq!(h.quantile(0.99), 10);
        let p999 = h.quantile(0.999);
        assert!((990_000..=1_000_000).contains(&p999), "{p999}");
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for v in 0..10_000u64 {
            let v = v * 37 % 9_973 + 5;
            if v % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        for q in [0.1, 0.5, 0.9, 0.99, 0.999] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
        assert_eq!((a.min(), a.max()), (all.min(), all.max()));
    }

    #[test]
    fn rates_are_count_over_time() {
        assert_eq!(rate(1000, 2.0), 500.0);
        assert_eq!(rate(1000, 0.0), 0.0);
        assert_eq!(
            interval_rates((10, 5, 0), (110, 55, 40), 0.5),
            [200.0, 100.0, 80.0]
        );
        assert_eq!(human_rate(1_234_567.0), "1.23M");
        assert_eq!(human_rate(45_000.0), "45.0k");
        assert_eq!(human_rate(12.0), "12");
    }

    #[test]
    fn summary_is_in_microseconds() {
        let mut h = Histogram::default();
        h.record(2_000);
        let s = h.summary_us();
        assert_eq!(s.count, 1);
        assert!((s.p50_us - 2.0).abs() < 0.05, "{}", s.p50_us);
    }
}
