//! Arbitrary bytes as a segment file: the reader must return a typed error or a valid prefix,
//! never panic, in strict and salvage mode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writebehind_wal::reader::read_segment;

fuzz_target!(|data: &[u8]| {
    for salvage in [false, true] {
        if let Ok(c) = read_segment(data, salvage) {
            assert!(c.valid_len as usize <= data.len());
            let lsns: Vec<u64> = c.records.iter().map(|r| r.lsn).collect();
            assert!(lsns.windows(2).all(|w| w[0] < w[1]));
            if !salvage {
                assert!(lsns.iter().enumerate().all(|(i, l)| *l == c.first_lsn + i as u64));
            }
        }
    }
});
