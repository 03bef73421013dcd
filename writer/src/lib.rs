//! The SQL sink of writebehind: it owns everything between a [`Cut`] of
//! coalesced dirty entries and the database — table shapes, multi-row
//! statements per backend (PostgreSQL, MySQL/MariaDB, SQLite, each a cargo
//! feature), versioned conflict checks and policies, dead-lettering of rows
//! that fail permanently, the exactly-once progress row, read-through loads,
//! error classification and retry with a circuit breaker. The flush loop
//! that decides *when* to flush lives in the root crate and calls
//! [`Writer::flush`] through a [`Retrier`].
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use writebehind_writer::{Change, Cut, Expected, FlushItem, ItemOutcome, Retrier, Value, Writer, WriterConfig};
//!
//! let writer = Writer::connect("sqlite::memory:", WriterConfig::new("cache-1")).await?;
//! writer.create_tables().await?;
//! let cut = Cut {
//!     position: 42,
//!     items: vec![FlushItem { key: Arc::from("page:/home"), change: Change::Add(3), expected: Expected::Any }],
//! };
//! let retrier = Retrier::default();
//! let report = retrier.run(|| writer.flush(&cut)).await?;
//! assert_eq!(report.outcomes, vec![ItemOutcome::Written { version: Some(1), value: Some(Value::Int(3)) }]);
//! // The same cut again (say, after a crash before the WAL was cut) is a no-op.
//! assert!(writer.flush(&cut).await?.already_applied);
//! assert_eq!(writer.progress().await?, Some(42));
//! # Ok::<(), writebehind_writer::Error>(())
//! # }).unwrap();
//! ```
//!
//! [`Cut`]: writebehind_core::Cut

mod check;
mod config;
mod conflicts;
// With no backend feature on, the driver layer has nothing to drive.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unused_imports, unused_macros, unused_variables, dead_code)
)]
mod db;
mod error;
mod flush;
mod ident;
mod local;
pub mod notify;
mod retry;
mod rows;
mod schema;
mod sql;
mod url;
mod writer;

pub use config::{
    Conflict, ConflictPolicy, ConflictResolutionTaken, Resolution, Resolver, WriterConfig,
};
pub use error::{Error, ErrorClass, Result};
pub use ident::{Backend, Ident};
pub use local::{read_local_dead_letters, LocalDeadLetter};
pub use notify::{Announcement, Listener, ListenerStatus};
pub use retry::{BreakerState, Retrier, RetryPolicy};
pub use schema::{
    Column, KeyCodec, Merge, RowCodec, SqlType, SqlValue, TableKind, TableSpec, TextKey, WriteMode,
};
pub use url::redact_url;
pub use writebehind_core::{Change, Cut, Expected, FlushItem, ItemOutcome, Key, Lsn, Value};
pub use writer::{Claim, DeadLetter, FlushReport, Writer};

#[cfg(test)]
mod tests {
    /// The root shares one writer and one retrier across tasks.
    #[test]
    fn writer_and_retrier_are_send_sync() {
        fn send_sync<T: Send + Sync + Clone>() {}
        fn send_sync_ref<T: Send + Sync>() {}
        send_sync::<crate::Writer>();
        send_sync_ref::<crate::Retrier>();
        send_sync::<crate::WriterConfig>();
        send_sync::<crate::FlushReport>();
    }
}
