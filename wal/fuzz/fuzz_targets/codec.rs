//! Arbitrary bytes through the codec as the root crate's WAL record and checkpoint payload:
//! decoding returns an error or a value that re-encodes to exactly the same bytes (the
//! encoding is canonical), and restoring a decoded snapshot returns an error or a state,
//! never panics (nor allocates without bound: the codec has a size limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use writebehind_core::{Change, Expected, Key, Limits, Lsn, Snapshot, State};
use writebehind_wal::codec;

/// Same serde shape as the root crate's `log::LogEntry` (frozen by its golden-byte tests).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum LogEntry {
    Op {
        key: Key,
        change: Change,
        expected: Expected,
    },
    FlushBegin,
    FlushEnd {
        position: Lsn,
    },
}

/// Same serde shape as the root crate's `log::CheckpointData`.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointData {
    format: u32,
    snapshot: Snapshot,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = codec::decode::<LogEntry>(data) {
        let again = codec::encode(&entry).expect("a decoded record encodes");
        assert_eq!(again.as_slice(), data);
    }
    if let Ok(cp) = codec::decode::<CheckpointData>(data) {
        let again = codec::encode(&cp).expect("a decoded checkpoint encodes");
        assert_eq!(again.as_slice(), data);
        let _ = State::restore(Limits::default(), cp.snapshot);
    }
});
