//! Retry with exponential backoff and full jitter, behind a circuit breaker.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::{ErrorClass, Result};

/// How [`Retrier::run`] retries transient errors.
///
/// Defaults: `min_delay` 50 ms, `max_delay` 10 s, `factor` 2.0,
/// `max_attempts` 8 (then the last error is returned: the caller decides
/// when to run again; `None` retries forever), `jitter` true (full jitter: each
/// delay is uniform in `0..=base`), `breaker_threshold` 5 consecutive
/// transient failures, `breaker_cooldown` 5 s.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// First backoff delay.
    pub min_delay: Duration,
    /// Cap on one backoff delay.
    pub max_delay: Duration,
    /// Growth factor between delays.
    pub factor: f32,
    /// Total attempts before giving up with the last error; `None` = forever.
    pub max_attempts: Option<u32>,
    /// Full jitter on every delay.
    pub jitter: bool,
    /// Consecutive transient failures (across all callers) that open the breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker blocks attempts before one probe is let through.
    pub breaker_cooldown: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(10),
            factor: 2.0,
            max_attempts: Some(8),
            jitter: true,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(5),
        }
    }
}

/// The circuit breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts go through.
    Closed,
    /// Too many consecutive transient failures: attempts wait for the cool-down.
    Open,
    /// The cool-down is over: the next attempt is a probe that closes or reopens it.
    HalfOpen,
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// Runs operations with [`RetryPolicy`]; keeps the breaker state across
/// calls (share one per database). `Send + Sync`.
#[derive(Debug)]
pub struct Retrier {
    policy: RetryPolicy,
    breaker: Mutex<Breaker>,
    retries: AtomicU64,
}

enum Gate {
    Go,
    Wait(Duration),
}

impl Retrier {
    /// A retrier with a closed breaker.
    pub fn new(policy: RetryPolicy) -> Retrier {
        Retrier {
            policy,
            breaker: Mutex::new(Breaker::default()),
            retries: AtomicU64::new(0),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Retries made so far (attempts after a transient failure), over all calls.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The breaker's state now.
    pub fn breaker(&self) -> BreakerState {
        let b = self.breaker.lock();
        match b.open_until {
            None => BreakerState::Closed,
            Some(t) if Instant::now() < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Runs `f` until it succeeds, fails permanently, or `max_attempts` is
    /// used up (then the last error is returned). Transient failures back off
    /// exponentially with jitter; while the breaker is open, no attempt is
    /// made until its cool-down ends, then one probe decides.
    pub async fn run<T, F, Fut>(&self, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let p = &self.policy;
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(p.min_delay)
            .with_max_delay(p.max_delay)
            .with_factor(p.factor)
            .without_max_times()
            .build();
        let mut attempts = 0u32;
        loop {
            self.pass_breaker().await;
            attempts += 1;
            match f().await {
                Ok(v) => {
                    self.on_success();
                    return Ok(v);
                }
                Err(e) if e.class() == ErrorClass::Permanent => {
                    // The database answered: it is up.
                    self.on_success();
                    return Err(e);
                }
                Err(e) => {
                    let opened = self.on_transient_failure();
                    if p.max_attempts.is_some_and(|m| attempts >= m) {
                        return Err(e);
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(attempt = attempts, error = %e, breaker_open = opened, "writebehind: transient error, retrying");
                    if !opened {
                        let base = backoff.next().unwrap_or(p.max_delay);
                        tokio::time::sleep(self.jitter(base)).await;
                    }
                }
            }
        }
    }

    fn jitter(&self, base: Duration) -> Duration {
        if !self.policy.jitter || base.is_zero() {
            return base;
        }
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    async fn pass_breaker(&self) {
        loop {
            let gate = {
                let mut b = self.breaker.lock();
                match b.open_until {
                    None => Gate::Go,
                    Some(t) => {
                        let now = Instant::now();
                        if now < t {
                            Gate::Wait(t - now)
                        } else if !b.probing {
                            b.probing = true;
                            Gate::Go
                        } else {
                            // Another caller's probe is in flight.
                            Gate::Wait(self.policy.min_delay.max(Duration::from_millis(1)))
                        }
                    }
                }
            };
            match gate {
                Gate::Go => return,
                Gate::Wait(d) => tokio::time::sleep(d).await,
            }
        }
    }

    fn on_success(&self) {
        let mut b = self.breaker.lock();
        if b.open_until.is_some() {
            tracing::info!("writebehind: circuit breaker closed");
        }
        *b = Breaker::default();
    }

    /// Returns whether this failure (re)opened the breaker.
    fn on_transient_failure(&self) -> bool {
        let mut b = self.breaker.lock();
        b.consecutive = b.consecutive.saturating_add(1);
        if b.probing || b.consecutive >= self.policy.breaker_threshold.max(1) {
            b.probing = false;
            b.open_until = Some(Instant::now() + self.policy.breaker_cooldown);
            tracing::warn!(failures = b.consecutive, cooldown = ?self.policy.breaker_cooldown, "writebehind: circuit breaker open");
            return true;
        }
        false
    }
}

impl Default for Retrier {
    fn default() -> Retrier {
        Retrier::new(RetryPolicy::default())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    use super::*;
    use crate::error::Error;

    fn transient() -> Error {
        Error::Sql {
            context: "test".into(),
            source: sqlx::Error::PoolTimedOut,
        }
    }

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            factor: 2.0,
            max_attempts: Some(5),
            jitter,
            breaker_threshold: 100,
            breaker_cooldown: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_exponentially_without_jitter() {
        let r = Retrier::new(policy(false));
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let out: Result<()> = r
            .run(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(transient()) }
            })
            .await;
        assert!(matches!(
            out,
            Err(Error::Sql {
                source: sqlx::Error::PoolTimedOut,
                ..
            })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(r.retries(), 4);
        // 100 + 200 + 400 + 800 ms between the five attempts (the timer wheel
        // may round each sleep up by a millisecond).
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(1500) && e <= Duration::from_millis(1505),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_jitter_stays_within_the_exponential_bounds() {
        let mut p = policy(true);
        p.max_attempts = Some(8);
        let r = Retrier::new(p);
        let start = Instant::now();
        let out: Result<()> = r.run(|| async { Err(transient()) }).await;
        assert!(out.is_err());
        assert_eq!(r.retries(), 7);
        // Bases: 100, 200, 400, 800, 1000 (capped), 1000, 1000 ms.
        assert!(
            start.elapsed() <= Duration::from_millis(4500),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let r = Retrier::new(policy(false));
        let calls = AtomicU32::new(0);
        let out: Result<()> = r
            .run(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(Error::Config("bad".into())) }
            })
            .await;
        assert!(matches!(out, Err(Error::Config(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.retries(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_probes_and_closes() {
        let p = RetryPolicy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            factor: 2.0,
            max_attempts: None,
            jitter: false,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(10),
        };
        let r = Arc::new(Retrier::new(p));
        let calls = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let out = {
            let (r2, calls, seen) = (r.clone(), calls.clone(), seen.clone());
            r.run(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                seen.lock().push((n, r2.breaker(), start.elapsed()));
                async move {
                    if n <= 5 {
                        Err(transient())
                    } else {
                        Ok(n)
                    }
                }
            })
            .await
        };
        assert_eq!(out.unwrap(), 6);
        assert_eq!(r.retries(), 5);
        assert_eq!(r.breaker(), BreakerState::Closed);
        let seen = seen.lock().clone();
        let states: Vec<(u32, BreakerState)> = seen.iter().map(|(n, s, _)| (*n, *s)).collect();
        assert_eq!(
            states,
            vec![
                (1, BreakerState::Closed),
                (2, BreakerState::Closed),
                (3, BreakerState::Closed),
                // Opened after attempt 3: each later attempt is a probe after a cool-down.
                (4, BreakerState::HalfOpen),
                (5, BreakerState::HalfOpen),
                (6, BreakerState::HalfOpen),
            ]
        );
        // Attempts 1-3 are 1 ms apart; each probe waits the full 10 s cool-down
        // (a failed probe reopens the breaker). Slack: timer rounding.
        let at: Vec<u128> = seen.iter().map(|(_, _, t)| t.as_millis()).collect();
        let expect = [0u128, 1, 2, 10_002, 20_002, 30_002];
        for (a, e) in at.iter().zip(expect) {
            assert!(
                *a >= e && *a <= e + 6,
                "attempt times {at:?}, expected about {expect:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_breaker_is_visible_between_attempts() {
        let mut p = policy(false);
        p.breaker_threshold = 2;
        p.max_attempts = Some(2);
        let r = Retrier::new(p);
        let out: Result<()> = r.run(|| async { Err(transient()) }).await;
        assert!(out.is_err());
        assert_eq!(r.breaker(), BreakerState::Open);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(r.breaker(), BreakerState::HalfOpen);
        let ok: Result<u8> = r.run(|| async { Ok(7) }).await;
        assert_eq!(ok.unwrap(), 7);
        assert_eq!(r.breaker(), BreakerState::Closed);
    }
}
