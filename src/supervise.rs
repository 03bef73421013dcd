//! Supervision of background work and user hooks: panics are caught,
//! logged and counted; failures are remembered for whoever asks.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts what went wrong in the background (each is logged where it happens).
#[derive(Default)]
pub(crate) struct Supervisor {
    panics: AtomicU64,
    errors: AtomicU64,
}

impl Supervisor {
    /// A task or hook panicked (already caught and logged).
    pub(crate) fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// A background turn other than a flush failed (already logged).
    pub(crate) fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Panics caught in background tasks and user hooks.
    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Failed background turns other than flushes (checkpoints).
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Runs a user hook; a panic becomes its message.
pub(crate) fn call_hook(f: impl FnOnce()) -> std::result::Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

/// How a supervised background job went wrong.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// It returned this error.
    Failed(String),
    /// It panicked with this message.
    Panicked(String),
    /// It did not finish within its bound (and was dropped).
    TimedOut(std::time::Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Failed(e) => f.write_str(e),
            Failure::Panicked(m) => write!(f, "panicked: {m}"),
            Failure::TimedOut(b) => write!(f, "no answer within {b:?}"),
        }
    }
}

/// Runs a background job within `bound`, catching its panic: every way it
/// can end comes back as a value, for the caller to log and count.
pub(crate) async fn bounded<E: std::fmt::Display>(
    bound: std::time::Duration,
    job: impl std::future::Future<Output = std::result::Result<(), E>>,
) -> std::result::Result<(), Failure> {
    use futures::FutureExt;
    match tokio::time::timeout(bound, AssertUnwindSafe(job).catch_unwind()).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(Failure::Failed(e.to_string())),
        Ok(Err(panic)) => Err(Failure::Panicked(panic_message(&*panic))),
        Err(_) => Err(Failure::TimedOut(bound)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_bounded_job_reports_every_way_it_ends() {
        let bound = Duration::from_millis(50);
        assert_eq!(bounded(bound, async { Ok::<(), String>(()) }).await, Ok(()));
        assert_eq!(
            bounded(bound, async { Err::<(), _>("no such table") }).await,
            Err(Failure::Failed("no such table".into()))
        );
        let panics = async {
            if bound > Duration::ZERO {
                panic!("boom");
            }
            Ok::<(), String>(())
        };
        assert_eq!(
            bounded(bound, panics).await,
            Err(Failure::Panicked("boom".into()))
        );
        let hangs = std::future::pending::<Result<(), String>>();
        assert_eq!(bounded(bound, hangs).await, Err(Failure::TimedOut(bound)));
    }
}
