//! In-memory state of writebehind (placeholder; see types).
pub mod types;
pub use types::*;
