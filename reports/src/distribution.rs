//! Latency distributions: an HdrHistogram of microseconds with 3 significant digits, and the
//! percentile summary (`p50`, `p90`, `p99`, `max`, `mean`, `count`) read from it.
//!
//! Every figure in a [`LatencyStats`] comes from the histogram alone, never from side counters,
//! so a distribution rebuilt from an interval log (a shard of a multi-machine run) reports exactly
//! what the original did, and merging tenant → group → overall is exact.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Significant decimal digits the histograms keep (0.1 % relative error).
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Histogram units per millisecond: values are recorded in whole microseconds.
pub const UNITS_PER_MS: f64 = 1000.0;

/// Rounds to `decimals` places. Published figures are rounded to what they can mean (µs for
/// latencies), which also makes `summary.json` read back to exactly the same numbers.
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let r = (x * scale).round() / scale;
    if r.is_finite() { r } else { x }
}

/// A distribution of millisecond values recorded at microsecond resolution.
#[derive(Debug, Clone, Default)]
pub struct Distribution {
    /// Created on the first value, so the many empty scopes of a run (a tenant with no successes,
    /// an interval with no requests) cost nothing.
    hist: Option<Histogram<u64>>,
    /// Values that could not be recorded (NaN, infinite, or a histogram that could not grow).
    dropped: u64,
}

impl Distribution {
    /// An empty distribution.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one value in milliseconds. Negative values are recorded as 0 (a clock that stepped
    /// back must not vanish from the count); NaN and infinities are dropped and counted apart.
    pub fn record_ms(&mut self, ms: f64) {
        if !ms.is_finite() {
            self.dropped += 1;
            return;
        }
        // `as` saturates for floats, and values are clamped at 0 first, so this cannot wrap.
        let micros = (ms.max(0.0) * UNITS_PER_MS).round() as u64;
        self.record_micros(micros);
    }

    /// Records one value in microseconds.
    pub fn record_micros(&mut self, micros: u64) {
        if self.hist.is_none() {
            self.hist = Histogram::new(SIGNIFICANT_DIGITS).ok();
        }
        match self.hist.as_mut().map(|h| h.record(micros)) {
            Some(Ok(())) => {}
            _ => self.dropped += 1,
        }
    }

    /// Adds every value of `other` into `self`.
    pub fn merge(&mut self, other: &Distribution) {
        self.dropped += other.dropped;
        let Some(theirs) = &other.hist else {
            return;
        };
        let mine = self.hist.get_or_insert_with(|| {
            let mut h = Histogram::new_from(theirs);
            // A decoded histogram (from an interval log) comes with its range fixed to the values
            // it held; later additions need room to grow.
            h.auto(true);
            h
        });
        mine.auto(true);
        // With auto-resize on and the same precision, adding cannot fail; if it ever did, the
        // values are counted as dropped rather than lost silently.
        if mine.add(theirs).is_err() {
            self.dropped += theirs.len();
        }
    }

    /// Adds a decoded histogram (microseconds), e.g. one read back from an interval log.
    pub fn merge_histogram(&mut self, other: &Histogram<u64>) {
        self.merge(&Distribution {
            hist: Some(other.clone()),
            dropped: 0,
        });
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.hist.as_ref().map_or(0, |h| h.len())
    }

    /// How many values were refused.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The underlying histogram, `None` while empty.
    pub fn histogram(&self) -> Option<&Histogram<u64>> {
        self.hist.as_ref().filter(|h| !h.is_empty())
    }

    /// The value at quantile `q` (0..=1) in ms, `None` while empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.histogram()
            .map(|h| h.value_at_quantile(q) as f64 / UNITS_PER_MS)
    }

    /// The percentile summary.
    pub fn stats(&self) -> LatencyStats {
        let Some(h) = self.histogram() else {
            return LatencyStats::default();
        };
        let ms = |micros: u64| Some(micros as f64 / UNITS_PER_MS);
        LatencyStats {
            count: h.len(),
            min: ms(h.min()),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: Some(round_to(h.mean() / UNITS_PER_MS, 3)),
        }
    }
}

/// Percentiles of one latency metric, in milliseconds. With no data every figure is `null`
/// (never 0, which would read as "instant").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Values recorded.
    pub count: u64,
    /// Smallest value (to histogram precision).
    pub min: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// 99.9th percentile.
    pub p999: Option<f64>,
    /// Largest value (to histogram precision: the top of its bucket).
    pub max: Option<f64>,
    /// Arithmetic mean.
    pub mean: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() <= b.abs() * 1e-3 + 1e-9)
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_ms() {
        let mut d = Distribution::new();
        for v in 1..=1000 {
            d.record_ms(f64::from(v));
        }
        let s = d.stats();
        assert_eq!(s.count, 1000);
        assert!(close(s.p50, 500.0), "{s:?}");
        assert!(close(s.p90, 900.0), "{s:?}");
        assert!(close(s.p99, 990.0), "{s:?}");
        assert!(close(s.max, 1000.0), "{s:?}");
        assert!(close(s.min, 1.0), "{s:?}");
        assert!(close(s.mean, 500.5), "{s:?}");
    }

    #[test]
    fn sub_millisecond_values_keep_microseconds() {
        let mut d = Distribution::new();
        d.record_ms(0.25);
        d.record_ms(0.75);
        let s = d.stats();
        assert_eq!(s.min, Some(0.25));
        assert_eq!(s.max, Some(0.75));
    }

    #[test]
    fn empty_distribution_reports_null_not_zero() {
        let s = Distribution::new().stats();
        assert_eq!(s.count, 0);
        assert_eq!(s.p50, None);
        assert_eq!(s.p99, None);
        assert_eq!(s.max, None);
        assert_eq!(s.mean, None);
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert!(json["p99"].is_null(), "{json}");
    }

    #[test]
    fn merged_distribution_equals_the_whole() {
        let mut whole = Distribution::new();
        let mut parts = [
            Distribution::new(),
            Distribution::new(),
            Distribution::new(),
        ];
        for i in 0..3000u32 {
            // Spread over four decades so buckets of several widths are involved.
            let v = f64::from(i % 997) * 1.7 + f64::from(i / 1000) * 900.0 + 0.3;
            whole.record_ms(v);
            parts[(i % 3) as usize].record_ms(v);
        }
        let mut merged = Distribution::new();
        for p in &parts {
            merged.merge(p);
        }
        assert_eq!(merged.stats(), whole.stats());
    }

    #[test]
    fn decoded_histograms_of_different_ranges_merge() {
        use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
        let mut small =
            Histogram::<u64>::new_with_bounds(1, 2048, 3).unwrap_or_else(|e| panic!("{e}"));
        small.record(1000).unwrap_or_else(|e| panic!("{e}"));
        let mut buf = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&small, &mut buf)
            .unwrap_or_else(|e| panic!("{e}"));
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut buf.as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut d = Distribution::new();
        d.merge_histogram(&decoded);
        let mut big = Distribution::new();
        big.record_ms(90_000.0);
        d.merge(&big);
        assert_eq!(d.count(), 2);
        assert_eq!(d.dropped(), 0);
    }

    #[test]
    fn bad_values_are_dropped_and_negative_clamped() {
        let mut d = Distribution::new();
        d.record_ms(f64::NAN);
        d.record_ms(f64::INFINITY);
        d.record_ms(-3.0);
        assert_eq!(d.dropped(), 2);
        assert_eq!(d.count(), 1);
        assert_eq!(d.stats().max, Some(0.0));
    }
}
