//! What `bench` and `stress` share: the durability and key-distribution
//! options, the key picker, and URLs shown without their password.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::Distribution;
use writebehind::Durability;

/// Parses `fsync`, `buffered:<N>ms` (N ≥ 1) or `none`.
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "fsync" => Ok(Durability::Fsync),
        "none" => Ok(Durability::None),
        _ => {
            let ms = s
                .strip_prefix("buffered:")
                .and_then(|r| r.strip_suffix("ms"))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    format!("{s:?} is not `fsync`, `buffered:<N>ms` (N ≥ 1) or `none`")
                })?;
            Ok(Durability::Buffered {
                interval: Duration::from_millis(ms),
            })
        }
    }
}

/// The option text of a durability mode (what [`parse_durability`] reads).
pub fn durability_name(d: Durability) -> String {
    match d {
        Durability::Fsync => "fsync".into(),
        Durability::Buffered { interval } => format!("buffered:{}ms", interval.as_millis()),
        Durability::None => "none".into(),
    }
}

/// Key distribution.
#[derive(Clone, Copy, Debug)]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Zipf with this exponent: key `k0` is the most popular.
    Zipf(f64),
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dist::Uniform => f.write_str("uniform"),
            Dist::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Parses `uniform` or `zipf:S` (S ≥ 0).
pub fn parse_dist(s: &str) -> Result<Dist, String> {
    if s == "uniform" {
        return Ok(Dist::Uniform);
    }
    let exp = s
        .strip_prefix("zipf:")
        .ok_or_else(|| format!("{s:?} is neither `uniform` nor `zipf:S`"))?;
    match exp.parse::<f64>() {
        Ok(e) if e.is_finite() && e >= 0.0 => Ok(Dist::Zipf(e)),
        _ => Err(format!("zipf exponent {exp:?} is not a number ≥ 0")),
    }
}

/// Picks key indexes `0..keys` per a [`Dist`].
pub enum Picker {
    /// Every index equally likely.
    Uniform(u64),
    /// Zipf over ranks 1..=keys, index = rank - 1.
    Zipf(rand_distr::Zipf<f64>),
}

impl Picker {
    /// A picker over `keys` indexes.
    pub fn new(keys: u64, dist: Dist) -> Result<Picker, String> {
        match dist {
            Dist::Uniform => Ok(Picker::Uniform(keys)),
            // Key counts stay far below 2^53, where f64 stops being exact.
            Dist::Zipf(s) => rand_distr::Zipf::new(keys as f64, s)
                .map(Picker::Zipf)
                .map_err(|e| format!("zipf:{s} over {keys} keys: {e}")),
        }
    }

    /// The next key index.
    pub fn pick(&self, rng: &mut StdRng) -> u64 {
        match self {
            Picker::Uniform(n) => rng.random_range(0..*n),
            Picker::Zipf(z) => (z.sample(rng) as u64).saturating_sub(1),
        }
    }
}

/// The URL for messages: credentials that carry a password are hidden
/// whole; a user name alone is kept.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s && url[s + 3..at].contains(':') => {
            format!("{}***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn options_parse_and_print_back() {
        for s in ["fsync", "none", "buffered:10ms"] {
            assert_eq!(durability_name(parse_durability(s).unwrap()), s);
        }
        assert!(parse_durability("buffered:0ms").is_err());
        assert!(matches!(parse_dist("uniform"), Ok(Dist::Uniform)));
        assert!(matches!(parse_dist("zipf:1.5"), Ok(Dist::Zipf(s)) if s == 1.5));
        assert!(parse_dist("zipf:-1").is_err());
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://./x.db"), "sqlite://./x.db");
    }
}
