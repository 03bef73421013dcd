//! No command prints a database password: not on stdout, stderr, in
//! `--json`, nor in the error for an unreachable database. The URL comes from
//! `WB_DATABASE_URL` or `--db-file`, the ways the README recommends, with the
//! password in the user information or as `?password=`. PostgreSQL here trusts
//! local connections, so a password it never checks still lets the runs work.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_writebehind");
const SECRET: &str = "wb-Secret-7f3a91";

fn env_url(var: &str, example: &str) -> String {
    match std::env::var(var) {
        Ok(u) if !u.is_empty() => u,
        _ => panic!("{var} is not set: export {var}={example} (scripts/test sets it)"),
    }
}

/// `url` with the secret as the password, and as a `password` parameter.
fn with_secret(url: &str) -> (String, String) {
    let mut a = url::Url::parse(url).unwrap();
    a.set_password(Some(SECRET)).unwrap();
    let mut b = url::Url::parse(url).unwrap();
    b.query_pairs_mut().append_pair("password", SECRET);
    (a.to_string(), b.to_string())
}

/// An address nothing listens on, with the same scheme and credentials.
fn unreachable(url: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_port(Some(1)).unwrap();
    u.to_string()
}

enum Db<'a> {
    Env(&'a str),
    File(&'a Path),
}

fn run(args: &[&str], db: Db<'_>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("WB_DATABASE_URL");
    match db {
        Db::Env(url) => {
            cmd.env("WB_DATABASE_URL", url);
        }
        Db::File(path) => {
            cmd.arg("--db-file").arg(path);
        }
    }
    cmd.output().unwrap()
}

/// Asserts the secret is in no output; returns stdout and stderr.
fn clean(what: &str, out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{what}: the password was printed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

#[test]
fn no_output_of_any_command_shows_the_password() {
    let pg = env_url("WB_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
    let my = env_url("WB_MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
    let tmp = tempfile::tempdir().unwrap();
    let table = format!("wb_secret_{:x}", fastrand::u32(..));
    let (pg_user, pg_param) = with_secret(&pg);

    // Working runs: stress (its JSON line), flush, bench --json.
    let wal = tmp.path().join("wal");
    let wal_s = wal.to_str().unwrap();
    let stress = [
        "stress",
        "--wal",
        wal_s,
        "--table",
        &table,
        "--keys",
        "10",
        "--ops",
        "200",
        "--writers",
        "2",
        "--durability",
        "none",
    ];
    let out = run(&stress, Db::Env(&pg_user));
    let (stdout, stderr) = clean("stress", &out);
    assert!(out.status.success(), "stress failed: {stderr}");
    assert!(stdout.contains("\"acked\":200"), "{stdout}");

    let file = tmp.path().join("db-url");
    std::fs::write(&file, format!("{pg_param}\n")).unwrap();
    let flush = [
        "flush",
        "--wal",
        wal_s,
        "--table",
        &table,
        "--timeout",
        "60",
    ];
    let out = run(&flush, Db::File(&file));
    let (_, stderr) = clean("flush", &out);
    assert!(out.status.success(), "flush failed: {stderr}");

    let bench = [
        "bench",
        "--ops",
        "400",
        "--keys",
        "20",
        "--writers",
        "1",
        "--durability",
        "none",
        "--batch",
        "100",
        "--flush-interval-ms",
        "20",
        "--baseline-secs",
        "1",
        "--json",
    ];
    let out = run(&bench, Db::Env(&pg_user));
    let (stdout, stderr) = clean("bench --json", &out);
    assert!(out.status.success(), "bench failed: {stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(json["database"].as_str().unwrap().contains("***"), "{json}");

    // Errors: unreachable PostgreSQL and MariaDB, both spellings, from the
    // environment and from a file. (`flush` waits out its 5 s connect
    // timeout, so it runs once per backend.)
    let (my_user, my_param) = with_secret(&my);
    for (i, url) in [&pg_user, &pg_param, &my_user, &my_param]
        .into_iter()
        .enumerate()
    {
        let dead = unreachable(url);
        std::fs::write(&file, &dead).unwrap();
        let mut runs = vec![("bench", &bench[..], i % 2 == 0)];
        if i % 2 == 0 {
            runs.push(("flush", &flush[..], i == 0));
        }
        for (name, args, from_env) in runs {
            let db = if from_env {
                Db::Env(&dead)
            } else {
                Db::File(&file)
            };
            let out = run(args, db);
            let (_, stderr) = clean(name, &out);
            assert!(!out.status.success(), "{name} reached {dead}?");
            assert!(stderr.starts_with("error: "), "{name}: {stderr}");
            assert!(stderr.contains("***"), "{name}: {stderr}");
        }
    }
    // A scheme no backend takes.
    let out = run(
        &bench,
        Db::Env(&format!("redis://u:{SECRET}@127.0.0.1:1/0")),
    );
    let (_, stderr) = clean("bench, unknown scheme", &out);
    assert!(!out.status.success() && stderr.contains("***"), "{stderr}");

    drop_table(&pg, &table);
}

fn drop_table(url: &str, table: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
}

#[test]
fn the_url_comes_from_one_place() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("url");
    std::fs::write(&file, "sqlite://x.db\n").unwrap();
    let wal = tmp.path().join("wal");
    std::fs::create_dir(&wal).unwrap();
    // --db and --db-file together is refused.
    let out = Command::new(BIN)
        .args([
            "flush",
            "--wal",
            wal.to_str().unwrap(),
            "--db",
            "sqlite://y.db",
            "--db-file",
        ])
        .arg(&file)
        .env_remove("WB_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not both"), "{stderr}");
    // Nothing given is one clear line naming all three ways.
    let out = Command::new(BIN)
        .args(["flush", "--wal", wal.to_str().unwrap()])
        .env_remove("WB_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--db")
            && stderr.contains("--db-file")
            && stderr.contains("WB_DATABASE_URL"),
        "{stderr}"
    );
    // An empty file is refused, naming the file.
    std::fs::write(&file, "\n").unwrap();
    let out = Command::new(BIN)
        .args(["flush", "--wal", wal.to_str().unwrap(), "--db-file"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no database URL"),
        "{stderr}"
    );
}
