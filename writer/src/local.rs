//! The local dead-letter file: rows the database refused and its
//! dead-letter table could not hold either. One JSON object per line,
//! appended and synced before the flush that refused them commits.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use writebehind_core::Change;

use crate::error::{Error, Result};

/// One row in the local dead-letter file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalDeadLetter {
    /// The cache instance that flushed it.
    pub instance: String,
    /// The data table.
    pub table: String,
    /// The flush position.
    pub position: i64,
    /// The exact key.
    pub key: String,
    /// The change that could not be written.
    pub change: Change,
    /// Why the data table refused it.
    pub error: String,
    /// Why the dead-letter table refused it too.
    pub refused_by_table: String,
    /// When, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

pub(crate) use LocalDeadLetter as Entry;

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Config(format!("local dead-letter file {}: {e}", path.display()))
}

/// Appends `entries` to the file at `path` (created private) and syncs it.
pub(crate) fn append(path: &Path, entries: &[Entry]) -> Result<()> {
    let mut text = String::new();
    for e in entries {
        let line = serde_json::to_string(e)
            .map_err(|e| Error::Config(format!("local dead letter does not encode: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let created = !path.exists();
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))?;
    file.sync_data().map_err(io(path))?;
    if created {
        // A new file's name is durable only once its directory is fsynced:
        // a power cut would otherwise take the dead letters with it.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Every entry of the local dead-letter file at `path` (none when it does
/// not exist). A line that does not decode is an error naming its number.
pub fn read_local_dead_letters(path: &Path) -> Result<Vec<LocalDeadLetter>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line).map_err(|e| {
            Error::Config(format!(
                "local dead-letter file {} line {}: {e}",
                path.display(),
                n + 1
            ))
        })?;
        out.push(entry);
    }
    Ok(out)
}
