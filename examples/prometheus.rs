//! A cache's metrics on a Prometheus endpoint: installs the
//! `metrics-exporter-prometheus` recorder on a loopback port, runs a short
//! mixed workload (adds, puts, deletes, reads, flushes) and keeps serving.
//!
//! ```text
//! cargo run --example prometheus -- --listen 127.0.0.1:9187 --serve-secs 60
//! curl -s http://127.0.0.1:9187/metrics | grep ^writebehind_
//! ```
//!
//! Flags (or environment): `--listen ADDR` (`WB_METRICS_ADDR`, default
//! 127.0.0.1:9187), `--db URL` (`WB_DATABASE_URL`, default an SQLite file
//! beside the WAL), `--wal DIR` (default `./data/prometheus-wal`), `--ops N`
//! (default 20 000), `--serve-secs S` (default 60). The recorder must be
//! installed before the cache opens: a cache registers its metrics at open.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use writebehind::{Durability, Stats, WriteBehind};

/// What to run.
#[derive(Parser, Debug, Clone)]
pub struct Options {
    /// Address of the metrics endpoint (loopback); else `WB_METRICS_ADDR`, else 127.0.0.1:9187.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Database URL; else `WB_DATABASE_URL`, else an SQLite file beside the WAL.
    #[arg(long)]
    pub db: Option<String>,
    /// WAL directory.
    #[arg(long, default_value = "./data/prometheus-wal")]
    pub wal: PathBuf,
    /// Table name.
    #[arg(long, default_value = "prometheus_example")]
    pub table: String,
    /// Writes to make.
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
    /// Seconds to keep serving after the workload.
    #[arg(long, default_value_t = 60)]
    pub serve_secs: u64,
}

/// Installs the Prometheus recorder and its HTTP listener on `addr`.
pub fn install(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; this example serves on loopback only"
        )
        .into());
    }
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    Ok(())
}

/// Opens the cache, writes `ops` times (adds to counters, puts and deletes
/// on `item:*` keys, a read every fourth write), flushes, invalidates
/// `page:0` and every `page:1*` key and reads 20 pages back, closes, and
/// returns the final figures.
pub async fn workload(opts: &Options) -> Result<Stats, Box<dyn std::error::Error>> {
    // Private, as the cache would make it: else opening it warns that others can read it.
    writebehind_wal::fs::create_dir_all_private(&opts.wal)
        .map_err(|e| format!("cannot create {}: {e}", opts.wal.display()))?;
    let db = match &opts.db {
        Some(url) => url.clone(),
        None => format!(
            "sqlite://{}?mode=rwc",
            opts.wal.join("example.sqlite").display()
        ),
    };
    let cache = WriteBehind::<String, i64>::builder(&opts.wal)
        .database(db)
        .table(opts.table.clone())
        .create_tables(true)
        .durability(Durability::Buffered {
            interval: Duration::from_millis(5),
        })
        .flush_interval(Duration::from_millis(100))
        .open()
        .await?;
    for i in 0..opts.ops {
        let key = format!("page:{}", i % 200);
        match i % 10 {
            // One write in ten waits for an fsync (measured).
            0 => {
                cache.add_with(key.as_str(), 1, Durability::Fsync).await?;
            }
            7 => {
                cache
                    .put(format!("item:{}", i % 50).as_str(), &(i as i64))
                    .await?;
            }
            9 => {
                cache
                    .delete(format!("item:{}", (i + 25) % 50).as_str())
                    .await?;
            }
            _ => {
                cache.add(key.as_str(), 1).await?;
            }
        }
        if i % 4 == 0 {
            cache
                .get(format!("page:{}", (i * 7) % 400).as_str())
                .await?;
        }
        if i % 5_000 == 4_999 {
            cache.flush().await?;
        }
    }
    cache.flush().await?;
    // The read side: drop clean copies (one key, then a prefix) and read
    // some back from the database.
    cache.invalidate("page:0").await?;
    cache.invalidate_prefix("page:1").await?;
    for i in 0..20 {
        cache.get(format!("page:{i}").as_str()).await?;
    }
    let last = cache.stats();
    cache.close().await?;
    Ok(last)
}

impl Options {
    /// The endpoint's address: the flag, else `WB_METRICS_ADDR`, else 127.0.0.1:9187.
    pub fn listen_addr(&self) -> Result<SocketAddr, Box<dyn std::error::Error>> {
        if let Some(addr) = self.listen {
            return Ok(addr);
        }
        match std::env::var("WB_METRICS_ADDR") {
            Ok(s) => s
                .parse()
                .map_err(|e| format!("WB_METRICS_ADDR={s:?} is not an address: {e}").into()),
            Err(_) => Ok(SocketAddr::from(([127, 0, 0, 1], 9187))),
        }
    }
}

#[tokio::main]
async fn main() {
    let mut opts = Options::parse();
    if opts.db.is_none() {
        opts.db = std::env::var("WB_DATABASE_URL").ok();
    }
    let listen = match opts.listen_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = install(listen) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    match workload(&opts).await {
        Ok(stats) => println!("{stats:?}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    println!(
        "serving http://{}/metrics for {} s",
        listen, opts.serve_secs
    );
    tokio::time::sleep(Duration::from_secs(opts.serve_secs)).await;
}
