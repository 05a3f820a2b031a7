//! HdrHistogram interval logs (`histograms/<metric>.hlog`): each tenant's latency histograms per
//! interval of the measured window, in the format HdrHistogram's own tools read (V2 compressed
//! histograms, base64, one `Tag=<tenant>` per line).
//!
//! Values are microseconds (the `Interval_Max` column is divided to milliseconds). Interval
//! timestamps are seconds since the start of the measured window, which the `StartTime` and
//! `BaseTime` headers pin to wall-clock time. Summing a tenant's intervals gives exactly the
//! histogram behind its `summary.json` figures, which is what a later shard merge relies on.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

use crate::aggregate::{Aggregate, METRICS};
use crate::distribution::UNITS_PER_MS;
use crate::error::ReportError;
use crate::run::RunData;

/// At most this many intervals per log. Encoding a histogram costs about as much as scanning its
/// whole bucket array, so the count of (tenant, interval, metric) histograms is what makes
/// writing the logs slow; 30 keeps a 30-tenant run well under a second in a release build.
pub const MAX_INTERVALS: f64 = 30.0;

/// The interval length for a measured window: whole seconds, at least 1, at most
/// [`MAX_INTERVALS`] intervals.
pub fn interval_s(duration_s: f64) -> u64 {
    if duration_s > 0.0 && duration_s.is_finite() {
        (duration_s / MAX_INTERVALS).ceil().max(1.0) as u64
    } else {
        1
    }
}

/// A tenant id made safe for a log tag (which may not hold `,`, space, CR or LF).
pub fn tag_for(tenant: &str) -> String {
    tenant
        .chars()
        .map(|c| {
            if matches!(c, ',' | ' ' | '\r' | '\n') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Writes one `.hlog` per metric of [`METRICS`] into `dir`; `tenants` fixes the tag order.
pub(crate) fn write_interval_logs(
    dir: &Path,
    run: &RunData,
    tenants: &[String],
) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
    let step_s = interval_s(run.duration_s);
    let window_start_ms = run.window_start_ms();

    // [tenant][interval] aggregates, filled from the measured records.
    let index: HashMap<&str, usize> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut cells: Vec<Vec<Aggregate>> = vec![Vec::new(); tenants.len()];
    for r in run.measured() {
        let Some(row) = index.get(r.tenant.as_str()).and_then(|i| cells.get_mut(*i)) else {
            continue;
        };
        let since_start_s = ((r.intended_start_ms - window_start_ms) / 1000.0).max(0.0);
        let slot = (since_start_s / step_s as f64).floor() as usize;
        if row.len() <= slot {
            row.resize_with(slot + 1, Aggregate::new);
        }
        if let Some(agg) = row.get_mut(slot) {
            agg.record(r);
        }
    }
    let intervals = cells.iter().map(Vec::len).max().unwrap_or(0);
    let tags: Vec<String> = tenants.iter().map(|t| tag_for(t)).collect();
    let start = UNIX_EPOCH
        + Duration::from_millis(run.started_at_unix_ms)
        + Duration::from_secs_f64(window_start_ms / 1000.0);

    for (m, metric) in METRICS.iter().enumerate() {
        let path = dir.join(format!("{metric}.hlog"));
        let fail = |message: String| ReportError::Histogram {
            path: path.clone(),
            message,
        };
        let mut buf: Vec<u8> = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "tenantbench: {metric} of scenario {} (seed {}), values in microseconds, \
                 one tag per tenant, {step_s} s intervals from the end of warm-up",
                run.scenario.replace('\n', " "),
                run.seed
            ))
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(start)
            .with_base_time(start)
            .begin_log_with(&mut buf, &mut serializer)
            .map_err(|e| fail(e.to_string()))?;
        // The legend line of Java's HistogramLogWriter, which the header builder cannot emit.
        buf.write_all(
            b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        )
        .map_err(|e| fail(e.to_string()))?;
        let mut writer = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(UNITS_PER_MS)
            .begin_log_with(&mut buf, &mut serializer)
            .map_err(|e| fail(e.to_string()))?;
        for slot in 0..intervals {
            for (row, tag) in cells.iter().zip(&tags) {
                let Some(hist) = row
                    .get(slot)
                    .and_then(|agg| agg.distributions()[m].1.histogram())
                else {
                    continue;
                };
                writer
                    .write_histogram(
                        hist,
                        Duration::from_secs(slot as u64 * step_s),
                        Duration::from_secs(step_s),
                        Tag::new(tag),
                    )
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        std::fs::write(&path, &buf).map_err(|e| ReportError::io(&path, e))?;
    }
    Ok(())
}

/// One interval histogram read back from a log.
#[derive(Debug, Clone)]
pub struct LoggedInterval {
    /// The line's tag (the tenant), if it had one.
    pub tag: Option<String>,
    /// Start of the interval, relative to the log's base time.
    pub start: Duration,
    /// Length of the interval.
    pub duration: Duration,
    /// The histogram (microseconds).
    pub histogram: Histogram<u64>,
}

/// Parses an interval log written by this crate (or any V2 HdrHistogram log).
pub fn read_interval_log(bytes: &[u8]) -> Result<Vec<LoggedInterval>, String> {
    let mut out = Vec::new();
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(bytes) {
        let entry = entry.map_err(|e| format!("malformed interval log: {e:?}"))?;
        let LogEntry::Interval(h) = entry else {
            continue;
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(h.encoded_histogram())
            .map_err(|e| format!("bad base64 in interval log: {e}"))?;
        let histogram: Histogram<u64> = deserializer
            .deserialize(&mut raw.as_slice())
            .map_err(|e| format!("bad histogram in interval log: {e:?}"))?;
        out.push(LoggedInterval {
            tag: h.tag().map(|t| t.as_str().to_owned()),
            start: h.start_timestamp(),
            duration: h.duration(),
            histogram,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tests::ok_record;
    use crate::distribution::Distribution;
    use crate::summary::tests::small_run;

    #[test]
    fn interval_length_keeps_logs_bounded() {
        assert_eq!(interval_s(20.0), 1);
        assert_eq!(interval_s(30.0), 1);
        assert_eq!(interval_s(31.0), 2);
        assert_eq!(interval_s(60.0), 2);
        assert_eq!(interval_s(3600.0), 120);
        assert_eq!(interval_s(0.0), 1);
    }

    #[test]
    fn tags_lose_forbidden_characters() {
        assert_eq!(tag_for("acme corp,eu"), "acme_corp_eu");
        assert!(Tag::new(&tag_for("a\nb c")).is_some());
    }

    #[test]
    fn logged_intervals_sum_to_the_tenant_histogram() {
        let mut run = small_run();
        run.records.push(ok_record("a", 14_900.0, 5.0, 50.0)); // last second of the window
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let tenants = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        write_interval_logs(dir.path(), &run, &tenants).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(dir.path().join("ttft_ms.hlog")).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("#[StartTime: 1700000005.000"), "{text}");
        let intervals = read_interval_log(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut a = Distribution::new();
        for i in intervals.iter().filter(|i| i.tag.as_deref() == Some("a")) {
            a.merge_histogram(&i.histogram);
        }
        let expected = crate::aggregate::Aggregate::from_records(
            run.records.iter().filter(|r| r.tenant == "a"),
        );
        assert_eq!(a.stats(), expected.ttft.stats());
        assert_eq!(a.count(), 11);
        // The late record lands in interval 9 (seconds 9–10 of the window).
        assert!(
            intervals
                .iter()
                .any(|i| i.tag.as_deref() == Some("a") && i.start == Duration::from_secs(9))
        );
        // c sent nothing, so it has no lines at all.
        assert!(intervals.iter().all(|i| i.tag.as_deref() != Some("c")));
    }
}
