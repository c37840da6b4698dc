//! Processes a test run starts are recorded under `target/tmp/test-pids/<pid>` (with the
//! process's start time and what it is) while they run. A record is removed when its server is
//! stopped; records left by a killed run let `dev/test` stop exactly those orphans, checking the
//! start time so a reused pid is never touched, and nothing another run or user started.

use std::path::PathBuf;

/// A recorded process; dropping it removes the record (after the process was stopped).
pub struct Owned {
    path: Option<PathBuf>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-pids")
}

/// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// Records `pid` as started by this run.
pub fn record(pid: u32, what: &str) -> Owned {
    record_in(&dir(), pid, what)
}

/// Records `pid` in `dir` (a test of the reaper uses its own).
pub fn record_in(dir: &std::path::Path, pid: u32, what: &str) -> Owned {
    let Some(start) = start_time(pid) else {
        return Owned { path: None };
    };
    std::fs::create_dir_all(dir).expect("target/tmp is writable");
    let path = dir.join(pid.to_string());
    std::fs::write(&path, format!("{start} {what}\n")).expect("target/tmp is writable");
    Owned { path: Some(path) }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}
