//! The power-cut file system through real system calls on a real mount.
//!
//! These need root, `/dev/fuse` and `fusermount3`; without them every test
//! fails saying what to install.
#![allow(clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use writebehind_testkit::{Cut, Mounted, PowerCutFs, PAGE};

struct Fixture {
    fs: Option<Mounted>,
    mnt: PathBuf,
    backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        if let Err(e) = writebehind_testkit::check_environment() {
            panic!("{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let fs = PowerCutFs::mount(&backing, &mnt).unwrap();
        Fixture {
            fs: Some(fs),
            mnt,
            backing,
            _dir: dir,
        }
    }

    fn fs(&self) -> &Mounted {
        self.fs.as_ref().unwrap()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn remount(&mut self) {
        self.fs.take().unwrap().unmount().unwrap();
        self.fs = Some(PowerCutFs::mount(&self.backing, &self.mnt).unwrap());
    }
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn create(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap()
}

fn read(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

#[test]
fn reads_see_unsynced_writes_and_a_cut_drops_them() {
    let fx = Fixture::new();
    let p = fx.path("f");
    let f = create(&p);
    f.write_all_at(b"synced", 0).unwrap();
    f.sync_data().unwrap();
    sync_dir(&fx.mnt);
    f.write_all_at(b" and then some", 6).unwrap();
    assert_eq!(read(&p).unwrap(), b"synced and then some");
    drop(f);
    let r = fx.fs().cut(Cut::DropUnsynced);
    assert_eq!(read(&p).unwrap(), b"synced");
    assert_eq!(r.stats.pages_dropped, 1);
    assert_eq!(r.stats.bytes_dropped, 20);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 6);
}

#[test]
fn fsynced_data_and_names_survive_a_cut_and_an_unmount() {
    let mut fx = Fixture::new();
    std::fs::create_dir(fx.path("d")).unwrap();
    sync_dir(&fx.mnt);
    let p = fx.path("d/f");
    let f = create(&p);
    f.write_all_at(&[5; 10_000], 0).unwrap();
    f.set_len(9_000).unwrap();
    f.sync_all().unwrap();
    sync_dir(&fx.path("d"));
    drop(f);
    fx.fs().cut(Cut::DropUnsynced);
    assert_eq!(read(&p).unwrap(), vec![5; 9_000]);
    fx.remount();
    assert_eq!(read(&p).unwrap(), vec![5; 9_000]);
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read(fx.backing.join("d/f")).unwrap(),
        vec![5; 9_000]
    );
}

#[test]
fn a_file_fsynced_in_a_directory_never_fsynced_vanishes() {
    let fx = Fixture::new();
    let p = fx.path("seg");
    let f = create(&p);
    f.write_all_at(b"data", 0).unwrap();
    f.sync_data().unwrap();
    drop(f);
    assert!(read(&p).is_some());
    let r = fx.fs().cut(Cut::DropUnsynced);
    assert_eq!(read(&p), None);
    assert_eq!(r.stats.dir_ops_dropped, 1);
    assert_eq!(r.stats.nodes_vanished, 1);
    assert_eq!(std::fs::read_dir(&fx.mnt).unwrap().count(), 0);
}

#[test]
fn a_rename_is_undone_without_a_directory_fsync_and_kept_with_one() {
    let fx = Fixture::new();
    let (tmp, fin) = (fx.path("ckpt.tmp"), fx.path("ckpt"));
    for (content, sync) in [(&b"one"[..], true), (&b"two"[..], false)] {
        let f = create(&tmp);
        f.write_all_at(content, 0).unwrap();
        f.sync_data().unwrap();
        drop(f);
        std::fs::rename(&tmp, &fin).unwrap();
        if sync {
            sync_dir(&fx.mnt);
        }
    }
    assert_eq!(read(&fin).unwrap(), b"two");
    fx.fs().cut(Cut::DropUnsynced);
    // The second create and rename never reached the disk: the first rename did.
    assert_eq!(read(&fin).unwrap(), b"one");
    assert_eq!(read(&tmp), None);
}

#[test]
fn unlink_mkdir_rmdir_wait_for_their_directory_fsync() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path("a")).unwrap();
    create(&fx.path("a/x"));
    sync_dir(&fx.mnt);
    sync_dir(&fx.path("a"));
    std::fs::remove_file(fx.path("a/x")).unwrap();
    std::fs::create_dir(fx.path("b")).unwrap();
    std::fs::remove_dir(fx.path("b")).unwrap();
    std::fs::create_dir(fx.path("c")).unwrap();
    assert_eq!(read(&fx.path("a/x")), None);
    fx.fs().cut(Cut::DropUnsynced);
    assert_eq!(read(&fx.path("a/x")).unwrap(), b"");
    assert!(!fx.path("b").exists());
    assert!(!fx.path("c").exists());
}

#[test]
fn open_exclusive_locks_chmod_and_stale_handles() {
    let fx = Fixture::new();
    let lock = fx.path("LOCK");
    let a = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&lock)
        .unwrap();
    a.try_lock().unwrap();
    let b = OpenOptions::new().append(true).open(&lock).unwrap();
    assert!(matches!(
        b.try_lock(),
        Err(std::fs::TryLockError::WouldBlock)
    ));
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777,
        0o640
    );
    sync_dir(&fx.mnt);
    let r = fx.fs().cut(Cut::DropUnsynced);
    // At least the two files (a closed handle's release may still be on its way).
    assert!(r.stats.stale_handles >= 2, "{:?}", r.stats);
    assert_eq!(a.write_at(b"x", 0).unwrap_err().raw_os_error(), Some(5));
    let mut s = String::new();
    assert!(matches!(
        File::open(&lock).unwrap().read_to_string(&mut s),
        Ok(0)
    ));
}

/// Byte `i` of the test file's synced and unsynced versions.
fn old_byte(i: u64) -> u8 {
    (i / PAGE) as u8 + 1
}
fn new_byte(i: u64) -> u8 {
    (i / PAGE) as u8 + 101
}

#[test]
fn torn_cuts_keep_an_arbitrary_subset_of_pages() {
    let fx = Fixture::new();
    let p = fx.path("wal");
    let (old_len, new_len) = (6 * PAGE + 100, 12 * PAGE + 7);
    let old: Vec<u8> = (0..old_len).map(old_byte).collect();
    let new: Vec<u8> = (0..new_len).map(new_byte).collect();
    let mut subsets = std::collections::BTreeSet::new();
    let mut not_prefix = 0;
    for seed in 0..24u64 {
        let _ = std::fs::remove_file(&p);
        let f = create(&p);
        f.write_all_at(&old, 0).unwrap();
        f.sync_data().unwrap();
        sync_dir(&fx.mnt);
        // Positional writes, out of order, in pieces that straddle pages.
        let mut at = new_len;
        while at > 0 {
            let from = at.saturating_sub(3000);
            f.write_all_at(&new[from as usize..at as usize], from)
                .unwrap();
            at = from;
        }
        drop(f);
        let report = fx.fs().cut(Cut::Torn { seed });
        let fc = report
            .files
            .iter()
            .find(|fc| fc.path == Path::new("wal"))
            .unwrap();
        let kept: std::collections::BTreeSet<u64> = fc.kept_pages.iter().copied().collect();
        assert_eq!(kept.len() + fc.dropped_pages.len(), 13, "seed {seed}");
        let reach = kept.iter().map(|p| (p + 1) * PAGE).max().unwrap_or(0);
        let want_len = old_len.max(reach.min(new_len));
        assert_eq!(fc.len, want_len, "seed {seed}");
        let got = read(&p).unwrap();
        assert_eq!(got.len() as u64, want_len, "seed {seed}");
        for (i, &b) in got.iter().enumerate() {
            let i = i as u64;
            let want = if kept.contains(&(i / PAGE)) {
                new_byte(i)
            } else if i < old_len {
                old_byte(i)
            } else {
                0
            };
            assert_eq!(b, want, "seed {seed}: byte {i} (page {})", i / PAGE);
        }
        if kept.iter().enumerate().any(|(n, &p)| n as u64 != p) {
            not_prefix += 1;
        }
        subsets.insert(fc.kept_pages.clone());
    }
    assert!(subsets.len() > 12, "too few distinct subsets: {subsets:?}");
    assert!(not_prefix > 0, "every torn cut kept a prefix of the pages");
}

#[test]
fn torn_cuts_keep_a_prefix_of_directory_operations() {
    let fx = Fixture::new();
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..16u64 {
        for n in 0..4 {
            let _ = std::fs::remove_file(fx.path(&format!("f{n}")));
        }
        sync_dir(&fx.mnt);
        for n in 0..4 {
            create(&fx.path(&format!("f{n}")));
        }
        let r = fx.fs().cut(Cut::Torn { seed });
        let present: Vec<bool> = (0..4).map(|n| fx.path(&format!("f{n}")).exists()).collect();
        let k = r.stats.dir_ops_kept as usize;
        assert_eq!(r.stats.dir_ops_kept + r.stats.dir_ops_dropped, 4);
        let want: Vec<bool> = (0..4).map(|n| n < k).collect();
        assert_eq!(present, want, "seed {seed}");
        seen.insert(k);
    }
    assert!(seen.len() >= 3, "prefix lengths seen: {seen:?}");
}
