//! The SQL sink of writebehind: it owns everything between a [`Cut`] of
//! coalesced dirty entries and the database — table shapes, multi-row
//! statements per backend (PostgreSQL, MySQL/MariaDB, SQLite, each a cargo
//! feature), versioned conflict checks and policies, dead-lettering of rows
//! that fail permanently, the exactly-once progress row, read-through loads,
//! error classification and retry with a circuit breaker. The flush loop
//! that decides *when* to flush lives in the root crate and calls
//! [`Writer::flush`] through a [`Retrier`].
//!
//! [`Cut`]: writebehind_core::Cut

mod config;
// With no backend feature on, the driver layer has nothing to drive.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unused_imports, unused_macros, unused_variables, dead_code)
)]
mod db;
mod error;
mod ident;
mod retry;
mod schema;
mod sql;
mod writer;

pub use config::{
    Conflict, ConflictPolicy, ConflictResolutionTaken, Resolution, Resolver, WriterConfig,
};
pub use error::{Error, ErrorClass, Result};
pub use ident::{Backend, Ident};
pub use retry::{BreakerState, Retrier, RetryPolicy};
pub use schema::{Column, RowCodec, SqlType, SqlValue, TableKind, TableSpec};
pub use writebehind_core::{Change, Cut, Expected, FlushItem, ItemOutcome, Key, Lsn, Value};
pub use writer::{DeadLetter, FlushReport, Writer};
