//! The stable id of a cache instance: made once per WAL directory.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

const FILE: &str = "instance.id";

/// Whether `id` is 1 to 64 letters, digits or `-` (it names a progress row
/// and a NATS subject token). One rule for a configured id and a stored one.
fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Refuses an id that is not [`valid`].
pub(crate) fn check(id: &str) -> Result<()> {
    if !valid(id) {
        return Err(Error::Config(format!(
            "instance id {:?} must be 1 to 64 letters, digits or '-'",
            id.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// Reads the directory's instance id, creating it durably on first use
/// (with `explicit` when given, which an existing id must match).
pub(crate) fn id(dir: &Path, explicit: Option<&str>) -> Result<String> {
    let path = dir.join(FILE);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            if !valid(id) {
                return Err(Error::Config(format!(
                    "{} holds no valid instance id",
                    path.display()
                )));
            }
            if let Some(want) = explicit.filter(|w| *w != id) {
                return Err(Error::Config(format!(
                    "{} holds instance id {id}, not {want}: this directory belongs to another instance",
                    path.display()
                )));
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            writebehind_wal::fs::create_dir_all_private(dir).map_err(io)?;
            let id = match explicit {
                Some(id) => id.to_owned(),
                None => format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            };
            let tmp = dir.join(format!("{FILE}.tmp"));
            let mut f = writebehind_wal::fs::create_private(&tmp).map_err(io)?;
            f.write_all(id.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_id_is_held_to_the_rule_of_a_configured_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let stored = |text: &str| {
            std::fs::write(dir.path().join(FILE), text).unwrap_or_else(|e| panic!("{e}"));
            id(dir.path(), None)
        };
        for bad in ["", "a_b", "é", &"x".repeat(65)] {
            assert!(matches!(check(bad), Err(Error::Config(_))), "{bad:?}");
            assert!(matches!(stored(bad), Err(Error::Config(_))), "{bad:?}");
        }
        for good in ["a-1", &"x".repeat(64)] {
            assert!(check(good).is_ok(), "{good:?}");
            assert_eq!(stored(good).ok().as_deref(), Some(good));
        }
    }
}
