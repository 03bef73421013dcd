//! The figures of a run: one `Outcome` per contender, the `Report` printed as a table or
//! as JSON, and the chart's series.

use serde::Serialize;

use crate::chart;

use super::Shape;

/// One contender's figures (a row of the table, an element of the JSON `results`).
#[derive(Clone, Debug, Serialize)]
pub(super) struct Outcome {
    pub(super) contender: &'static str,
    pub(super) durability: Option<String>,
    pub(super) batch: Option<usize>,
    pub(super) increments: u64,
    pub(super) seconds: f64,
    pub(super) increments_per_sec: f64,
    pub(super) latency_p50_us: f64,
    pub(super) latency_p99_us: f64,
    /// What one latency sample times: one increment, or one batch statement.
    pub(super) latency_of: &'static str,
    pub(super) sql_rows: u64,
    pub(super) sql_rows_per_increment: f64,
    pub(super) flush_rows_per_sec: f64,
    pub(super) db_total: i64,
    pub(super) totals_match: bool,
    /// Throughput divided by the write-through baseline's.
    pub(super) vs_write_through: Option<f64>,
    /// Throughput divided by the raw batched baseline's at the same batch size.
    pub(super) vs_raw_batched: Option<f64>,
    /// `--shape posts`: the table's likes total (`db_total` is its views total).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) db_likes: Option<i64>,
    /// `--shape posts`: what the read-back found wrong (rows, counts, titles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) mismatch: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Report {
    pub(super) database: String,
    pub(super) backend: &'static str,
    pub(super) shape: Shape,
    pub(super) keys: u64,
    pub(super) dist: String,
    pub(super) writers: u64,
    pub(super) flush_interval_ms: u64,
    pub(super) ops: Option<u64>,
    pub(super) duration_secs: Option<f64>,
    pub(super) results: Vec<Outcome>,
    pub(super) totals_match: bool,
}

pub(super) fn report_points(rep: &Report) -> Vec<chart::Series> {
    let mut series: Vec<chart::Series> = Vec::new();
    for r in &rep.results {
        let name = match r.contender {
            "writebehind" | "writebehind flush" => {
                format!("{} {}", r.contender, r.durability.as_deref().unwrap_or(""))
            }
            other => other.to_owned(),
        };
        let Some(batch) = r.batch else {
            continue;
        };
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((batch as f64, r.increments_per_sec)),
            None => series.push(chart::Series {
                name,
                points: vec![(batch as f64, r.increments_per_sec)],
                dashed: r.contender != "writebehind",
            }),
        }
    }
    if let Some(wt) = rep.results.iter().find(|r| r.contender == "write-through") {
        let batches: Vec<f64> = rep
            .results
            .iter()
            .filter_map(|r| r.batch.map(|b| b as f64))
            .collect();
        let lo = batches.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = batches.iter().copied().fold(0.0, f64::max);
        if lo.is_finite() {
            series.push(chart::Series {
                name: "write-through".into(),
                points: vec![(lo, wt.increments_per_sec), (hi, wt.increments_per_sec)],
                dashed: true,
            });
        }
    }
    series
}

pub(super) fn print_table(rep: &Report) {
    println!(
        "writebehind bench: {} ({}), {}{} keys {}, {} writers, flush interval {} ms, {}",
        rep.database,
        rep.backend,
        match rep.shape {
            Shape::Counters => "",
            Shape::Posts => "posts table (views, likes), ",
        },
        rep.keys,
        rep.dist,
        rep.writers,
        rep.flush_interval_ms,
        match (rep.ops, rep.duration_secs) {
            (_, Some(d)) => format!("{d} s per run"),
            (Some(n), None) => format!("{n} increments per run"),
            (None, None) => String::new(),
        }
    );
    println!(
        "{:<17} {:<14} {:>7} {:>10} {:>8} {:>12} {:>10} {:>10} {:>9} {:>11} {:>7} {:>7} {:>6}",
        "contender",
        "durability",
        "batch",
        "increments",
        "seconds",
        "incr/s",
        "p50 µs",
        "p99 µs",
        "rows/incr",
        "flush rows/s",
        "vs WT",
        "vs raw",
        "total"
    );
    for r in &rep.results {
        let ratio = |x: Option<f64>| x.map_or_else(|| "-".into(), |v| format!("{v:.2}x"));
        let lat = |v: f64| {
            if r.latency_of == "batch" {
                format!("{v:.0}/b")
            } else {
                format!("{v:.1}")
            }
        };
        println!(
            "{:<17} {:<14} {:>7} {:>10} {:>8.2} {:>12.0} {:>10} {:>10} {:>9.4} {:>11.0} {:>7} {:>7} {:>6}",
            r.contender,
            r.durability.as_deref().unwrap_or("-"),
            r.batch.map_or_else(|| "-".into(), |b| b.to_string()),
            r.increments,
            r.seconds,
            r.increments_per_sec,
            lat(r.latency_p50_us),
            lat(r.latency_p99_us),
            r.sql_rows_per_increment,
            r.flush_rows_per_sec,
            ratio(r.vs_write_through),
            ratio(r.vs_raw_batched),
            if r.totals_match { "ok" } else { "WRONG" }
        );
    }
    println!("latency: per increment; `/b` = per batch statement (raw batched). vs WT / vs raw: throughput ratios.");
    if rep.shape == Shape::Posts {
        println!("increments: writes of (views +1, likes +1 per tenth); total ok: every row's views, likes and title read back as written.");
        println!("writebehind flush: the cache's flush() alone on the raw batches (`/b` per flush); its vs raw is the flush-throughput ratio.");
    }
}
