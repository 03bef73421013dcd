//! `writebehind bench` end to end: a tiny run on SQLite with `--json` and `--svg`.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn tiny_sqlite_bench_reports_every_contender_and_matching_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("chart.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_writebehind"))
        .args([
            "bench",
            "--ops",
            "3000",
            "--keys",
            "200",
            "--dist",
            "zipf:1.2",
            "--writers",
            "2",
            "--durability",
            "none,buffered:5ms",
            "--batch",
            "50,500",
            "--flush-interval-ms",
            "20",
            "--baseline-secs",
            "2",
            "--json",
            "--svg",
        ])
        .arg(&svg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    // Quiet in a pipe: no progress bar output.
    assert_eq!(stderr, "");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["backend"], "sqlite");
    assert_eq!(v["keys"], 200);
    assert_eq!(v["dist"], "zipf:1.2");
    assert_eq!(v["writers"], 2);
    assert_eq!(v["ops"], 3000);
    assert_eq!(v["totals_match"], true);

    let results = v["results"].as_array().unwrap();
    let of = |c: &'static str| results.iter().filter(move |r| r["contender"] == c);
    // 2 durability modes x 2 batch sizes, a raw baseline per batch size, one write-through.
    assert_eq!(of("writebehind").count(), 4);
    assert_eq!(of("raw batched").count(), 2);
    assert_eq!(of("write-through").count(), 1);
    assert_eq!(results.len(), 7);
    for r in results {
        assert_eq!(r["totals_match"], true, "{r}");
        assert_eq!(r["db_total"], r["increments"], "{r}");
        assert!(r["increments_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["seconds"].as_f64().unwrap() > 0.0, "{r}");
        assert!(
            r["latency_p99_us"].as_f64().unwrap() >= r["latency_p50_us"].as_f64().unwrap(),
            "{r}"
        );
        let rows = r["sql_rows"].as_u64().unwrap();
        assert!(rows >= 1, "{r}");
    }
    for r in of("writebehind") {
        assert_eq!(r["increments"], 3000, "{r}");
        // Coalescing: never more rows than increments, and never fewer than distinct keys hit.
        assert!(r["sql_rows"].as_u64().unwrap() <= 3000, "{r}");
        assert!(r["sql_rows_per_increment"].as_f64().unwrap() <= 1.0, "{r}");
        assert!(r["vs_write_through"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["vs_raw_batched"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["latency_of"], "increment");
    }
    for r in of("raw batched") {
        assert_eq!(r["increments"], 3000, "{r}");
        assert_eq!(r["latency_of"], "batch");
    }
    let wt = of("write-through").next().unwrap();
    assert_eq!(wt["sql_rows"], wt["increments"]);
    assert_eq!(wt["sql_rows_per_increment"], 1.0);

    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg "));
    // One line per durability mode, the raw baseline and the write-through line.
    assert_eq!(chart.matches("<polyline").count(), 4);
    assert!(chart.contains("writebehind buffered:5ms"));
}

#[test]
fn bad_options_are_one_line_errors() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_writebehind"))
            .arg("bench")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--durability", "sometimes"]);
    assert_eq!(out.status.code(), Some(2)); // clap usage error
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not `fsync`, `buffered:<N>ms`"));
    // Nothing listens on port 1: refused at once, and the password is not printed.
    let out = run(&["--db", "postgres://u:secret@127.0.0.1:1/db", "--ops", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot connect to postgres://u:***@127.0.0.1:1/db: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("secret"));
    let out = run(&["--db", "oracle://x", "--ops", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: database URL oracle://x is not sqlite://, postgres:// or mysql://\n"
    );
}

#[test]
fn tiny_sqlite_posts_bench_checks_every_row_and_reports_the_ratios() {
    let out = Command::new(env!("CARGO_BIN_EXE_writebehind"))
        .args([
            "bench",
            "--shape",
            "posts",
            "--ops",
            "3000",
            "--keys",
            "200",
            "--writers",
            "2",
            "--durability",
            "buffered:5ms",
            "--batch",
            "500",
            "--flush-interval-ms",
            "20",
            "--baseline-secs",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["backend"], "sqlite");
    assert_eq!(v["shape"], "posts");
    // The read-back of every row (views, likes, title) passed for every contender.
    assert_eq!(v["totals_match"], true);
    let results = v["results"].as_array().unwrap();
    let one = |c: &str| {
        let mut it = results.iter().filter(|r| r["contender"] == c);
        let r = it.next().unwrap_or_else(|| panic!("no {c} in {stdout}"));
        assert!(it.next().is_none(), "two {c}");
        r
    };
    for r in results {
        assert_eq!(r["totals_match"], true, "{r}");
        assert!(r.get("mismatch").is_none(), "{r}");
        assert_eq!(r["db_total"], r["increments"], "{r}");
        // One like per tenth write of each writer.
        let likes = r["db_likes"].as_i64().unwrap();
        assert!(
            likes > 0 && likes <= r["increments"].as_i64().unwrap() / 10,
            "{r}"
        );
    }
    let wb = one("writebehind");
    assert_eq!(wb["increments"], 3000);
    assert_eq!(wb["db_likes"], 300);
    assert!(wb["vs_write_through"].as_f64().unwrap() > 0.0, "{wb}");
    assert!(wb["vs_raw_batched"].as_f64().unwrap() > 0.0, "{wb}");
    // The flush-throughput ratio: the cache's flush() on the raw baseline's batches.
    let flush = one("writebehind flush");
    assert_eq!(flush["increments"], 3000);
    assert_eq!(flush["latency_of"], "batch");
    assert_eq!(flush["sql_rows"], one("raw batched")["sql_rows"]);
    assert!(flush["vs_raw_batched"].as_f64().unwrap() > 0.0, "{flush}");
    assert_eq!(one("raw batched")["increments"], 3000);
    let wt = one("write-through");
    assert_eq!(wt["sql_rows"], wt["increments"]);
    assert_eq!(results.len(), 4);
}
