//! Arbitrary bytes as a checkpoint file: decode returns a typed error or a checkpoint whose
//! data is exactly the file's payload, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writebehind_wal::checkpoint::{decode, CHECKPOINT_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = decode(data) {
        assert_eq!(c.data.as_slice(), &data[CHECKPOINT_HEADER_LEN..]);
    }
});
