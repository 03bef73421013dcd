//! `writebehind wal inspect|verify|dump|dead-letters`: read-only views of a WAL directory.
//!
//! Nothing here opens a `Wal` (that would cut a torn tail): every command goes through
//! `writebehind_wal::inspect::scan_dir`, which only reads.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use writebehind_core::{Change, Expected, Value};
use writebehind_wal::inspect::{scan_dir, DirReport};
use writebehind_wal::{codec, Frame};

/// WAL record kind of the cache's records (`src/log.rs`, `KIND`).
const CACHE_KIND: u8 = 1;

/// Exit code of `verify` when the only damage is a torn tail (opening the cache cuts it).
const EXIT_TORN_TAIL: u8 = 2;

/// `writebehind wal` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Segments (file, LSN range, records, bytes) and checkpoints (LSN, bytes, valid?).
    Inspect {
        /// The cache's WAL directory.
        dir: PathBuf,
    },
    /// Check every CRC and LSN continuity in every segment and checkpoint, read-only.
    /// Exit 0: clean; 1: corruption; 2: only a torn tail (opening the cache cuts it).
    Verify {
        /// The cache's WAL directory.
        dir: PathBuf,
    },
    /// Print the records as JSON lines: lsn, kind and the decoded cache record.
    Dump {
        /// The cache's WAL directory.
        dir: PathBuf,
        /// Only records with this LSN or higher.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Print the local dead letters as JSON lines: rows the database refused
    /// and its dead-letter table could not hold either (exact key, change,
    /// both errors). Exit 0 when there are none, 1 when there are some.
    DeadLetters {
        /// The cache's WAL directory.
        dir: PathBuf,
    },
}

pub fn run(cmd: Command) -> Result<ExitCode, String> {
    match cmd {
        Command::Inspect { dir } => inspect(&dir),
        Command::Verify { dir } => verify(&dir),
        Command::Dump { dir, from } => dump(&dir, from),
        Command::DeadLetters { dir } => dead_letters(&dir),
    }
}

/// Scans `dir`, refusing a missing directory or one without WAL files with one sentence (and
/// creating nothing).
fn scan(dir: &Path, mut on_record: impl FnMut(&Path, &Frame)) -> Result<DirReport, String> {
    if !dir.is_dir() {
        return Err(format!(
            "WAL directory {} does not exist or is not a directory",
            dir.display()
        ));
    }
    // A bar per segment on a terminal (a long log takes a while); nothing in a pipe.
    let bar = if std::io::stderr().is_terminal() {
        let segments = std::fs::read_dir(dir).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            })
            .count()
        });
        let b = ProgressBar::new(segments as u64);
        if let Ok(style) = ProgressStyle::with_template("scanning segments [{bar:30}] {pos}/{len}")
        {
            b.set_style(style.progress_chars("=> "));
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let mut current: Option<PathBuf> = None;
    let rep = scan_dir(dir, |path, r| {
        if current.as_deref() != Some(path) {
            bar.inc(1);
            current = Some(path.to_path_buf());
        }
        on_record(path, r)
    });
    bar.finish_and_clear();
    let rep = rep.map_err(|e| format!("cannot read WAL directory: {e}"))?;
    // Most likely the wrong directory: say so rather than report an empty, clean log.
    if rep.segments.is_empty() && rep.checkpoints.is_empty() {
        return Err(format!(
            "{} holds no WAL segment (*.wal) or checkpoint (*.ckpt) files",
            dir.display()
        ));
    }
    Ok(rep)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

fn inspect(dir: &Path) -> Result<ExitCode, String> {
    let rep = scan(dir, |_, _| {})?;
    let mut out = String::new();
    out.push_str(&format!("WAL directory {}\n", dir.display()));
    out.push_str(&format!("segments: {}\n", rep.segments.len()));
    if !rep.segments.is_empty() {
        out.push_str(&format!(
            "  {:<28} {:>12} {:>12} {:>10} {:>12}\n",
            "file", "first LSN", "last LSN", "records", "bytes"
        ));
    }
    for s in &rep.segments {
        let last = s.last_lsn.map_or_else(|| "-".to_owned(), |l| l.to_string());
        out.push_str(&format!(
            "  {:<28} {:>12} {:>12} {:>10} {:>12}\n",
            file_name(&s.path),
            s.first_lsn,
            last,
            s.records,
            s.bytes
        ));
    }
    out.push_str(&format!("checkpoints: {}\n", rep.checkpoints.len()));
    if !rep.checkpoints.is_empty() {
        out.push_str(&format!(
            "  {:<28} {:>12} {:>12}  valid\n",
            "file", "LSN", "bytes"
        ));
    }
    for c in &rep.checkpoints {
        let valid = match &c.invalid {
            None => "yes".to_owned(),
            Some(why) => format!("no ({why})"),
        };
        out.push_str(&format!(
            "  {:<28} {:>12} {:>12}  {valid}\n",
            file_name(&c.path),
            c.lsn,
            c.bytes
        ));
    }
    out.push_str(&format!(
        "total: {} records, {} bytes\n",
        rep.records(),
        rep.segments.iter().map(|s| s.bytes).sum::<u64>()
            + rep.checkpoints.iter().map(|c| c.bytes).sum::<u64>()
    ));
    for p in &rep.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path) -> Result<ExitCode, String> {
    let rep = scan(dir, |_, _| {})?;
    for p in &rep.problems {
        eprintln!("{p}");
    }
    let lsns = match (
        rep.segments
            .iter()
            .find_map(|s| s.last_lsn.map(|_| s.first_lsn)),
        rep.segments.iter().rev().find_map(|s| s.last_lsn),
    ) {
        (Some(a), Some(b)) => format!("LSN {a}..={b}"),
        _ => "no records".to_owned(),
    };
    let summary = format!(
        "{} segments ({} records, {lsns}), {} checkpoints",
        rep.segments.len(),
        rep.records(),
        rep.checkpoints.len()
    );
    if rep.is_clean() {
        println!("OK: {summary}");
        Ok(ExitCode::SUCCESS)
    } else if rep.is_corrupt() {
        println!("CORRUPT: {summary}");
        Ok(ExitCode::FAILURE)
    } else {
        println!("TORN TAIL: {summary}; opening the cache cuts the tail (no acknowledged write is in it)");
        Ok(ExitCode::from(EXIT_TORN_TAIL))
    }
}

/// The cache's WAL record (`src/log.rs` `LogPayload`): same variants in the same order, so the
/// codec decodes it identically; `tests/cli_wal.rs` checks this against records the cache wrote.
#[derive(Deserialize)]
enum LogPayload {
    Op {
        key: String,
        change: Change,
        expected: Expected,
    },
    FlushBegin,
    FlushEnd {
        position: u64,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn record_json(r: &Frame) -> Json {
    let mut o = json!({ "lsn": r.lsn, "kind": r.kind });
    let fields = if r.kind != CACHE_KIND {
        json!({ "type": "unknown", "payload_hex": hex(&r.payload) })
    } else {
        match codec::decode::<LogPayload>(&r.payload) {
            Ok(LogPayload::Op {
                key,
                change,
                expected,
            }) => {
                let change = match change {
                    Change::Add(d) => json!({ "add": d }),
                    Change::Put(Value::Int(v)) => json!({ "put": v }),
                    Change::Put(Value::Bytes(b)) => json!({ "put_bytes": hex(&b) }),
                    Change::Put(Value::Ints(cols)) => json!({ "put_cols": &cols[..] }),
                    Change::AddCols(cols) => json!({ "add_cols": &cols[..] }),
                    Change::Delete => json!("delete"),
                };
                let expected = match expected {
                    Expected::Any => json!("any"),
                    Expected::Absent => json!("absent"),
                    Expected::Version(v) => json!({ "version": v }),
                };
                json!({ "type": "op", "key": key, "change": change, "expected": expected })
            }
            Ok(LogPayload::FlushBegin) => json!({ "type": "flush_begin" }),
            Ok(LogPayload::FlushEnd { position }) => {
                json!({ "type": "flush_end", "position": position })
            }
            Err(e) => json!({
                "type": "undecodable",
                "error": e.to_string(),
                "payload_hex": hex(&r.payload),
            }),
        }
    };
    if let (Some(o), Json::Object(f)) = (o.as_object_mut(), fields) {
        o.extend(f);
    }
    o
}

fn dead_letters(dir: &Path) -> Result<ExitCode, String> {
    if !dir.is_dir() {
        return Err(format!(
            "WAL directory {} does not exist or is not a directory",
            dir.display()
        ));
    }
    let rows = writebehind::local_dead_letters(dir).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for row in &rows {
        let line =
            serde_json::to_string(row).map_err(|e| format!("cannot encode a dead letter: {e}"))?;
        out.push_str(&line);
        out.push('\n');
    }
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(format!("cannot write to stdout: {e}"))
        }
        _ => {}
    }
    eprintln!(
        "{} local dead letter(s) in {}",
        rows.len(),
        dir.join("dead-letters.jsonl").display()
    );
    Ok(if rows.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn dump(dir: &Path, from: u64) -> Result<ExitCode, String> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_err = None;
    let rep = scan(dir, |_, r| {
        if r.lsn < from || write_err.is_some() {
            return;
        }
        if let Err(e) = writeln!(out, "{}", record_json(r)) {
            write_err = Some(e);
        }
    })?;
    let flushed = out.flush();
    match write_err.map_or(flushed, Err) {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(format!("cannot write to stdout: {e}")),
        Ok(()) => {}
    }
    for p in &rep.problems {
        eprintln!("{p}");
    }
    Ok(if rep.is_corrupt() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
