//! The segment and checkpoint decoders never panic on arbitrary or mutated bytes, and what
//! they accept is exactly a prefix (or, in salvage mode, a subsequence) of what was written.
//! Same entry points as the cargo-fuzz targets in `wal/fuzz`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use proptest::prelude::*;
use writebehind_wal::io::FaultyIo;
use writebehind_wal::reader::read_segment;
use writebehind_wal::{checkpoint, Error, Frame, WalBuilder};

fn cases() -> u32 {
    std::env::var("WB_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// A real segment with `n` records and a real checkpoint, produced by the log itself.
fn sample(n: usize) -> (Vec<u8>, Vec<Frame>, Vec<u8>) {
    let fs = FaultyIo::new();
    // No preallocated zeros: the mutations should hit the records.
    fs.set_zero_extend(false);
    let (wal, _) = WalBuilder::new("/w")
        .io(Arc::new(fs.clone()))
        .open()
        .unwrap();
    for i in 0..n {
        let _ = wal.append(i as u8, &vec![i as u8; i % 17]).unwrap();
    }
    wal.sync().unwrap();
    wal.write_checkpoint(n as u64, b"checkpoint data").unwrap();
    let recs: Vec<Frame> = wal.replay(1).unwrap().map(|r| r.unwrap()).collect();
    let seg = fs
        .read_file(std::path::Path::new("/w/00000000000000000001.wal"))
        .unwrap();
    let ck = fs
        .read_file(&std::path::PathBuf::from(format!("/w/{n:020}.ckpt")))
        .unwrap();
    (seg, recs, ck)
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Zero(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Zero(i, n)),
    ]
}

fn apply(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if b.is_empty() {
            break;
        }
        let len = b.len();
        match m {
            Mutation::Flip(i, x) => b[i % len] ^= x,
            Mutation::Truncate(i) => b.truncate(i % len),
            Mutation::Insert(i, v) => {
                let at = i % len;
                b.splice(at..at, v.iter().copied());
            }
            Mutation::Zero(i, n) => {
                let at = i % len;
                let end = (at + n).min(len);
                b[at..end].fill(0);
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), salvage in any::<bool>()) {
        match read_segment(&bytes, salvage) {
            Ok(c) => prop_assert!(c.valid_len as usize <= bytes.len()),
            Err(e) => prop_assert!(matches!(e, Error::Corrupt { offset: 0, .. }), "{:?}", e),
        }
        let _ = checkpoint::decode(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(tail in prop::collection::vec(any::<u8>(), 0..400)) {
        let (seg, _, _) = sample(0);
        let mut b = seg;
        b.extend_from_slice(&tail);
        let c = read_segment(&b, true).unwrap();
        prop_assert!(c.records.len() <= tail.len() / writebehind_wal::FRAME_HEADER_LEN);
    }

    #[test]
    fn mutated_segments_yield_a_prefix_or_a_typed_error(muts in prop::collection::vec(mutation(), 1..4)) {
        let (seg, recs, _) = sample(20);
        let b = apply(seg, &muts);
        match read_segment(&b, false) {
            Ok(c) => {
                prop_assert!(c.records.len() <= recs.len());
                prop_assert_eq!(&c.records[..], &recs[..c.records.len()]);
                prop_assert!(c.damage.len() <= 1);
            }
            Err(e) => prop_assert!(matches!(e, Error::Corrupt { offset: 0, .. }), "{:?}", e),
        }
        if let Ok(c) = read_segment(&b, true) {
            for r in &c.records {
                prop_assert_eq!(r, &recs[(r.lsn - 1) as usize]);
            }
        }
    }

    #[test]
    fn mutated_checkpoints_are_rejected(muts in prop::collection::vec(mutation(), 1..4)) {
        let (_, _, ck) = sample(3);
        let b = apply(ck.clone(), &muts);
        match checkpoint::decode(&b) {
            Ok(c) => prop_assert_eq!(b, ck, "accepted a changed checkpoint: {:?}", c),
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }
}

/// The cargo-fuzz seed corpus (wal/fuzz/corpus) through the same entry points, in CI.
#[test]
fn fuzz_seed_corpus_gives_the_expected_verdicts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("segment")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        let b = std::fs::read(&p).unwrap();
        let strict = read_segment(&b, false);
        let salvage = read_segment(&b, true);
        if name.starts_with("valid") {
            let c = strict.unwrap();
            assert_eq!(
                (c.damage.len() as u64, c.valid_len),
                (0, b.len() as u64),
                "{name}"
            );
            assert!(!c.records.is_empty(), "{name}");
        } else if name.starts_with("torn") {
            let c = strict.unwrap();
            assert_eq!(c.damage.len(), 1, "{name}");
            assert_eq!(
                c.damage[0].resync, None,
                "{name}: a torn tail runs to the end"
            );
        } else if name.starts_with("flipped") {
            let c = salvage.unwrap();
            assert!(!c.damage.is_empty(), "{name}");
        } else {
            assert!(
                matches!(strict, Err(Error::Corrupt { offset: 0, .. })),
                "{name}"
            );
        }
        seen += 1;
    }
    for entry in std::fs::read_dir(root.join("checkpoint")).unwrap() {
        let p = entry.unwrap().path();
        let b = std::fs::read(&p).unwrap();
        let valid = p.file_name().unwrap() == "valid";
        assert_eq!(checkpoint::decode(&b).is_ok(), valid, "{}", p.display());
        seen += 1;
    }
    assert_eq!(seen, 10);
}
