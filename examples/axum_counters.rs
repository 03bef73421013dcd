//! A web service counting post views behind the cache: axum in front,
//! writebehind between it and the `posts` table.
//!
//! - `POST /posts/{id}/view` adds one view through the cache and answers
//!   `200` once the cache acknowledged the add: under the default
//!   durability (`fsync`) the view is on disk in the WAL by then, so a crash
//!   right after the answer loses nothing. The flush to SQL runs behind,
//!   coalesced per post (`views = views + Δ`). An unknown post is `404`.
//! - `GET /posts/{id}` answers `{"id", "title", "views", "likes"}`: the counts
//!   are read through the cache (the row as flushed plus the views still
//!   pending), the title from the table.
//! - Any error of the cache or the database is `503` with the error's text.
//! - SIGTERM or Ctrl-C: stop taking requests, finish those in progress,
//!   close the cache (which flushes everything acknowledged), exit 0.
//!
//! The table is the user's, made by plain SQL when missing; `--posts N` adds
//! the posts `1..=N` (with titles) that are not there yet.
//!
//! ```text
//! cargo run --example axum_counters -- --listen 127.0.0.1:3000
//! curl -X POST localhost:3000/posts/7/view
//! curl localhost:3000/posts/7
//! ```
//!
//! `scripts/axum-load-test` drives it from many connections, kills it with
//! SIGKILL midway, restarts it, and checks that every `200` is counted
//! exactly once in the table (`examples/axum_load.rs`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use writebehind::{Durability, Record, WriteBehind};

/// The two counters of a post. `update_only`: posts are made elsewhere (by
/// the service's own SQL); the cache only counts on rows that exist.
#[derive(Clone, Debug, Default, Serialize, Deserialize, Record)]
#[writebehind(table = "posts", key(id), update_only)]
struct PostCounters {
    #[writebehind(counter)]
    views: i64,
    #[writebehind(counter)]
    likes: i64,
}

/// The user's table, as plain SQL (the same text on every backend).
const CREATE_POSTS: &str = "CREATE TABLE IF NOT EXISTS posts (\
     id BIGINT PRIMARY KEY, \
     title TEXT NOT NULL, \
     views BIGINT NOT NULL DEFAULT 0, \
     likes BIGINT NOT NULL DEFAULT 0)";

struct Args {
    listen: String,
    db: Option<String>,
    dir: PathBuf,
    durability: Durability,
    posts: u64,
}

const USAGE: &str = "usage: axum_counters [--listen ADDR] [--db URL] [--dir WAL_DIR] \
    [--durability fsync|buffered|none] [--posts N]
  --listen ADDR   where to listen (default 127.0.0.1:3000; port 0 picks a free one)
  --db URL        sqlite://, postgres:// or mysql:// (default sqlite://<WAL_DIR>.db)
  --dir WAL_DIR   the cache's WAL directory (default ./data/axum_counters)
  --durability    when a view is acknowledged: fsync (default: on disk), buffered
                  (written, fsynced within 10 ms), none (written, the OS decides)
  --posts N       make sure posts 1..=N exist, with titles (default 100; 0: none)";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:3000".into(),
        db: None,
        dir: PathBuf::from("./data/axum_counters"),
        durability: Durability::Fsync,
        posts: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--db" => args.db = Some(value()?),
            "--dir" => args.dir = value()?.into(),
            "--durability" => {
                args.durability = match value()?.as_str() {
                    "fsync" => Durability::Fsync,
                    "buffered" => Durability::Buffered {
                        interval: Duration::from_millis(10),
                    },
                    "none" => Durability::None,
                    other => {
                        return Err(format!(
                            "--durability: {other:?} is not fsync, buffered or none"
                        ))
                    }
                }
            }
            "--posts" => args.posts = value()?.parse().map_err(|e| format!("--posts: {e}"))?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

#[derive(Clone)]
struct App {
    cache: WriteBehind<i64, PostCounters>,
    /// For the titles: the cache holds only the counters.
    pool: sqlx::AnyPool,
    /// `$1` on PostgreSQL, `?` elsewhere.
    param: &'static str,
    /// The posts seen to exist (posts are not deleted in this example).
    known: Arc<RwLock<HashSet<i64>>>,
}

/// What a handler can fail with; never a panic.
enum AppError {
    NotFound(i64),
    Cache(writebehind::Error),
    Sql(sqlx::Error),
}

impl From<writebehind::Error> for AppError {
    fn from(e: writebehind::Error) -> Self {
        AppError::Cache(e)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Sql(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::NotFound(id) => (StatusCode::NOT_FOUND, format!("no post {id}\n")),
            AppError::Cache(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("cache: {e}\n")),
            AppError::Sql(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")),
        }
        .into_response()
    }
}

/// `POST /posts/{id}/view`: one view, acknowledged by the cache.
async fn view(State(app): State<App>, Path(id): Path<i64>) -> Result<StatusCode, AppError> {
    // The post must exist, so a mistyped id is a 404 and not a dead letter.
    // Known ids are remembered: the table is asked once per post, not per view.
    if !app.known.read().contains(&id) {
        let sql = format!("SELECT id FROM posts WHERE id = {}", app.param);
        let found = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&app.pool)
            .await?;
        if found.is_none() {
            return Err(AppError::NotFound(id));
        }
        app.known.write().insert(id);
    }
    app.cache
        .add(&id, PostCounters { views: 1, likes: 0 })
        .await?;
    Ok(StatusCode::OK)
}

#[derive(Serialize)]
struct PostView {
    id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    views: i64,
    likes: i64,
}

/// `GET /posts/{id}`: the counts through the cache, the title from the table.
async fn show(State(app): State<App>, Path(id): Path<i64>) -> Result<Json<PostView>, AppError> {
    let counts = app.cache.get(&id).await?;
    let sql = format!("SELECT title FROM posts WHERE id = {}", app.param);
    let title = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&app.pool)
        .await?
        .map(|row| row.try_get::<String, _>("title"))
        .transpose()?;
    let Some(PostCounters { views, likes }) = counts else {
        return Err(AppError::NotFound(id));
    };
    Ok(Json(PostView {
        id,
        title,
        views,
        likes,
    }))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("axum_counters: error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir)?;
    let url = match &args.db {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", args.dir.with_extension("db").display()),
    };
    let pool = connect(&url).await?;
    prepare_posts(&pool, &url, args.posts).await?;

    // Opening replays what the WAL holds (after a crash: every view that
    // was acknowledged and not yet in the table) and checks the table.
    let cache = WriteBehind::<i64, PostCounters>::builder(&args.dir)
        .database(url.clone())
        .create_tables(true)
        .durability(args.durability)
        .flush_interval(Duration::from_millis(100))
        .open()
        .await?;
    let recovery = cache.recovery();
    println!(
        "axum_counters: {} -> {}; replayed {} WAL records ({} posts pending)",
        args.dir.display(),
        writebehind::redact_url(&url),
        recovery.records_replayed,
        recovery.dirty_entries
    );

    let app = App {
        cache: cache.clone(),
        pool: pool.clone(),
        param: if url.starts_with("postgres") {
            "$1"
        } else {
            "?"
        },
        known: Arc::default(),
    };
    let router = Router::new()
        .route("/posts/{id}/view", post(view))
        .route("/posts/{id}", get(show))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    // The load test reads this line for the port.
    println!("listening on http://{}", listener.local_addr()?);

    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    // Every request that got a 200 is in the WAL; closing flushes it all.
    let stats = cache.stats();
    let closed = cache.close().await;
    pool.close().await;
    println!(
        "axum_counters: closed after {} adds; {} flushes wrote {} rows",
        stats.adds, stats.flushes, stats.rows_flushed
    );
    served?;
    closed?;
    Ok(())
}

/// SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("axum_counters: no Ctrl-C handler: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                eprintln!("axum_counters: no SIGTERM handler: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    println!("axum_counters: shutting down: finishing requests, then closing the cache");
}

async fn connect(url: &str) -> Result<sqlx::AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
        format!("{url}?mode=rwc")
    } else {
        url.to_owned()
    };
    sqlx::pool::PoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
}

/// `posts` when missing, and the posts `1..=n` that are not there yet.
async fn prepare_posts(pool: &sqlx::AnyPool, url: &str, n: u64) -> Result<(), sqlx::Error> {
    sqlx::query(CREATE_POSTS).execute(pool).await?;
    let (insert, tail) = if url.starts_with("mysql") || url.starts_with("mariadb") {
        ("INSERT IGNORE INTO", "")
    } else {
        ("INSERT INTO", " ON CONFLICT (id) DO NOTHING")
    };
    let ids: Vec<u64> = (1..=n).collect();
    for chunk in ids.chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|id| format!("({id}, 'Post number {id}')"))
            .collect();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{insert} posts (id, title) VALUES {}{tail}",
            rows.join(", ")
        )))
        .execute(pool)
        .await?;
    }
    Ok(())
}
