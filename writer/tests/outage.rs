//! A database outage behind a loopback TCP proxy: connections are cut and
//! refused, the retrier backs off and trips the breaker, and when the
//! database returns the flush completes exactly once.
#![allow(clippy::unwrap_used)]
#![cfg(any(feature = "postgres", feature = "mysql"))]

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use proxy::{via_proxy, Proxy};
use writebehind_writer::{BreakerState, Change, Expected, Retrier, RetryPolicy, Value, Writer};

async fn outage_then_recovery(fx: Fixture) {
    // Same instance id as the proxied writer, straight to the database.
    let direct = fx.writer(fx.config("o")).await;
    let (upstream, _) = via_proxy(&fx.url, 0);
    let proxy = Proxy::start(upstream).await;
    let (_, proxied_url) = via_proxy(&fx.url, proxy.port);
    let cfg = fx.config("o").acquire_timeout(Duration::from_millis(500));
    let w = Writer::connect(&proxied_url, cfg).await.unwrap();
    let c1 = cut(1, vec![item("n", Change::Add(5), Expected::Any)]);
    assert_eq!(
        w.flush(&c1).await.unwrap().outcomes,
        vec![written(1, Value::Int(5))]
    );

    proxy.set_down(true);
    let retrier = Arc::new(Retrier::new(RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        max_attempts: None,
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(300),
        ..RetryPolicy::default()
    }));
    let c2 = cut(
        2,
        vec![
            item("n", Change::Add(7), Expected::Any),
            item("m", Change::Add(1), Expected::Any),
        ],
    );
    let task = {
        let (w, r, c2) = (w.clone(), retrier.clone(), c2.clone());
        tokio::spawn(async move { r.run(|| w.flush(&c2)).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(retrier.retries() >= 3, "retries {}", retrier.retries());
    assert_ne!(retrier.breaker(), BreakerState::Closed);
    assert!(!task.is_finished());
    // Nothing reached the database while it was away.
    assert_eq!(direct.progress().await.unwrap(), Some(1));

    proxy.set_down(false);
    let report = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!report.already_applied);
    assert_eq!(
        report.outcomes,
        vec![written(2, Value::Int(12)), written(1, Value::Int(1))]
    );
    assert_eq!(retrier.breaker(), BreakerState::Closed);
    // Replaying the cut (as after a crash before the WAL cut) changes nothing.
    assert!(w.flush(&c2).await.unwrap().already_applied);
    let loaded = direct.load(&[key("n"), key("m")]).await.unwrap();
    assert_eq!(
        loaded,
        vec![
            (key("n"), Some((Value::Int(12), 2))),
            (key("m"), Some((Value::Int(1), 1)))
        ]
    );
    assert_eq!(direct.progress().await.unwrap(), Some(2));
    w.close().await;
    direct.close().await;
    fx.cleanup().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_backs_off_and_resumes_exactly_once() {
    outage_then_recovery(Fixture::postgres()).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_backs_off_and_resumes_exactly_once() {
    outage_then_recovery(Fixture::mysql()).await;
}
