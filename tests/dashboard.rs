//! The Grafana dashboard in `docs/dashboards/writebehind.json` only asks for
//! series the library exports (`writebehind::metrics::METRICS`), and has a
//! panel for each figure an operator looks at first.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

fn dashboard() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/dashboards/writebehind.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The metric names in a PromQL expression.
fn names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("writebehind_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_panel_queries_a_series_the_library_exports() {
    let exported: BTreeSet<&str> = writebehind::metrics::METRICS
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    let histograms: BTreeSet<&str> = writebehind::metrics::METRICS
        .iter()
        .filter(|(_, kind, _)| *kind == "histogram")
        .map(|(name, _, _)| *name)
        .collect();
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    let mut used = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let found = names(expr);
            assert!(
                !found.is_empty(),
                "panel {title:?}: {expr:?} names no series"
            );
            for n in found {
                // A histogram is scraped as _bucket, _sum and _count.
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s).filter(|b| histograms.contains(b)))
                    .unwrap_or(&n)
                    .to_owned();
                assert!(
                    exported.contains(base.as_str()),
                    "panel {title:?} asks for {n}, which the library does not export"
                );
                used.insert(base);
            }
        }
    }
    for first in [
        "writebehind_writes_total",
        "writebehind_oldest_unflushed_seconds",
        "writebehind_dirty_entries",
        "writebehind_dirty_bytes",
        "writebehind_max_dirty_entries",
        "writebehind_max_dirty_bytes",
        "writebehind_flushes_total",
        "writebehind_flush_failures_total",
        "writebehind_retries_total",
        "writebehind_wal_bytes",
        "writebehind_replication_lag_lsns",
        "writebehind_hit_ratio",
        "writebehind_load_seconds",
        "writebehind_conflicts_total",
        "writebehind_dead_letters_total",
        "writebehind_fenced",
    ] {
        assert!(used.contains(first), "no panel shows {first}");
    }
}

#[test]
fn names_are_found_in_promql() {
    assert_eq!(
        names("histogram_quantile(0.99, sum by (le) (rate(writebehind_flush_seconds_bucket[5m])))"),
        vec!["writebehind_flush_seconds_bucket"]
    );
    assert_eq!(
        names("sum(a) + writebehind_x / writebehind_y_total"),
        vec!["writebehind_x", "writebehind_y_total"]
    );
}
