//! Every file the cache creates in its WAL directory is readable by its owner only: the
//! directories 0700 and the files (segments, checkpoints, the torn-tail copy, instance.id,
//! LOCK) 0600, under umask 022 and 000.
#![cfg(all(unix, feature = "sqlite"))]
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use writebehind::{Durability, WriteBehind};

const CHILD_DIR: &str = "WB_FILE_MODES_CHILD_DIR";
const TEST: &str = "every_file_the_cache_creates_is_private";

fn builder(wal: &Path, db: &Path) -> writebehind::Builder<String, i64> {
    WriteBehind::<String, i64>::builder(wal)
        .database(format!("sqlite://{}/app.db?mode=rwc", db.display()))
        .create_tables(true)
        .durability(Durability::Fsync)
        .segment_size(4096)
}

/// Runs in the child, under the umask the parent chose: open, write, flush, checkpoint,
/// close; then garble the last segment's tail and open again, which saves a torn-tail copy.
fn make_cache(root: &Path) {
    let (wal, db) = (root.join("data/wal"), root.join("db"));
    std::fs::create_dir_all(&db).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache = builder(&wal, &db).open().await.unwrap();
        for i in 0..200 {
            cache.add(format!("k{}", i % 9).as_str(), 1).await.unwrap();
        }
        cache.flush().await.unwrap();
        for i in 0..200 {
            cache.add(format!("k{}", i % 9).as_str(), 1).await.unwrap();
        }
        cache.checkpoint().unwrap();
        cache.add("after", 1).await.unwrap();
        cache.close().await.unwrap();

        let mut segs: Vec<PathBuf> = std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segs.sort();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(segs.last().unwrap())
            .unwrap();
        std::io::Write::write_all(&mut f, b"half a record").unwrap();
        drop(f);

        let cache = builder(&wal, &db).open().await.unwrap();
        assert_eq!(cache.get("k0").await.unwrap(), Some(46));
        cache.close().await.unwrap();
    });
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `dir` and everything under it: (path, is a directory, mode), sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut out = vec![(dir.to_path_buf(), true, mode(dir))];
    let mut i = 0;
    while i < out.len() {
        if out[i].1 {
            for e in std::fs::read_dir(&out[i].0).unwrap() {
                let p = e.unwrap().path();
                let is_dir = std::fs::symlink_metadata(&p).unwrap().is_dir();
                out.push((p.clone(), is_dir, mode(&p)));
            }
        }
        i += 1;
    }
    out.sort();
    out
}

/// The umask is per process and the crates forbid `unsafe` (no `libc::umask`), so the test
/// re-runs its own binary under `sh -c 'umask …; exec …'` and inspects what the child made.
#[test]
fn every_file_the_cache_creates_is_private() {
    if let Ok(root) = std::env::var(CHILD_DIR) {
        make_cache(Path::new(&root));
        return;
    }
    for umask in ["022", "000"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture"])
            .env(CHILD_DIR, tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child under umask {umask} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // `data` is made by the cache too (a missing parent of the WAL directory).
        let entries = tree(&tmp.path().join("data"));
        let mut listing = String::new();
        for (p, is_dir, m) in &entries {
            let p = p.strip_prefix(tmp.path()).unwrap().display();
            let slash = if *is_dir { "/" } else { "" };
            writeln!(listing, "  {m:04o} {p}{slash}").unwrap();
        }
        println!("umask {umask}:\n{listing}");
        let wrong: Vec<_> = entries
            .iter()
            .filter(|(_, d, m)| *m != if *d { 0o700 } else { 0o600 })
            .collect();
        assert!(
            wrong.is_empty(),
            "umask {umask}: not 0700 dirs / 0600 files:\n{listing}"
        );
        for made in [".wal", ".ckpt", ".torn-", "instance.id", "LOCK"] {
            assert!(
                entries
                    .iter()
                    .any(|(p, _, _)| p.to_string_lossy().contains(made)),
                "umask {umask}: the child made no {made} file, so its mode went unchecked:\n{listing}"
            );
        }
    }
}
