//! Arrival processes and length distributions of a tenant's traffic.
//!
//! Raw forms are what a scenario file says (`{ kind = "lognormal", mean = 400, sigma = 0.6 }`);
//! `validate()` turns them into values that can be sampled without further checks.

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
}

/// A validated arrival process.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    Poisson { rate_per_s: f64 },
    Constant { rate_per_s: f64 },
    Gamma { rate_per_s: f64, burstiness: f64 },
}

impl RawArrival {
    pub fn validate(&self) -> Result<Arrival, String> {
        let rate = |r: f64| {
            if r.is_finite() && r > 0.0 && r <= 100_000.0 {
                Ok(r)
            } else {
                Err(format!("rate_per_s must be in (0, 100000], got {r}"))
            }
        };
        Ok(match *self {
            RawArrival::Poisson { rate_per_s } => Arrival::Poisson {
                rate_per_s: rate(rate_per_s)?,
            },
            RawArrival::Constant { rate_per_s } => Arrival::Constant {
                rate_per_s: rate(rate_per_s)?,
            },
            RawArrival::Gamma {
                rate_per_s,
                burstiness,
            } => {
                if !(burstiness.is_finite() && burstiness > 0.0) {
                    return Err(format!("burstiness must be positive, got {burstiness}"));
                }
                Arrival::Gamma {
                    rate_per_s: rate(rate_per_s)?,
                    burstiness,
                }
            }
        })
    }
}

impl Arrival {
    /// Mean requests per second.
    pub fn rate_per_s(&self) -> f64 {
        match *self {
            Arrival::Poisson { rate_per_s }
            | Arrival::Constant { rate_per_s }
            | Arrival::Gamma { rate_per_s, .. } => rate_per_s,
        }
    }

    /// Send times in seconds from the start, up to (not including) `horizon_s`.
    pub fn times<R: Rng + ?Sized>(&self, horizon_s: f64, rng: &mut R) -> Vec<f64> {
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
            };
            t += gap;
            if t >= horizon_s {
                return out;
            }
            out.push(t);
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
        assert!(RawArrival::Poisson { rate_per_s: 0.0 }.validate().is_err());
        assert!(
            RawArrival::Gamma {
                rate_per_s: 1.0,
                burstiness: 0.0
            }
            .validate()
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
