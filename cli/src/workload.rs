//! What `bench` and `stress` share: the durability and key-distribution
//! options, the key picker, and where the database URL comes from.

use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::Distribution;
use writebehind::Durability;

/// Parses `fsync`, `buffered:<N>ms` (N ≥ 1), `none` or `replicated`.
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "fsync" => Ok(Durability::Fsync),
        "none" => Ok(Durability::None),
        "replicated" => Ok(Durability::Replicated),
        _ => {
            let ms = s
                .strip_prefix("buffered:")
                .and_then(|r| r.strip_suffix("ms"))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    format!(
                        "{s:?} is not `fsync`, `buffered:<N>ms` (N ≥ 1), `none` or `replicated`"
                    )
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
        Durability::Replicated => "replicated".into(),
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

/// Where the database URL comes from. A URL on the command line is visible
/// to every user of the machine (`ps`) and kept in shell history, so the
/// environment and a file are offered too.
#[derive(clap::Args, Debug)]
pub struct DbArgs {
    /// The database URL: `sqlite://path`, `postgres://…` or `mysql://…`. For a URL with a
    /// password prefer the environment variable WB_DATABASE_URL or --db-file: arguments
    /// are visible to other users (ps) and kept in shell history.
    #[arg(long, value_name = "URL")]
    db: Option<String>,
    /// Read the database URL from this file (its first line).
    #[arg(long, value_name = "PATH")]
    db_file: Option<PathBuf>,
}

/// The environment variable read when neither `--db` nor `--db-file` is given.
pub const DB_ENV: &str = "WB_DATABASE_URL";

impl DbArgs {
    /// The URL from `--db`, `--db-file` or `WB_DATABASE_URL`, in that
    /// order; `None` when none is set. Both options at once is an error.
    pub fn url(&self) -> Result<Option<String>, String> {
        match (&self.db, &self.db_file) {
            (Some(_), Some(_)) => Err("give the database once: --db or --db-file, not both".into()),
            (Some(url), None) => Ok(Some(url.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the database URL from {}: {e}", path.display())
                })?;
                match text.lines().next().map(str::trim) {
                    Some(url) if !url.is_empty() => Ok(Some(url.to_owned())),
                    _ => Err(format!(
                        "{} holds no database URL on its first line",
                        path.display()
                    )),
                }
            }
            (None, None) => match std::env::var(DB_ENV) {
                Ok(url) if !url.trim().is_empty() => Ok(Some(url.trim().to_owned())),
                _ => Ok(None),
            },
        }
    }

    /// The URL, which this command cannot do without.
    pub fn required(&self) -> Result<String, String> {
        self.url()?
            .ok_or_else(|| format!("no database: give --db URL or --db-file PATH, or set {DB_ENV}"))
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
    }
}

/// Where `stress` and `adopt` replicate to (NATS JetStream).
#[cfg(feature = "nats")]
#[derive(clap::Args, Clone, Debug)]
pub struct ReplicaArgs {
    /// The JetStream stream (created when absent).
    #[arg(long, default_value = "WRITEBEHIND")]
    pub stream: String,
    /// Replicas of the stream when this creates it (3 in production).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// First token of the subjects: the log goes to `<prefix>.<instance>.wal`.
    #[arg(long, default_value = "wb")]
    pub subject_prefix: String,
}

#[cfg(feature = "nats")]
impl ReplicaArgs {
    /// `builder` replicating to `url` with these settings.
    pub fn apply<K: writebehind::CacheKey, V: writebehind::CacheValue>(
        &self,
        builder: writebehind::Builder<K, V>,
        url: &str,
    ) -> writebehind::Builder<K, V> {
        builder.replicate(
            writebehind::nats::JetStream::new(url)
                .stream(&self.stream)
                .replicas(self.replicas)
                .subject_prefix(&self.subject_prefix),
        )
    }
}
