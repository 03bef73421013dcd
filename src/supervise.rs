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
