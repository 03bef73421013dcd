//! `writebehind-powercut`: the power-cut file system for scripts.
//!
//! ```text
//! writebehind-powercut mount BACKING MNT [--control SOCK]   # foreground; SOCK defaults to MNT.ctl
//! writebehind-powercut ctl SOCK cut          # drop everything unsynced
//! writebehind-powercut ctl SOCK tear SEED    # torn: keep a seeded random part of it
//! writebehind-powercut ctl SOCK stats        # the last cut's figures
//! writebehind-powercut ctl SOCK sync         # make everything durable
//! writebehind-powercut ctl SOCK unmount      # sync, write BACKING, unmount, exit
//! ```
//!
//! Each `ctl` prints the one-line answer (`ok ...` or `error ...`) and fails on `error`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use writebehind_testkit::{Cut, Mounted, PowerCutFs};

const USAGE: &str = "usage: writebehind-powercut mount BACKING MNT [--control SOCK]\n       \
                     writebehind-powercut ctl SOCK (cut | tear SEED | stats | sync | unmount)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match strs.as_slice() {
        ["mount", backing, mnt] => mount(Path::new(backing), Path::new(mnt), None),
        ["mount", backing, mnt, "--control", sock] => mount(
            Path::new(backing),
            Path::new(mnt),
            Some(PathBuf::from(sock)),
        ),
        ["ctl", sock, cmd @ ..] if !cmd.is_empty() => ctl(Path::new(sock), &cmd.join(" ")),
        _ => Err(USAGE.to_owned()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writebehind-powercut: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mount(backing: &Path, mnt: &Path, sock: Option<PathBuf>) -> Result<(), String> {
    let sock = sock.unwrap_or_else(|| {
        let mut s = mnt.as_os_str().to_owned();
        s.push(".ctl");
        PathBuf::from(s)
    });
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).map_err(|e| format!("control socket {}: {e}", sock.display()))?;
    let fs = PowerCutFs::mount(backing, mnt).map_err(|e| e.to_string())?;
    eprintln!(
        "writebehind-powercut: {} mounted at {}, control socket {}",
        backing.display(),
        mnt.display(),
        sock.display()
    );
    let mut fs = Some(fs);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let (answer, stop) = answer(fs.as_ref().expect("mounted until unmount"), line.trim());
        let answer = if stop {
            match fs.take().map(Mounted::unmount) {
                Some(Err(e)) => format!("error {e}"),
                _ => answer,
            }
        } else {
            answer
        };
        let _ = (&conn).write_all(format!("{answer}\n").as_bytes());
        if stop {
            break;
        }
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// The answer to one command, and whether to stop.
fn answer(fs: &Mounted, cmd: &str) -> (String, bool) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.as_slice() {
        ["cut"] => (format!("ok {}", fs.cut(Cut::DropUnsynced).stats), false),
        ["tear", seed] => match seed.parse() {
            Ok(seed) => (format!("ok {}", fs.cut(Cut::Torn { seed }).stats), false),
            Err(_) => (format!("error {seed:?} is not a number"), false),
        },
        ["stats"] => match fs.last_cut() {
            Some(r) => (
                format!("ok {} open_handles={}", r.stats, fs.open_handles()),
                false,
            ),
            None => (
                format!("ok no cut yet open_handles={}", fs.open_handles()),
                false,
            ),
        },
        ["sync"] => {
            fs.sync();
            ("ok".into(), false)
        }
        ["unmount"] => ("ok".into(), true),
        _ => (format!("error unknown command {cmd:?}"), false),
    }
}

fn ctl(sock: &Path, cmd: &str) -> Result<(), String> {
    let mut conn =
        UnixStream::connect(sock).map_err(|e| format!("control socket {}: {e}", sock.display()))?;
    conn.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let line = line.trim_end();
    println!("{line}");
    if line.starts_with("ok") {
        Ok(())
    } else {
        Err(format!("{cmd}: {line}"))
    }
}
