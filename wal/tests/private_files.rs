//! Private files: every directory the WAL creates is 0700 and every file 0600, under any
//! umask; an existing directory others can enter is reported, named, in a warning.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use writebehind_wal::fs::{
    check_private_dir, create_dir_all_private, create_private, open_private_append,
};
use writebehind_wal::{Durability, WalBuilder};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every entry under `root` (itself included) with its mode, sorted.
fn tree(root: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut out = vec![(root.to_path_buf(), true, mode(root))];
    let mut i = 0;
    while i < out.len() {
        let (p, is_dir, _) = out[i].clone();
        if is_dir {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let is_dir = e.file_type().unwrap().is_dir();
                out.push((e.path(), is_dir, mode(&e.path())));
            }
        }
        i += 1;
    }
    out.sort();
    out
}

/// Asserts dirs 0700 and files 0600; the message lists every entry.
fn assert_private(root: &Path) {
    let t = tree(root);
    let mut listing = String::new();
    for (p, d, m) in &t {
        let slash = if *d { "/" } else { "" };
        writeln!(listing, "  {m:04o} {}{slash}", p.display()).unwrap();
    }
    let bad = t
        .iter()
        .filter(|(_, d, m)| *m != if *d { 0o700 } else { 0o600 })
        .count();
    assert_eq!(bad, 0, "not private:\n{listing}");
}

/// A WAL with several segments, a checkpoint and a torn-tail copy in `dir`.
fn make_wal(dir: &Path) {
    let open = || {
        WalBuilder::new(dir)
            .durability(Durability::Fsync)
            .segment_size(256)
            .open()
            .unwrap()
    };
    let (wal, _) = open();
    for i in 0..20u8 {
        wal.append(1, &[i; 40]).unwrap().wait().unwrap();
    }
    wal.write_checkpoint(10, b"state").unwrap();
    wal.close().unwrap();
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    std::io::Write::write_all(&mut f, b"torn garbage").unwrap();
    drop(f);
    let (wal, rec) = open();
    assert!(rec.torn_tail.is_some(), "the garbage was not cut: {rec:?}");
    wal.close().unwrap();
}

#[test]
fn helpers_create_private_dirs_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("a/b/c");
    create_dir_all_private(&deep).unwrap();
    create_dir_all_private(&deep).unwrap(); // exists: fine
    for d in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(&tmp.path().join(d)), 0o700, "{d}");
    }

    let f = deep.join("seg");
    std::io::Write::write_all(&mut create_private(&f).unwrap(), b"x").unwrap();
    assert_eq!(mode(&f), 0o600);
    // An existing, shared file is truncated and made private.
    set_mode(&f, 0o644);
    create_private(&f).unwrap();
    assert_eq!((mode(&f), std::fs::read(&f).unwrap().len()), (0o600, 0));

    let lock = deep.join("LOCK");
    std::io::Write::write_all(&mut open_private_append(&lock).unwrap(), b"ab").unwrap();
    set_mode(&lock, 0o644);
    std::io::Write::write_all(&mut open_private_append(&lock).unwrap(), b"cd").unwrap();
    assert_eq!(mode(&lock), 0o600);
    assert_eq!(
        std::fs::read(&lock).unwrap(),
        b"abcd",
        "append never truncates"
    );

    // A file where a directory should be is an error, not a silent success.
    assert!(create_dir_all_private(&f).is_err());
    assert!(create_dir_all_private(&f.join("sub")).is_err());
}

#[test]
fn check_reports_group_and_other_access() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    for (m, shared) in [(0o700, false), (0o755, true), (0o750, true), (0o701, true)] {
        set_mode(&d, m);
        let got = check_private_dir(&d).unwrap();
        assert_eq!(got.map(|x| x.mode()), shared.then_some(m), "{m:o}");
    }
    set_mode(&d, 0o755);
    assert_eq!(
        check_private_dir(&d).unwrap().unwrap().to_string(),
        "mode 0755 (group r-x, others r-x)"
    );
    assert!(check_private_dir(&tmp.path().join("missing")).is_err());
}

#[test]
fn wal_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/wal");
    make_wal(&dir);
    let names: Vec<String> = tree(&dir)
        .iter()
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".ckpt")), "{names:?}");
    assert!(names.iter().any(|n| n.contains(".torn-")), "{names:?}");
    assert_private(&tmp.path().join("new"));
}

/// Collects the text of every event logged on this thread.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        write!(self.0, " {}={:?}", field.name(), value).unwrap();
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut s = self.0.lock().unwrap();
        s.push_str(event.metadata().level().as_str());
        event.record(&mut Fields(&mut s));
        s.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn opening_a_shared_directory_warns_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o755);
    let open = |dir: &Path| {
        let log = Capture::default();
        tracing::subscriber::with_default(log.clone(), || {
            WalBuilder::new(dir).open().unwrap().0.close().unwrap();
        });
        let text = log.0.lock().unwrap().clone();
        text
    };
    let text = open(&dir);
    let warning = text
        .lines()
        .find(|l| l.starts_with("WARN") && l.contains("accessible to other users"))
        .unwrap_or_else(|| panic!("no warning in:\n{text}"));
    assert!(warning.contains(&dir.display().to_string()), "{warning}");
    assert!(warning.contains("0755"), "{warning}");
    // Not refused, and left as the owner set it.
    assert_eq!(mode(&dir), 0o755);

    set_mode(&dir, 0o700);
    let text = open(&dir);
    assert!(!text.contains("accessible to other users"), "{text}");
}

const CHILD_DIR: &str = "WB_PRIVATE_FILES_CHILD_DIR";

/// The umask is per process and the crate forbids `unsafe` (no `libc::umask`), so the test
/// re-runs itself under `sh -c 'umask …; exec …'` and checks what the child made.
#[test]
fn modes_hold_under_any_umask() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        make_wal(&PathBuf::from(dir).join("parent/wal"));
        return;
    }
    // 0277 also strips the owner's write bit: the explicit chmod has to put it back.
    for umask in ["000", "022", "077", "0277"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "modes_hold_under_any_umask", "--nocapture"])
            .env(CHILD_DIR, tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child under umask {umask} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let root = tmp.path().join("parent");
        assert!(
            root.join("wal").is_dir(),
            "umask {umask}: the child made nothing"
        );
        assert_private(&root);
    }
}
