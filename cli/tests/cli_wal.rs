//! `writebehind wal inspect|verify|dump` on WAL directories written by the library, intact and
//! damaged.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use writebehind::{Durability, WriteBehind};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_writebehind"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A WAL written by the cache: adds, a put, a flush (markers), a delete, more adds; closed.
fn make_wal(tmp: &Path) -> PathBuf {
    let dir = tmp.join("wal");
    let url = format!("sqlite://{}?mode=rwc", tmp.join("db.sqlite").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cache = WriteBehind::<String, i64>::builder(&dir)
            .database(url)
            .table("cli_wal_counts")
            .create_tables(true)
            .durability(Durability::Fsync)
            // Only explicit flushes: the record sequence is then exact.
            .flush_interval(std::time::Duration::from_secs(3600))
            .open()
            .await
            .unwrap();
        cache.add("a", 5).await.unwrap();
        cache.add("b", -2).await.unwrap();
        cache.put("c", &7).await.unwrap();
        cache.flush().await.unwrap();
        cache.delete("c").await.unwrap();
        for _ in 0..20 {
            cache.add("a", 1).await.unwrap();
        }
        cache.close().await.unwrap();
    });
    dir
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

fn dump(dir: &Path, from: Option<&str>) -> Vec<serde_json::Value> {
    let d = dir.to_str().unwrap();
    let out = match from {
        Some(f) => cli(&["wal", "dump", d, "--from", f]),
        None => cli(&["wal", "dump", d]),
    };
    assert!(out.status.success(), "dump failed: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn dump_decodes_every_record_the_cache_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_wal(tmp.path());
    let recs = dump(&dir, None);
    let ops: Vec<_> = recs.iter().filter(|r| r["type"] == "op").collect();
    assert_eq!(ops.len(), 24);
    assert_eq!(
        ops[0],
        &serde_json::json!({"lsn": ops[0]["lsn"], "kind": 1, "type": "op", "key": "a",
            "change": {"add": 5}, "expected": "any"})
    );
    assert_eq!(ops[1]["key"], "b");
    assert_eq!(ops[1]["change"], serde_json::json!({"add": -2}));
    assert_eq!(ops[2]["key"], "c");
    assert_eq!(ops[2]["change"], serde_json::json!({"put": 7}));
    assert_eq!(ops[3]["key"], "c");
    assert_eq!(ops[3]["change"], "delete");
    assert_eq!(
        ops.iter()
            .filter(|r| r["key"] == "a")
            .map(|r| r["change"]["add"].as_i64().unwrap())
            .sum::<i64>(),
        25
    );
    // The explicit flush left a begin marker after the first three ops and an end marker
    // naming it.
    let begin = recs.iter().find(|r| r["type"] == "flush_begin").unwrap();
    assert!(begin["lsn"].as_u64().unwrap() > ops[2]["lsn"].as_u64().unwrap());
    assert!(recs
        .iter()
        .any(|r| r["type"] == "flush_end" && r["position"] == begin["lsn"]));
    // LSNs are consecutive.
    let lsns: Vec<u64> = recs.iter().map(|r| r["lsn"].as_u64().unwrap()).collect();
    assert!(lsns.windows(2).all(|w| w[1] == w[0] + 1), "{lsns:?}");

    let from = lsns[5];
    let tail = dump(&dir, Some(&from.to_string()));
    assert_eq!(tail.len(), lsns.len() - 5);
    assert_eq!(tail[0]["lsn"].as_u64(), Some(from));
}

#[test]
fn inspect_and_verify_a_clean_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_wal(tmp.path());
    let d = dir.to_str().unwrap();
    let records = dump(&dir, None).len();

    let out = cli(&["wal", "inspect", d]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    let seg = segments(&dir)[0].clone();
    let seg_name = seg.file_name().unwrap().to_str().unwrap();
    assert!(s.contains(seg_name), "{s}");
    assert!(s.contains(&format!("total: {records} records")), "{s}");
    assert!(!s.contains("problem:"), "{s}");

    let out = cli(&["wal", "verify", d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("OK: "),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains(&format!("{records} records")),
        "{}",
        text(&out.stdout)
    );
}

/// Offsets of the frames in a segment: header 32 bytes, frame = 20-byte header + payload.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut pos = 32;
    while pos + 20 <= bytes.len() {
        v.push(pos);
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 20 + len;
    }
    v
}

#[test]
fn verify_names_file_and_offset_of_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_wal(tmp.path());
    let seg = segments(&dir)[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames = frame_offsets(&bytes);
    assert!(frames.len() > 10);
    let victim = frames[frames.len() / 2];
    bytes[victim + 22] ^= 0x40; // a payload byte
    std::fs::write(&seg, &bytes).unwrap();

    let out = cli(&["wal", "verify", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "corruption in {} at byte offset {victim} ",
            seg.display()
        )),
        "{err}"
    );
    assert!(err.contains("frame checksum mismatch"), "{err}");
    assert!(text(&out.stdout).starts_with("CORRUPT: "));
    // dump prints every intact record (the damaged one is skipped), names the damage, fails.
    let out = cli(&["wal", "dump", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), frames.len() - 1);
    assert!(text(&out.stderr).contains(&format!("at byte offset {victim} ")));
    // Read-only: the damaged file is untouched and nothing was added.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    assert_eq!(segments(&dir), vec![seg]);
}

#[test]
fn verify_reports_a_torn_tail_as_such_and_leaves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_wal(tmp.path());
    let seg = segments(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = bytes.len();
    let last = *frame_offsets(&bytes).last().unwrap();
    bytes.truncate(last + 7); // the last record half-written
    std::fs::write(&seg, &bytes).unwrap();
    assert!(end > last + 7);

    let out = cli(&["wal", "verify", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "torn tail in {} at byte offset {last} ",
            seg.display()
        )),
        "{err}"
    );
    assert!(text(&out.stdout).starts_with("TORN TAIL: "));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(names.iter().all(|e| !e
        .as_ref()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("torn")));
}

#[test]
fn missing_directory_is_one_line_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    for sub in ["inspect", "verify", "dump"] {
        let out = cli(&["wal", sub, missing.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        let err = text(&out.stderr);
        assert_eq!(
            err,
            format!(
                "error: WAL directory {} does not exist or is not a directory\n",
                missing.display()
            ),
            "{sub}"
        );
        assert!(out.stdout.is_empty(), "{sub}");
        assert!(!missing.exists(), "{sub} created the directory");
    }
}

#[test]
fn directory_without_wal_files_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
    for sub in ["inspect", "verify", "dump"] {
        let out = cli(&["wal", sub, tmp.path().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        assert_eq!(
            text(&out.stderr),
            format!(
                "error: {} holds no WAL segment (*.wal) or checkpoint (*.ckpt) files\n",
                tmp.path().display()
            ),
            "{sub}"
        );
        assert!(out.stdout.is_empty(), "{sub}");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn dead_letters_lists_the_local_file_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_wal(tmp.path());
    // No local dead letters: nothing printed, exit 0.
    let out = cli(&["wal", "dead-letters", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert!(text(&out.stderr).starts_with("0 local dead letter(s)"));

    let row = writebehind::LocalDeadLetter {
        instance: "i1".into(),
        table: "counters".into(),
        position: 42,
        key: "bad\0key".into(),
        change: writebehind::Change::Add(9),
        error: "invalid byte sequence".into(),
        refused_by_table: "invalid byte sequence".into(),
        created_at_ms: 1,
    };
    let line = serde_json::to_string(&row).unwrap();
    std::fs::write(dir.join("dead-letters.jsonl"), format!("{line}\n")).unwrap();
    let out = cli(&["wal", "dead-letters", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let printed: writebehind::LocalDeadLetter =
        serde_json::from_str(text(&out.stdout).trim_end()).unwrap();
    assert_eq!(printed, row);

    // A damaged line is an error naming the file and line, not a panic.
    std::fs::write(dir.join("dead-letters.jsonl"), "{not json\n").unwrap();
    let out = cli(&["wal", "dead-letters", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("line 1"),
        "{}",
        text(&out.stderr)
    );
    let missing = tmp.path().join("nope");
    let out = cli(&["wal", "dead-letters", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!missing.exists());
}
