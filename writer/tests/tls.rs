//! TLS to PostgreSQL and MySQL/MariaDB, set by the URL's `sslmode`.
//!
//! PostgreSQL must run with `ssl = on`; the test reads the server's
//! certificate (`SHOW ssl_cert_file`), finds the name it is issued to with
//! `openssl x509`, and connects to that name with `sslmode=require` and with
//! `sslmode=verify-full` against the certificate as `sslrootcert`: each
//! writes and flushes over a connection `pg_stat_ssl` reports as TLS, and the
//! LISTEN connection subscribes with the same settings. A root that did not
//! issue the certificate fails with one error naming host and mode.
//! MariaDB is checked over TLS when it offers TLS (`have_ssl = YES`);
//! otherwise the test says so and checks `ssl-mode=require` fails clearly.
#![cfg(all(feature = "postgres", feature = "mysql"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use writebehind_writer::{Change, Expected, SqlType, SqlValue, Writer};

/// A root certificate that issued nothing the servers present.
fn wrong_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wrong-root.pem")
}

/// `url` with its host replaced and `query` appended.
fn with_tls(url: &str, host: Option<&str>, query: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    if let Some(h) = host {
        u.set_host(Some(h)).unwrap();
    }
    let q = match u.query() {
        Some(q) if !q.is_empty() => format!("{q}&{query}"),
        _ => query.to_owned(),
    };
    u.set_query(Some(&q));
    u.to_string()
}

/// The DNS name a PEM certificate is issued to (its first subjectAltName,
/// else its CN), read with the `openssl` tool.
fn cert_name(pem: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
            pem,
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("this test reads the server certificate with `openssl x509`: {e}")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "openssl x509 -in {pem}: {text}");
    let san = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .find_map(|w| w.strip_prefix("DNS:"));
    let cn = text
        .lines()
        .find_map(|l| l.split("CN = ").nth(1).or_else(|| l.split("CN=").nth(1)));
    san.or(cn)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no DNS name in {pem}: {text}"))
}

async fn text_of(w: &Writer, sql: &str) -> String {
    match query(w, sql, &[SqlType::Text])
        .await
        .first()
        .and_then(|r| r.first())
    {
        Some(SqlValue::Text(s)) => s.clone(),
        other => panic!("{sql}: {other:?}"),
    }
}

/// Creates the tables, flushes one counter and reads back the position.
async fn write_and_flush(fx: &Fixture, url: &str, instance: &str) -> Writer {
    let w = Writer::connect(url, fx.config(instance)).await.unwrap();
    w.create_tables().await.unwrap();
    let c = cut(7, vec![item("tls", Change::Add(3), Expected::Any)]);
    let report = fast_retrier().run(|| w.flush(&c)).await.unwrap();
    assert!(!report.already_applied);
    assert_eq!(w.progress().await.unwrap(), Some(7));
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_require_verify_full_and_a_wrong_root() {
    let fx = Fixture::postgres();
    let plain = Writer::connect(&fx.url, fx.config("probe")).await.unwrap();
    assert_eq!(
        text_of(&plain, "SHOW ssl").await,
        "on",
        "PostgreSQL at WB_POSTGRES_URL must run with ssl = on for this test"
    );
    let cert = text_of(&plain, "SHOW ssl_cert_file").await;
    plain.close().await;
    let name = cert_name(&cert);

    for (i, query) in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full&sslrootcert={cert}"),
    ]
    .iter()
    .enumerate()
    {
        let url = with_tls(&fx.url, Some(&name), query);
        let w = write_and_flush(&fx, &url, &format!("tls{i}")).await;
        let ssl = query_sql_bool(
            &w,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .await;
        assert!(ssl, "{query}: the connection is not TLS");
        // The LISTEN connection takes the same settings.
        let listener = w
            .listen(Arc::new(|_: &[(String, Option<i64>)]| {}))
            .unwrap();
        assert!(
            listener.first_attempt(Duration::from_secs(10)).await,
            "{query}: the listener did not subscribe: {:?}",
            listener.status()
        );
        w.close().await;
    }

    let wrong = format!("sslmode=verify-full&sslrootcert={}", wrong_root().display());
    let url = with_tls(&fx.url, Some(&name), &wrong);
    let w = Writer::connect(&url, fx.config("wrong")).await.unwrap();
    let err = w.create_tables().await.unwrap_err().to_string();
    let port = url::Url::parse(&url).unwrap().port().unwrap_or(5432);
    eprintln!("a wrong root: {err}");
    let expected = format!("TLS to {name}:{port} with sslmode=verify-full failed");
    assert!(err.contains(&expected), "{err}");
    let listener = w
        .listen(Arc::new(|_: &[(String, Option<i64>)]| {}))
        .unwrap();
    assert!(!listener.first_attempt(Duration::from_secs(10)).await);
    w.close().await;
    fx.cleanup().await;
}

async fn query_sql_bool(w: &Writer, sql: &str) -> bool {
    match query(w, sql, &[SqlType::Bool])
        .await
        .first()
        .and_then(|r| r.first())
    {
        Some(SqlValue::Bool(b)) => *b,
        other => panic!("{sql}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_over_tls_where_the_server_offers_it() {
    let fx = Fixture::mysql();
    let plain = Writer::connect(&fx.url, fx.config("probe")).await.unwrap();
    let have_ssl = match query(
        &plain,
        "SHOW VARIABLES LIKE 'have_ssl'",
        &[SqlType::Text, SqlType::Text],
    )
    .await
    .first()
    .and_then(|r| r.get(1))
    {
        Some(SqlValue::Text(s)) => s.clone(),
        _ => "NO".to_owned(),
    };
    plain.close().await;
    let url = with_tls(&fx.url, None, "ssl-mode=require");
    if have_ssl == "YES" {
        let w = write_and_flush(&fx, &url, "tls").await;
        let cipher = match query(
            &w,
            "SHOW SESSION STATUS LIKE 'Ssl_cipher'",
            &[SqlType::Text, SqlType::Text],
        )
        .await
        .first()
        .and_then(|r| r.get(1))
        {
            Some(SqlValue::Text(s)) => s.clone(),
            _ => String::new(),
        };
        assert!(
            !cipher.is_empty(),
            "ssl-mode=require: the connection is not TLS"
        );
        w.close().await;
    } else {
        eprintln!(
            "MariaDB at WB_MYSQL_URL does not offer TLS (have_ssl = {have_ssl}): \
             checking only that ssl-mode=require fails with the clear error"
        );
        let w = Writer::connect(&url, fx.config("tls")).await.unwrap();
        let err = w.create_tables().await.unwrap_err().to_string();
        let u = url::Url::parse(&url).unwrap();
        let expected = format!(
            "TLS to {}:{} with ssl-mode=require failed",
            u.host_str().unwrap(),
            u.port().unwrap_or(3306)
        );
        eprintln!("ssl-mode=require without server TLS: {err}");
        assert!(err.contains(&expected), "{err}");
        w.close().await;
    }
    fx.cleanup().await;
}
