//! Arrival processes and length distributions of a tenant's traffic.
//!
//! Raw forms are what a scenario file says (`{ kind = "lognormal", mean = 400, sigma = 0.6 }`);
//! `validate()` turns them into values that can be sampled without further checks.

use std::path::Path;

use rand::Rng;
use rand_distr::{Distribution, Exp, Gamma, LogNormal};
use serde::Deserialize;

/// How a tenant's requests arrive, as written in a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawArrival {
    /// Exponential gaps: a Poisson process with `rate_per_s` requests per second.
    Poisson { rate_per_s: f64 },
    /// Evenly spaced requests, `rate_per_s` per second (the first after one gap).
    Constant { rate_per_s: f64 },
    /// Gamma-distributed gaps with mean 1/`rate_per_s`; `burstiness` is the shape (1 = Poisson,
    /// below 1 burstier, above 1 more regular), as `vllm bench serve --burstiness`.
    Gamma { rate_per_s: f64, burstiness: f64 },
    /// Bursts: Poisson at `rate_per_s` for `on_s` seconds, then silence for `off_s` seconds,
    /// repeated; the run starts with a burst unless `start_off` is true.
    OnOff {
        rate_per_s: f64,
        on_s: f64,
        off_s: f64,
        #[serde(default)]
        start_off: bool,
    },
    /// Poisson whose rate moves linearly from `from_per_s` to `to_per_s` over `ramp_s` seconds
    /// (default: the whole run), then holds `to_per_s`.
    Ramp {
        from_per_s: f64,
        to_per_s: f64,
        #[serde(default)]
        ramp_s: Option<f64>,
    },
    /// Poisson in stages: `stages = [{ duration_s = 10, rate_per_s = 1 }, ...]` one after the
    /// other; after the last stage its rate holds. A rate of 0 is a silent stage.
    Steps { stages: Vec<RawStage> },
    /// Poisson with a daily-traffic shape: the rate follows a cosine between
    /// `trough_rate_per_s` and `peak_rate_per_s`, one full cycle per `period_s` seconds
    /// (default: the whole run), peaking at `peak_at_s` (default: mid-period).
    Diurnal {
        trough_rate_per_s: f64,
        peak_rate_per_s: f64,
        #[serde(default)]
        period_s: Option<f64>,
        #[serde(default)]
        peak_at_s: Option<f64>,
    },
    /// Replays a CSV file (path relative to the scenario file) with a header line and the column
    /// `timestamp_s` (seconds from the run's start), optionally `prompt_tokens` and
    /// `output_tokens` per request (filled in on every row), which then replace the tenant's
    /// length distributions. Other columns, empty cells and short or long rows are errors.
    /// `time_scale` stretches (> 1) or compresses (< 1) the trace; default 1.
    Trace {
        file: String,
        #[serde(default)]
        time_scale: Option<f64>,
    },
    /// Closed loop: `users` concurrent users, each sending its next request `think_time_s`
    /// seconds after its previous one finished (whatever its outcome).
    ClosedLoop { users: u32, think_time_s: f64 },
}

/// One stage of a `steps` arrival.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    /// How long the stage lasts, s.
    pub duration_s: f64,
    /// Poisson rate during the stage, requests per second (0 = silent).
    pub rate_per_s: f64,
}

/// One request of a replayed trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracePoint {
    pub at_s: f64,
    pub prompt_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

/// A validated arrival process.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    Poisson {
        rate_per_s: f64,
    },
    Constant {
        rate_per_s: f64,
    },
    Gamma {
        rate_per_s: f64,
        burstiness: f64,
    },
    /// A Poisson process whose rate varies in time, sampled by thinning.
    Varying(RateCurve),
    Trace(Vec<TracePoint>),
    ClosedLoop {
        users: u32,
        think_time_s: f64,
    },
}

/// A rate as a function of time, for the time-varying Poisson arrivals.
#[derive(Debug, Clone, PartialEq)]
pub enum RateCurve {
    OnOff {
        rate_per_s: f64,
        on_s: f64,
        off_s: f64,
        start_off: bool,
    },
    Ramp {
        from_per_s: f64,
        to_per_s: f64,
        ramp_s: Option<f64>,
    },
    /// (end of stage s, rate).
    Steps(Vec<(f64, f64)>),
    Diurnal {
        trough: f64,
        peak: f64,
        period_s: Option<f64>,
        peak_at_s: Option<f64>,
    },
}

impl RateCurve {
    /// The rate at `t` seconds into a run of `horizon_s` seconds.
    pub fn rate_at(&self, t: f64, horizon_s: f64) -> f64 {
        match self {
            RateCurve::OnOff {
                rate_per_s,
                on_s,
                off_s,
                start_off,
            } => {
                let shift = if *start_off { *on_s } else { 0.0 };
                let pos = (t + shift) % (on_s + off_s);
                if pos < *on_s { *rate_per_s } else { 0.0 }
            }
            RateCurve::Ramp {
                from_per_s,
                to_per_s,
                ramp_s,
            } => {
                let span = ramp_s.unwrap_or(horizon_s).max(f64::MIN_POSITIVE);
                let x = (t / span).clamp(0.0, 1.0);
                from_per_s + (to_per_s - from_per_s) * x
            }
            RateCurve::Steps(stages) => stages
                .iter()
                .find(|(end, _)| t < *end)
                .or(stages.last())
                .map_or(0.0, |(_, r)| *r),
            RateCurve::Diurnal {
                trough,
                peak,
                period_s,
                peak_at_s,
            } => {
                let period = period_s.unwrap_or(horizon_s).max(f64::MIN_POSITIVE);
                let peak_at = peak_at_s.unwrap_or(period / 2.0);
                let phase = 2.0 * std::f64::consts::PI * (t - peak_at) / period;
                trough + (peak - trough) * (1.0 + phase.cos()) / 2.0
            }
        }
    }

    /// An upper bound of the rate, for thinning.
    pub fn max_rate(&self) -> f64 {
        match self {
            RateCurve::OnOff { rate_per_s, .. } => *rate_per_s,
            RateCurve::Ramp {
                from_per_s,
                to_per_s,
                ..
            } => from_per_s.max(*to_per_s),
            RateCurve::Steps(stages) => stages.iter().map(|(_, r)| *r).fold(0.0, f64::max),
            RateCurve::Diurnal { peak, trough, .. } => peak.max(*trough),
        }
    }
}

fn check_rate(name: &str, r: f64, zero_ok: bool) -> Result<f64, String> {
    let low_ok = if zero_ok { r >= 0.0 } else { r > 0.0 };
    if r.is_finite() && low_ok && r <= 100_000.0 {
        Ok(r)
    } else {
        let low = if zero_ok { "[0" } else { "(0" };
        Err(format!("{name} must be in {low}, 100000], got {r}"))
    }
}

fn check_span(name: &str, v: f64) -> Result<f64, String> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!(
            "{name} must be a positive number of seconds, got {v}"
        ))
    }
}

/// The columns a trace may have. Anything else is refused: a misspelt length column would
/// otherwise be skipped and the group's distribution would quietly take its place.
const TRACE_COLUMNS: [&str; 3] = ["timestamp_s", "prompt_tokens", "output_tokens"];

/// Levenshtein distance over chars (a column name typed in a spreadsheet need not be ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Why a header column is refused, with a "did you mean" when a known name is within two edits.
fn unknown_column(name: &str) -> String {
    let accepted = TRACE_COLUMNS.map(|c| format!("`{c}`")).join(", ");
    let hint = TRACE_COLUMNS
        .iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default();
    // escape_debug makes stray invisible characters (zero-width spaces, a BOM that was not
    // the first character) show up in the message instead of looking like a correct name.
    format!(
        "unknown column '{}' (accepted columns: {accepted}){hint}",
        name.escape_debug()
    )
}

/// Reads a trace CSV: a header with `timestamp_s` and optionally `prompt_tokens` and
/// `output_tokens`, nothing else; rows in any order (they are sorted). Every row has a cell
/// for every column, and a length column given must be filled in on every row.
pub fn read_trace(path: &Path, time_scale: f64) -> Result<Vec<TracePoint>, String> {
    let file = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read trace '{file}': {e}"))?;
    // Excel's "CSV UTF-8" starts the file with a byte-order mark; it belongs to the encoding,
    // not to the first column's name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_i, header)) = lines.next() else {
        return Err(format!("trace '{file}' is empty"));
    };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let at = format!("trace '{file}' line {}", header_i + 1);
    for (i, c) in cols.iter().enumerate() {
        if c.is_empty() {
            return Err(format!(
                "{at}: header column {} has no name (accepted columns: {})",
                i + 1,
                TRACE_COLUMNS.map(|c| format!("`{c}`")).join(", ")
            ));
        }
        if !TRACE_COLUMNS.contains(c) {
            return Err(format!("{at}: {}", unknown_column(c)));
        }
        if cols[..i].contains(c) {
            return Err(format!("{at}: column `{c}` appears twice in the header"));
        }
    }
    let find = |name: &str| cols.iter().position(|c| *c == name);
    let Some(ts) = find("timestamp_s") else {
        return Err(format!(
            "{at}: the header needs a `timestamp_s` column, got '{}'",
            header.escape_debug()
        ));
    };
    let (pc, oc) = (find("prompt_tokens"), find("output_tokens"));
    let mut out = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        // A short row would leave a length out, a long one would drop a value: both mean the
        // row does not say what the header says it does.
        if cells.len() != cols.len() {
            return Err(format!(
                "trace '{file}' line {n}: expected {} cells, one per header column ({}), got {}",
                cols.len(),
                cols.join(","),
                cells.len()
            ));
        }
        let cell = |c: usize| cells.get(c).copied().unwrap_or("");
        let t: f64 = cell(ts)
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| {
                format!(
                    "trace '{file}' line {n}, column `timestamp_s`: expected seconds from the \
                     run's start (a number, 0 or more), got '{}'",
                    cell(ts).escape_debug()
                )
            })?;
        let len = |c: Option<usize>, name: &str| -> Result<Option<u64>, String> {
            let Some(c) = c else {
                return Ok(None);
            };
            let v = cell(c);
            if v.is_empty() {
                return Err(format!(
                    "trace '{file}' line {n}, column `{name}`: empty cell; every row needs a \
                     length in this column (leave the column out of the file to use the \
                     group's `{name}` distribution)"
                ));
            }
            v.parse::<u64>()
                .ok()
                .filter(|k| *k > 0 && *k <= MAX_LEN)
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "trace '{file}' line {n}, column `{name}`: expected a whole number of \
                         tokens from 1 to {MAX_LEN}, got '{}'",
                        v.escape_debug()
                    )
                })
        };
        out.push(TracePoint {
            at_s: t * time_scale,
            prompt_tokens: len(pc, "prompt_tokens")?,
            output_tokens: len(oc, "output_tokens")?,
        });
    }
    if out.is_empty() {
        return Err(format!("trace '{file}' has no rows"));
    }
    out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    Ok(out)
}

impl RawArrival {
    /// Validates; `base` is the directory relative paths (trace files) are read from.
    pub fn validate(&self, base: &Path) -> Result<Arrival, String> {
        let rate = |r: f64| check_rate("rate_per_s", r, false);
        Ok(match self {
            RawArrival::Poisson { rate_per_s } => Arrival::Poisson {
                rate_per_s: rate(*rate_per_s)?,
            },
            RawArrival::Constant { rate_per_s } => Arrival::Constant {
                rate_per_s: rate(*rate_per_s)?,
            },
            RawArrival::Gamma {
                rate_per_s,
                burstiness,
            } => {
                if !(burstiness.is_finite() && *burstiness > 0.0) {
                    return Err(format!("burstiness must be positive, got {burstiness}"));
                }
                Arrival::Gamma {
                    rate_per_s: rate(*rate_per_s)?,
                    burstiness: *burstiness,
                }
            }
            RawArrival::OnOff {
                rate_per_s,
                on_s,
                off_s,
                start_off,
            } => Arrival::Varying(RateCurve::OnOff {
                rate_per_s: rate(*rate_per_s)?,
                on_s: check_span("on_s", *on_s)?,
                off_s: check_span("off_s", *off_s)?,
                start_off: *start_off,
            }),
            RawArrival::Ramp {
                from_per_s,
                to_per_s,
                ramp_s,
            } => {
                let from = check_rate("from_per_s", *from_per_s, true)?;
                let to = check_rate("to_per_s", *to_per_s, true)?;
                if from == 0.0 && to == 0.0 {
                    return Err("from_per_s and to_per_s cannot both be 0".into());
                }
                Arrival::Varying(RateCurve::Ramp {
                    from_per_s: from,
                    to_per_s: to,
                    ramp_s: ramp_s.map(|r| check_span("ramp_s", r)).transpose()?,
                })
            }
            RawArrival::Steps { stages } => {
                if stages.is_empty() {
                    return Err("steps needs at least one stage".into());
                }
                let mut end = 0.0;
                let mut out = Vec::new();
                for (i, st) in stages.iter().enumerate() {
                    end += check_span(&format!("stages[{i}].duration_s"), st.duration_s)?;
                    let r = check_rate(&format!("stages[{i}].rate_per_s"), st.rate_per_s, true)?;
                    out.push((end, r));
                }
                if out.iter().all(|(_, r)| *r == 0.0) {
                    return Err("every stage has rate 0: the tenant would send nothing".into());
                }
                Arrival::Varying(RateCurve::Steps(out))
            }
            RawArrival::Diurnal {
                trough_rate_per_s,
                peak_rate_per_s,
                period_s,
                peak_at_s,
            } => {
                let trough = check_rate("trough_rate_per_s", *trough_rate_per_s, true)?;
                let peak = check_rate("peak_rate_per_s", *peak_rate_per_s, false)?;
                if trough > peak {
                    return Err(format!(
                        "trough_rate_per_s ({trough}) must not exceed peak_rate_per_s ({peak})"
                    ));
                }
                if let Some(p) = peak_at_s
                    && !(p.is_finite() && *p >= 0.0)
                {
                    return Err(format!("peak_at_s must be zero or more, got {p}"));
                }
                Arrival::Varying(RateCurve::Diurnal {
                    trough,
                    peak,
                    period_s: period_s.map(|p| check_span("period_s", p)).transpose()?,
                    peak_at_s: *peak_at_s,
                })
            }
            RawArrival::Trace { file, time_scale } => {
                let scale = check_span("time_scale", time_scale.unwrap_or(1.0))?;
                Arrival::Trace(read_trace(&base.join(file), scale)?)
            }
            RawArrival::ClosedLoop {
                users,
                think_time_s,
            } => {
                if *users == 0 || *users > 10_000 {
                    return Err(format!("users must be 1 to 10000, got {users}"));
                }
                if !(think_time_s.is_finite() && *think_time_s >= 0.0) {
                    return Err(format!(
                        "think_time_s must be zero or more, got {think_time_s}"
                    ));
                }
                Arrival::ClosedLoop {
                    users: *users,
                    think_time_s: *think_time_s,
                }
            }
        })
    }
}

impl Arrival {
    /// Mean offered requests per second over a run of `horizon_s` seconds. For a closed loop
    /// the rate depends on latency; its upper bound users ÷ think time is given (or `None`
    /// with no think time).
    pub fn mean_rate_per_s(&self, horizon_s: f64) -> Option<f64> {
        match self {
            Arrival::Poisson { rate_per_s }
            | Arrival::Constant { rate_per_s }
            | Arrival::Gamma { rate_per_s, .. } => Some(*rate_per_s),
            Arrival::Varying(curve) => {
                let n = 1000;
                let sum: f64 = (0..n)
                    .map(|i| curve.rate_at((i as f64 + 0.5) * horizon_s / n as f64, horizon_s))
                    .sum();
                Some(sum / n as f64)
            }
            Arrival::Trace(points) => (horizon_s > 0.0)
                .then(|| points.iter().filter(|p| p.at_s < horizon_s).count() as f64 / horizon_s),
            Arrival::ClosedLoop {
                users,
                think_time_s,
            } => (*think_time_s > 0.0).then(|| f64::from(*users) / think_time_s),
        }
    }

    /// True for the closed loop, whose send times depend on responses.
    pub fn is_closed_loop(&self) -> bool {
        matches!(self, Arrival::ClosedLoop { .. })
    }

    /// Send times in seconds from the start, up to (not including) `horizon_s`. Empty for a
    /// closed loop (its times are decided during the run).
    pub fn times<R: Rng + ?Sized>(&self, horizon_s: f64, rng: &mut R) -> Vec<f64> {
        self.points(horizon_s, rng)
            .into_iter()
            .map(|p| p.at_s)
            .collect()
    }

    /// Send times with any lengths a trace fixes.
    pub fn points<R: Rng + ?Sized>(&self, horizon_s: f64, rng: &mut R) -> Vec<TracePoint> {
        let at = |at_s| TracePoint {
            at_s,
            prompt_tokens: None,
            output_tokens: None,
        };
        match self {
            Arrival::Trace(points) => {
                return points
                    .iter()
                    .filter(|p| p.at_s < horizon_s)
                    .copied()
                    .collect();
            }
            Arrival::ClosedLoop { .. } => return Vec::new(),
            Arrival::Varying(curve) => {
                // Thinning (Lewis and Shedler): candidates at the peak rate, each kept with
                // probability rate(t) / peak, give a Poisson process with rate rate(t).
                let peak = curve.max_rate();
                let Ok(exp) = Exp::new(peak) else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                let mut t = 0.0;
                loop {
                    t += exp.sample(rng);
                    if t >= horizon_s {
                        return out;
                    }
                    let keep: f64 = rng.random();
                    if keep * peak < curve.rate_at(t, horizon_s) {
                        out.push(at(t));
                    }
                }
            }
            _ => {}
        }
        let mut out = Vec::new();
        let mut t = 0.0;
        loop {
            let gap = match *self {
                Arrival::Constant { rate_per_s } => 1.0 / rate_per_s,
                Arrival::Poisson { rate_per_s } => match Exp::new(rate_per_s) {
                    Ok(d) => d.sample(rng),
                    Err(_) => return out,
                },
                Arrival::Gamma {
                    rate_per_s,
                    burstiness,
                } => {
                    // Shape k and scale θ with k·θ = 1/rate keep the mean rate.
                    match Gamma::new(burstiness, 1.0 / (rate_per_s * burstiness)) {
                        Ok(d) => d.sample(rng),
                        Err(_) => return out,
                    }
                }
                _ => return out,
            };
            t += gap;
            if t >= horizon_s {
                return out;
            }
            out.push(at(t));
        }
    }
}

/// A token-length distribution, as written in a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawLength {
    /// Always `value` tokens.
    Fixed { value: u64 },
    /// Uniform integers from `min` to `max` inclusive.
    Uniform { min: u64, max: u64 },
    /// Log-normal with the given `mean` and `sigma` (the standard deviation of the log; 0.5–1.0
    /// resembles chat traffic such as ShareGPT), clamped to [`min`, `max`] (defaults 1 and 32768).
    Lognormal {
        mean: f64,
        sigma: f64,
        #[serde(default)]
        min: Option<u64>,
        #[serde(default)]
        max: Option<u64>,
    },
}

/// A validated length distribution.
#[derive(Debug, Clone, PartialEq)]
pub enum LengthDist {
    Fixed(u64),
    Uniform {
        min: u64,
        max: u64,
    },
    Lognormal {
        mu: f64,
        sigma: f64,
        min: u64,
        max: u64,
    },
}

const MAX_LEN: u64 = 1_000_000;

impl RawLength {
    pub fn validate(&self) -> Result<LengthDist, String> {
        match *self {
            RawLength::Fixed { value } => {
                if value == 0 || value > MAX_LEN {
                    return Err(format!("value must be 1 to {MAX_LEN}, got {value}"));
                }
                Ok(LengthDist::Fixed(value))
            }
            RawLength::Uniform { min, max } => {
                if min == 0 || min > max || max > MAX_LEN {
                    return Err(format!(
                        "need 1 <= min <= max <= {MAX_LEN}, got min {min}, max {max}"
                    ));
                }
                Ok(LengthDist::Uniform { min, max })
            }
            RawLength::Lognormal {
                mean,
                sigma,
                min,
                max,
            } => {
                let min = min.unwrap_or(1);
                let max = max.unwrap_or(32_768);
                if !(mean.is_finite() && mean >= 1.0) {
                    return Err(format!("mean must be at least 1, got {mean}"));
                }
                if !(sigma.is_finite() && (0.0..=3.0).contains(&sigma)) {
                    return Err(format!("sigma must be in [0, 3], got {sigma}"));
                }
                if min == 0 || min > max || max > MAX_LEN {
                    return Err(format!(
                        "need 1 <= min <= max <= {MAX_LEN}, got min {min}, max {max}"
                    ));
                }
                // E[X] = exp(mu + sigma²/2), so this mu gives the requested mean.
                Ok(LengthDist::Lognormal {
                    mu: mean.ln() - sigma * sigma / 2.0,
                    sigma,
                    min,
                    max,
                })
            }
        }
    }
}

impl LengthDist {
    /// The smallest length it can produce.
    pub fn min(&self) -> u64 {
        match *self {
            LengthDist::Fixed(v) => v,
            LengthDist::Uniform { min, .. } | LengthDist::Lognormal { min, .. } => min,
        }
    }

    /// The largest length it can produce.
    pub fn max(&self) -> u64 {
        match *self {
            LengthDist::Fixed(v) => v,
            LengthDist::Uniform { max, .. } | LengthDist::Lognormal { max, .. } => max,
        }
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match *self {
            LengthDist::Fixed(v) => v,
            LengthDist::Uniform { min, max } => rng.random_range(min..=max),
            LengthDist::Lognormal {
                mu,
                sigma,
                min,
                max,
            } => match LogNormal::new(mu, sigma) {
                Ok(d) => (d.sample(rng).round() as u64).clamp(min, max),
                Err(_) => min,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn poisson_and_gamma_keep_the_mean_rate() {
        let mut rng = StdRng::seed_from_u64(3);
        for a in [
            Arrival::Poisson { rate_per_s: 20.0 },
            Arrival::Gamma {
                rate_per_s: 20.0,
                burstiness: 0.5,
            },
        ] {
            let n = a.times(1000.0, &mut rng).len() as f64;
            assert!((n / 1000.0 - 20.0).abs() < 0.6, "{a:?}: {n}");
        }
        let c = Arrival::Constant { rate_per_s: 4.0 }.times(1.0, &mut rng);
        assert_eq!(c, vec![0.25, 0.5, 0.75]);
    }

    /// Mean and coefficient of variation (standard deviation ÷ mean) of the gaps between
    /// consecutive send times, the first gap measured from 0.
    fn gap_mean_and_cv(times: &[f64]) -> (f64, f64) {
        let gaps: Vec<f64> = std::iter::once(0.0)
            .chain(times.iter().copied())
            .zip(times.iter().copied())
            .map(|(a, b)| b - a)
            .collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn gamma_burstiness_is_the_shape_one_is_poisson_like_and_smaller_is_burstier() {
        // vllm bench serve's `--burstiness` is the gamma shape k: the gaps' CV is 1/√k, so
        // k = 1 is as variable as Poisson, k = 0.25 twice as variable, k = 4 half as, all at
        // the same mean rate.
        let horizon_s = 2000.0;
        let rate = 20.0;
        let mut rng = StdRng::seed_from_u64(17);
        let poisson = Arrival::Poisson { rate_per_s: rate }.times(horizon_s, &mut rng);
        let (poisson_mean, poisson_cv) = gap_mean_and_cv(&poisson);
        assert!((poisson_cv - 1.0).abs() < 0.03, "Poisson CV {poisson_cv}");
        let mut cvs = Vec::new();
        for (burstiness, want_cv) in [(1.0, 1.0), (0.25, 2.0), (4.0, 0.5)] {
            let times = Arrival::Gamma {
                rate_per_s: rate,
                burstiness,
            }
            .times(horizon_s, &mut rng);
            let (mean, cv) = gap_mean_and_cv(&times);
            assert!(
                (mean * rate - 1.0).abs() < 0.03,
                "burstiness {burstiness}: mean gap {mean} s, want {} s",
                1.0 / rate
            );
            assert!(
                (mean - poisson_mean).abs() / poisson_mean < 0.04,
                "burstiness {burstiness}: mean gap {mean} s vs Poisson's {poisson_mean} s"
            );
            assert!(
                (cv - want_cv).abs() < 0.06 * want_cv,
                "burstiness {burstiness}: CV {cv}, want {want_cv}"
            );
            cvs.push(cv);
        }
        assert!(
            (cvs[0] - poisson_cv).abs() < 0.05,
            "gamma(1) CV {} vs Poisson CV {poisson_cv}",
            cvs[0]
        );
        assert!(cvs[1] > 1.8 * cvs[0], "burstier gaps vary more: {cvs:?}");
        assert!(
            cvs[2] < 0.6 * cvs[0],
            "more regular gaps vary less: {cvs:?}"
        );
    }

    fn count_in(times: &[f64], lo: f64, hi: f64) -> usize {
        times.iter().filter(|t| **t >= lo && **t < hi).count()
    }

    #[test]
    fn time_varying_arrivals_follow_their_rate_curves() {
        let mut rng = StdRng::seed_from_u64(11);
        let dir = Path::new(".");
        let parse = |text: &str| -> Arrival {
            let raw: RawArrival = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
            raw.validate(dir).unwrap_or_else(|e| panic!("{e}"))
        };
        // On/off: 10 s bursts at 20/s, 10 s silent.
        let t =
            parse("kind = 'on_off'\nrate_per_s = 20\non_s = 10\noff_s = 10").times(40.0, &mut rng);
        assert_eq!(count_in(&t, 10.0, 20.0) + count_in(&t, 30.0, 40.0), 0);
        let on = count_in(&t, 0.0, 10.0) as f64;
        assert!((on - 200.0).abs() < 50.0, "{on}");
        // Steps: silent, then 50/s.
        let t = parse("kind = 'steps'\nstages = [{ duration_s = 5, rate_per_s = 0 }, { duration_s = 5, rate_per_s = 50 }]")
            .times(10.0, &mut rng);
        assert_eq!(count_in(&t, 0.0, 5.0), 0);
        assert!((count_in(&t, 5.0, 10.0) as f64 - 250.0).abs() < 60.0);
        // Ramp 0 → 40/s over 100 s: the last quarter gets about 7× the first quarter.
        let t = parse("kind = 'ramp'\nfrom_per_s = 0\nto_per_s = 40").times(100.0, &mut rng);
        let (first, last) = (
            count_in(&t, 0.0, 25.0) as f64,
            count_in(&t, 75.0, 100.0) as f64,
        );
        assert!(last / first > 5.0 && last / first < 9.5, "{first} {last}");
        // Diurnal: trough at the ends, peak mid-run.
        let a = parse("kind = 'diurnal'\ntrough_rate_per_s = 1\npeak_rate_per_s = 30");
        let t = a.times(100.0, &mut rng);
        assert!(count_in(&t, 45.0, 55.0) > 4 * count_in(&t, 0.0, 10.0));
        let mean = a.mean_rate_per_s(100.0).unwrap_or(0.0);
        assert!((mean - 15.5).abs() < 0.1, "{mean}");
        // The closed loop has no precomputed times.
        assert!(
            parse("kind = 'closed_loop'\nusers = 4\nthink_time_s = 1")
                .times(10.0, &mut rng)
                .is_empty()
        );
    }

    #[test]
    fn traces_replay_their_timestamps_and_lengths() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("t.csv");
        std::fs::write(
            &path,
            "timestamp_s,prompt_tokens,output_tokens\n2.5,100,7\n0.5,40,9\n30,5,5\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let raw = RawArrival::Trace {
            file: "t.csv".into(),
            time_scale: Some(2.0),
        };
        let a = raw.validate(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = StdRng::seed_from_u64(1);
        let pts = a.points(10.0, &mut rng);
        assert_eq!(pts.len(), 2, "the 60 s row is past the horizon");
        assert_eq!(
            (pts[0].at_s, pts[0].prompt_tokens, pts[0].output_tokens),
            (1.0, Some(40), Some(9))
        );
        assert_eq!((pts[1].at_s, pts[1].prompt_tokens), (5.0, Some(100)));
        std::fs::write(&path, "when\n1\n").unwrap_or_else(|e| panic!("{e}"));
        let err = raw.validate(dir.path()).err().unwrap_or_default();
        assert!(err.contains("timestamp_s"), "{err}");
    }

    /// Writes `csv` as a trace and reads it, giving the error (or "read" if it was accepted).
    fn trace_error(csv: &str) -> String {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("t.csv");
        std::fs::write(&path, csv).unwrap_or_else(|e| panic!("{e}"));
        match read_trace(&path, 1.0) {
            Ok(_) => "read".into(),
            Err(e) => {
                assert!(e.contains(&path.display().to_string()), "{e}");
                e
            }
        }
    }

    #[test]
    fn a_trace_without_length_columns_leaves_lengths_to_the_distributions() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "timestamp_s,output_tokens\n1,5\n").unwrap_or_else(|e| panic!("{e}"));
        let pts = read_trace(&path, 1.0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            pts,
            [TracePoint {
                at_s: 1.0,
                prompt_tokens: None,
                output_tokens: Some(5)
            }]
        );
    }

    #[test]
    fn unknown_trace_columns_suggest_the_nearest_known_name_within_two_edits() {
        let e = trace_error("timestamp_s,output_token\n1,5\n");
        assert!(e.contains("line 1: unknown column 'output_token'"), "{e}");
        assert!(e.contains("did you mean `output_tokens`?"), "{e}");
        // Two edits (a transposition) still suggests; the case of a spreadsheet's title row too.
        let e = trace_error("timestamp_s,promtp_tokens\n1,5\n");
        assert!(e.contains("did you mean `prompt_tokens`?"), "{e}");
        let e = trace_error("Timestamp_S\n1\n");
        assert!(e.contains("did you mean `timestamp_s`?"), "{e}");
        // Three edits away: only the list of accepted names.
        let e = trace_error("timestamp_s,prompt_tok\n1,5\n");
        assert!(e.contains("unknown column 'prompt_tok'"), "{e}");
        assert!(!e.contains("did you mean"), "{e}");
        assert!(
            e.contains("`timestamp_s`, `prompt_tokens`, `output_tokens`"),
            "{e}"
        );
    }

    #[test]
    fn invisible_characters_in_a_trace_column_name_are_shown_escaped() {
        // A zero-width space, or a BOM that is not the file's first character, would otherwise
        // print as a name that looks exactly like an accepted one.
        let e = trace_error("timestamp_s,output_tokens\u{200b}\n1,5\n");
        assert!(e.contains("'output_tokens\\u{200b}'"), "{e}");
        let e = trace_error("\u{feff}\u{feff}timestamp_s\n1\n");
        assert!(e.contains("'\\u{feff}timestamp_s'"), "{e}");
    }

    #[test]
    fn a_leading_utf8_bom_is_not_part_of_the_first_trace_column() {
        assert_eq!(
            trace_error("\u{feff}timestamp_s,prompt_tokens\n1,5\n"),
            "read"
        );
    }

    #[test]
    fn empty_and_duplicate_trace_header_columns_are_errors() {
        let e = trace_error("timestamp_s,output_tokens,\n1,5,\n");
        assert!(e.contains("line 1: header column 3 has no name"), "{e}");
        let e = trace_error("timestamp_s,output_tokens,output_tokens\n1,5,6\n");
        assert!(
            e.contains("line 1: column `output_tokens` appears twice"),
            "{e}"
        );
    }

    #[test]
    fn empty_or_non_numeric_trace_length_cells_are_errors_naming_line_and_column() {
        let e = trace_error("timestamp_s,prompt_tokens,output_tokens\n1,40,5\n2,,5\n");
        assert!(
            e.contains("line 3, column `prompt_tokens`: empty cell"),
            "{e}"
        );
        let e = trace_error("timestamp_s,prompt_tokens,output_tokens\n1,40,\n");
        assert!(
            e.contains("line 2, column `output_tokens`: empty cell"),
            "{e}"
        );
        for bad in ["abc", "0", "1.5", "-3", "1000001"] {
            let e = trace_error(&format!("timestamp_s,output_tokens\n\n1,{bad}\n"));
            assert!(
                e.contains("line 3, column `output_tokens`: expected a whole number"),
                "{bad}: {e}"
            );
            assert!(e.contains(&format!("got '{bad}'")), "{bad}: {e}");
        }
        let e = trace_error("timestamp_s\n1\nsoon\n");
        assert!(e.contains("line 3, column `timestamp_s`"), "{e}");
    }

    #[test]
    fn trace_rows_with_too_few_or_too_many_cells_are_errors_naming_the_line() {
        let e = trace_error("timestamp_s,prompt_tokens\n1,40\n2\n");
        assert!(
            e.contains(
                "line 3: expected 2 cells, one per header column (timestamp_s,prompt_tokens), got 1"
            ),
            "{e}"
        );
        let e = trace_error("timestamp_s,prompt_tokens\n1,40,7\n");
        assert!(e.contains("line 2: expected 2 cells"), "{e}");
        assert!(e.contains("got 3"), "{e}");
    }

    #[test]
    fn lognormal_mean_matches_and_clamps() {
        let d = RawLength::Lognormal {
            mean: 400.0,
            sigma: 0.6,
            min: Some(50),
            max: Some(4000),
        }
        .validate()
        .expect("valid");
        let mut rng = StdRng::seed_from_u64(9);
        let xs: Vec<u64> = (0..50_000).map(|_| d.sample(&mut rng)).collect();
        let mean = xs.iter().sum::<u64>() as f64 / xs.len() as f64;
        assert!((mean - 400.0).abs() < 8.0, "mean {mean}");
        assert!(xs.iter().all(|x| (50..=4000).contains(x)));
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(
            RawArrival::Poisson { rate_per_s: 0.0 }
                .validate(Path::new("."))
                .is_err()
        );
        assert!(
            RawArrival::Gamma {
                rate_per_s: 1.0,
                burstiness: 0.0
            }
            .validate(Path::new("."))
            .is_err()
        );
        assert!(RawLength::Uniform { min: 5, max: 4 }.validate().is_err());
        assert!(RawLength::Fixed { value: 0 }.validate().is_err());
        assert!(
            RawLength::Lognormal {
                mean: 10.0,
                sigma: -1.0,
                min: None,
                max: None
            }
            .validate()
            .is_err()
        );
    }
}
