//! The load test of `examples/axum_counters.rs`: many connections POST
//! views, the server is killed with SIGKILL midway and restarted on the same
//! WAL directory and database, the rest is sent, the server is stopped with
//! SIGTERM (it closes the cache, which flushes), and then every post's views
//! in the table must be exactly the `200`s it got.
//!
//! A request whose connection broke before its answer (the kill) is *in
//! flight*: the server may or may not have acknowledged it, so for each post
//! `acked <= views <= acked + in_flight` must hold, with `acked` exact when
//! nothing was in flight. Reads are checked too: before the stop, `GET
//! /posts/{id}` (through the cache) must answer within the same bounds.
//!
//! Loopback only; every loop is bounded by the request count and a
//! deadline, and the server is killed on the way out whatever happens.
//! Run by `scripts/axum-load-test`, which builds the server next to it:
//!
//! ```text
//! cargo build --example axum_counters && cargo run --example axum_load -- --requests 5000
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use sqlx::Row;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    server: PathBuf,
    work: PathBuf,
    db: Option<String>,
    connections: usize,
    requests: u64,
    posts: u64,
    kill_at: f64,
    max_secs: u64,
    durability: String,
}

const USAGE: &str = "usage: axum_load --work DIR [--server PATH] [--db URL] [--connections N] \
    [--requests N] [--posts N] [--kill-at FRACTION] [--max-secs S] [--durability MODE]
  --work DIR        the server's WAL directory goes here (and SQLite's file without --db)
  --server PATH     the axum_counters binary (default: beside this one)
  --db URL          the database (default: SQLite under --work); its posts table is used as is
  --connections N   concurrent keep-alive connections (default 32)
  --requests N      POSTs to send in all (default 5000)
  --posts N         post ids 1..=N (default 50)
  --kill-at F       SIGKILL the server once this fraction of the requests was answered (default 0.5)
  --max-secs S      give up after S seconds (default 300)
  --durability M    passed to the server (default fsync: a 200 is on disk)";

fn parse_args() -> Result<Args, String> {
    let mut server = None;
    let mut args = Args {
        server: PathBuf::new(),
        work: PathBuf::new(),
        db: None,
        connections: 32,
        requests: 5000,
        posts: 50,
        kill_at: 0.5,
        max_secs: 300,
        durability: "fsync".into(),
    };
    let mut work = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| format!("{flag}: {e}"))
        }
        match flag.as_str() {
            "--server" => server = Some(PathBuf::from(value()?)),
            "--work" => work = Some(PathBuf::from(value()?)),
            "--db" => args.db = Some(value()?),
            "--connections" => args.connections = num(&flag, value()?)?,
            "--requests" => args.requests = num(&flag, value()?)?,
            "--posts" => args.posts = num(&flag, value()?)?,
            "--kill-at" => args.kill_at = num(&flag, value()?)?,
            "--max-secs" => args.max_secs = num(&flag, value()?)?,
            "--durability" => args.durability = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    args.work = work.ok_or("--work DIR is required (try --help)")?;
    args.server = match server {
        Some(s) => s,
        None => std::env::current_exe()
            .map_err(|e| format!("where am I: {e}"))?
            .with_file_name(format!("axum_counters{}", std::env::consts::EXE_SUFFIX)),
    };
    if args.connections == 0 || args.posts == 0 || !(0.0..=1.0).contains(&args.kill_at) {
        return Err("--connections and --posts must be at least 1, --kill-at within 0..=1".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(()) => {}
        Err(e) => {
            eprintln!("axum_load: FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// What the requests of one post came to.
#[derive(Clone, Copy, Default, Debug)]
struct Tally {
    /// `200`s.
    acked: u64,
    /// Sent, and the connection broke before an answer.
    in_flight: u64,
    /// Answered with another status (counted as possibly applied, like in flight).
    other: u64,
}

struct Shared {
    addr: watch::Receiver<Option<std::net::SocketAddr>>,
    tallies: Mutex<HashMap<u64, Tally>>,
    /// Requests taken by a worker (each is sent once, never retried).
    taken: AtomicU64,
    answered: AtomicU64,
    connect_failures: AtomicU64,
    total: u64,
    posts: u64,
}

async fn run() -> Result<(), BoxError> {
    let args = parse_args()?;
    let wal = args.work.join("wal");
    let _ = std::fs::remove_dir_all(&wal);
    std::fs::create_dir_all(&args.work)?;
    let url = match &args.db {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", args.work.join("posts.db").display()),
    };
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let server_args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--db".into(),
        url.clone(),
        "--dir".into(),
        wal.display().to_string(),
        "--posts".into(),
        args.posts.to_string(),
        "--durability".into(),
        args.durability.clone(),
    ];
    println!(
        "axum_load: {} POSTs over {} connections to posts 1..={}, SIGKILL at {:.0}%, durability {} -> {}",
        args.requests,
        args.connections,
        args.posts,
        args.kill_at * 100.0,
        args.durability,
        writebehind::redact_url(&url)
    );

    let mut server = Server::start(&args.server, &server_args, deadline).await?;
    let outcome = drive(&args, &url, &mut server, &server_args, deadline).await;
    if outcome.is_err() {
        server.kill().await;
    }
    outcome
}

async fn drive(
    args: &Args,
    url: &str,
    server: &mut Server,
    server_args: &[String],
    deadline: Instant,
) -> Result<(), BoxError> {
    // The server made the table and the posts and holds nothing yet: what
    // the table has now is the base (a reused database keeps its counts).
    let base = read_views(url).await?;
    let (addr_tx, addr_rx) = watch::channel(Some(server.addr));
    let shared = Arc::new(Shared {
        addr: addr_rx,
        tallies: Mutex::new(HashMap::new()),
        taken: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
        total: args.requests,
        posts: args.posts,
    });
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(worker(shared.clone(), i as u64, deadline)))
        .collect();

    // Midway: SIGKILL, then the same command again on the same WAL and database.
    let kill_after = (args.requests as f64 * args.kill_at) as u64;
    while shared.answered.load(Ordering::Relaxed) < kill_after && Instant::now() < deadline {
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = addr_tx.send(None);
    server.kill().await;
    let killed_at = started.elapsed();
    let acked_at_kill = totals(&shared).acked;
    let restarted = Instant::now();
    *server = Server::start(&args.server, server_args, deadline).await?;
    // By now every request the kill cut has failed on its connection.
    println!(
        "  SIGKILL after {:.2}s: {acked_at_kill} acked by then, {} in flight; restarted in {:.2}s on the same WAL directory and database",
        killed_at.as_secs_f64(),
        totals(&shared).in_flight,
        restarted.elapsed().as_secs_f64()
    );
    let _ = addr_tx.send(Some(server.addr));

    for w in workers {
        w.await??;
    }
    if shared.taken.load(Ordering::Relaxed) < args.requests {
        return Err(format!(
            "gave up at the deadline ({} s) after {} of {} requests",
            args.max_secs,
            shared.taken.load(Ordering::Relaxed),
            args.requests
        )
        .into());
    }
    let sent_secs = started.elapsed().as_secs_f64();
    let tallies = shared.tallies.lock().clone();
    let all = totals(&shared);
    println!(
        "  sent {} in {sent_secs:.2}s ({:.0}/s): {} acked (200), {} in flight at the kill, {} other answers, {} connection attempts refused",
        args.requests,
        args.requests as f64 / sent_secs,
        all.acked,
        all.in_flight,
        all.other,
        shared.connect_failures.load(Ordering::Relaxed)
    );

    // Reads through the cache, before the stop: row + pending views.
    let mut problems = Vec::new();
    let mut conn = connect(server.addr).await?;
    for id in 1..=args.posts {
        let t = tallies.get(&id).copied().unwrap_or_default();
        let (status, body) = request(&mut conn, "GET", &format!("/posts/{id}")).await?;
        if status != StatusCode::OK {
            problems.push(format!("GET /posts/{id}: {status} {body}"));
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(&body)?;
        let views = json["views"]
            .as_i64()
            .ok_or_else(|| format!("GET /posts/{id}: {body}"))?;
        let got = views - base.get(&id).copied().unwrap_or(0);
        if !within(got, t) {
            problems.push(format!(
                "post {id}: GET reads {got} new views; acked {}, in flight {}, other {}",
                t.acked, t.in_flight, t.other
            ));
        }
    }
    drop(conn);

    // SIGTERM: the server stops taking requests, closes the cache (flushes), exits 0.
    let stopping = Instant::now();
    let status = server.terminate(Duration::from_secs(60)).await?;
    println!(
        "  SIGTERM: the server closed in {:.2}s ({status})",
        stopping.elapsed().as_secs_f64()
    );
    if !status.success() {
        problems.push(format!("the server exited with {status} after SIGTERM"));
    }

    let after = read_views(url).await?;
    let (mut exact, mut uncertain) = (0, 0);
    let mut db_total = 0i64;
    for id in 1..=args.posts {
        let t = tallies.get(&id).copied().unwrap_or_default();
        let got = after.get(&id).copied().unwrap_or(0) - base.get(&id).copied().unwrap_or(0);
        db_total += got;
        if !within(got, t) {
            problems.push(format!(
                "post {id}: the table gained {got} views; acked {}, in flight {}, other {} (allowed {}..={})",
                t.acked,
                t.in_flight,
                t.other,
                t.acked,
                t.acked + t.in_flight + t.other
            ));
        } else if t.in_flight + t.other == 0 {
            exact += 1;
        } else {
            uncertain += 1;
        }
    }
    println!(
        "  table: {db_total} new views for {} acked (+{} in flight); {exact} posts exact, {uncertain} within their in-flight allowance, {} wrong",
        all.acked,
        all.in_flight + all.other,
        problems.len()
    );
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("  {p}");
        }
        return Err(format!("{} violations", problems.len()).into());
    }
    println!("OK: every acknowledged view is in the table exactly once");
    Ok(())
}

fn within(got: i64, t: Tally) -> bool {
    let low = t.acked as i64;
    let high = (t.acked + t.in_flight + t.other) as i64;
    (low..=high).contains(&got)
}

fn totals(shared: &Shared) -> Tally {
    let tallies = shared.tallies.lock();
    tallies.values().fold(Tally::default(), |a, t| Tally {
        acked: a.acked + t.acked,
        in_flight: a.in_flight + t.in_flight,
        other: a.other + t.other,
    })
}

/// One keep-alive connection sending POSTs one at a time, until the
/// requests are all taken or the deadline passes.
async fn worker(shared: Arc<Shared>, seed: u64, deadline: Instant) -> Result<(), BoxError> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut addr_rx = shared.addr.clone();
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        if Instant::now() >= deadline {
            return Ok(());
        }
        // A connection first: while the server is down, wait for the next one.
        if let Some(c) = &mut conn {
            if c.ready().await.is_err() {
                conn = None;
            }
        }
        if conn.is_none() {
            let Some(addr) = *addr_rx.borrow_and_update() else {
                let _ = tokio::time::timeout(Duration::from_millis(100), addr_rx.changed()).await;
                continue;
            };
            match connect(addr).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(sender) = conn.as_mut() else {
            continue;
        };
        if shared.taken.fetch_add(1, Ordering::Relaxed) >= shared.total {
            return Ok(());
        }
        let id = rng.u64(1..=shared.posts);
        let req = Request::post(format!("/posts/{id}/view"))
            .header(hyper::header::HOST, "127.0.0.1")
            .body(Empty::new())?;
        let outcome = sender.send_request(req).await;
        {
            let mut tallies = shared.tallies.lock();
            let t = tallies.entry(id).or_default();
            match &outcome {
                Ok(resp) if resp.status() == StatusCode::OK => t.acked += 1,
                Ok(_) => t.other += 1,
                Err(_) => t.in_flight += 1,
            }
        }
        shared.answered.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(resp) => {
                let status = resp.status();
                // The answer counts from its status line; the body is read
                // to keep the connection usable.
                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                if status != StatusCode::OK {
                    let text = body.map(|b| String::from_utf8_lossy(&b).into_owned());
                    eprintln!(
                        "  POST /posts/{id}/view: {status} {}",
                        text.unwrap_or_default().trim()
                    );
                }
            }
            Err(_) => conn = None,
        }
    }
}

async fn connect(addr: std::net::SocketAddr) -> Result<SendRequest<Empty<Bytes>>, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn request(
    conn: &mut SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
) -> Result<(StatusCode, String), BoxError> {
    conn.ready().await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(Empty::new())?;
    let resp = conn.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The server process: its address (read from its "listening on" line) and
/// its output, echoed with a prefix.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Server {
    async fn start(path: &PathBuf, args: &[String], deadline: Instant) -> Result<Server, BoxError> {
        let mut child = Command::new(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", path.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(120));
        let addr = tokio::time::timeout(wait, async {
            while let Some(line) = lines.next_line().await? {
                println!("  server| {line}");
                if let Some(rest) = line.strip_prefix("listening on http://") {
                    return Ok::<_, BoxError>(Some(rest.trim().parse()?));
                }
            }
            Ok(None)
        })
        .await;
        let addr = match addr {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) => {
                let status = child.wait().await?;
                return Err(format!("the server exited before listening ({status})").into());
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let _ = child.kill().await;
                return Err("the server did not listen within its time".into());
            }
        };
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("  server| {line}");
            }
        });
        Ok(Server { child, addr })
    }

    /// SIGKILL, and wait for it to be gone.
    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, and wait up to `limit` for a clean exit (SIGKILL after that).
    async fn terminate(&mut self, limit: Duration) -> Result<ExitStatus, BoxError> {
        let pid = self.child.id().ok_or("the server is gone already")?;
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid}: {sent}").into());
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.kill().await;
                Err(format!("the server did not stop within {limit:?} of SIGTERM").into())
            }
        }
    }
}

/// `views` per post id, straight from the table.
async fn read_views(url: &str) -> Result<HashMap<u64, i64>, BoxError> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await?;
    let rows = sqlx::query("SELECT id, views FROM posts")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    let mut views = HashMap::new();
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let v: i64 = row.try_get("views")?;
        views.insert(id as u64, v);
    }
    Ok(views)
}
