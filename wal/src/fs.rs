//! Private files: the WAL directory and everything in it hold the application's keys and
//! values, so only the owner may read them.
//!
//! Directories this module creates get mode `0700` and files `0600`, whatever the process
//! umask: the mode is passed to `mkdir`/`open` (a umask can only remove bits, so nobody else
//! ever gets access, not even for an instant) and then set explicitly if a umask also removed
//! owner bits. Every file the WAL directory holds is made here — segments, checkpoints and
//! their temp files, torn-tail copies, and the cache's `instance.id` and `LOCK` — so the rule
//! lives in one place: any new file in the directory should be made with these helpers too.
//!
//! An existing directory keeps its mode: [`check_private_dir`] says whether group or others
//! can get in, and the WAL logs a warning naming it when it opens one (it does not refuse).
//!
//! On non-Unix platforms the files are created with the platform's defaults and the check
//! reports nothing: access there is governed by ACLs this crate does not inspect.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of every directory this crate creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file this crate creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents, each new one with mode [`DIR_MODE`] (`0700`).
/// Directories that already exist are left as they are (see [`check_private_dir`]).
pub fn create_dir_all_private(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all_private(parent)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    match builder.create(dir) {
        // The new entry is durable only once its parent directory is
        // fsynced: a power cut would otherwise take the whole log with it.
        Ok(()) => {
            set_dir_mode(dir)?;
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(parent)?.sync_all()
        }
        // Someone else made it meanwhile: theirs, so not ours to chmod.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `path` (truncating it if it exists) for writing, with mode [`FILE_MODE`]
/// (`0600`); an existing file's mode is set to `0600` too.
///
/// Segments, checkpoint temp files, torn-tail copies and `instance.id` are made with this.
pub fn create_private(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    open_with_mode(&mut opts, path)
}

/// Opens `path` for appending, creating it with mode [`FILE_MODE`] (`0600`) if missing; never
/// truncates. An existing file's mode is set to `0600` too.
///
/// For files that live as long as the directory and grow by appends: the cache's `LOCK` file,
/// and the place to open a local dead-letter file or any other log kept in the WAL directory.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.append(true).create(true);
    open_with_mode(&mut opts, path)
}

/// Whether group or others can reach into the existing directory `dir`: `None` when only the
/// owner can (or, off Unix, always). Symlinks are followed.
pub fn check_private_dir(dir: &Path) -> io::Result<Option<Exposure>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
        Ok((mode & 0o077 != 0).then_some(Exposure { mode }))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(dir)?;
        Ok(None)
    }
}

/// A directory that users other than its owner can read, write or enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exposure {
    mode: u32,
}

impl Exposure {
    /// The directory's permission bits (e.g. `0o755`).
    pub fn mode(&self) -> u32 {
        self.mode
    }
}

impl fmt::Display for Exposure {
    /// `mode 0755 (group r-x, others r-x)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rwx = |bits: u32| {
            let b = |mask: u32, c: char| if bits & mask != 0 { c } else { '-' };
            [b(4, 'r'), b(2, 'w'), b(1, 'x')].iter().collect::<String>()
        };
        write!(
            f,
            "mode {:04o} (group {}, others {})",
            self.mode,
            rwx(self.mode >> 3),
            rwx(self.mode)
        )
    }
}

fn open_with_mode(opts: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(opts, FILE_MODE);
    let file = opts.open(path)?;
    set_file_mode(&file)?;
    Ok(file)
}

/// `open` applied `0600` minus the umask to a new file and nothing to an existing one.
#[cfg(unix)]
fn set_file_mode(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if file.metadata()?.permissions().mode() & 0o7777 != FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_file_mode(_file: &File) -> io::Result<()> {
    Ok(())
}

/// A umask such as `0277` leaves a new directory `0500`, which the WAL could not write in.
#[cfg(unix)]
fn set_dir_mode(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(dir)?.permissions().mode() & 0o7777 != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_dir_mode(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn exposure_names_the_bits_others_have() {
        let x = Exposure { mode: 0o755 };
        assert_eq!(x.to_string(), "mode 0755 (group r-x, others r-x)");
        assert_eq!(
            Exposure { mode: 0o720 }.to_string(),
            "mode 0720 (group -w-, others ---)"
        );
    }
}
