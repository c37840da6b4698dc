//! Everything a test sees — daemon logs, API and webhook responses, CLI output, `/metrics`,
//! the test process's own logs — is appended to a file per test process under
//! `target/test-captures/` (or `$CREDSWAP_TEST_CAPTURE_DIR`). `dev/canary-scan` reads them all
//! at the end of the suite and fails it if any canary secret appears.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

static FILE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

fn dir() -> PathBuf {
    std::env::var_os("CREDSWAP_TEST_CAPTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-captures"))
}

fn file() -> &'static Mutex<std::fs::File> {
    FILE.get_or_init(|| {
        let dir = dir();
        std::fs::create_dir_all(&dir).expect("the capture directory can be made");
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "test".into());
        let path = dir.join(format!("{exe}-{}.txt", std::process::id()));
        Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("the capture file can be opened"),
        )
    })
}

/// Records `text`, labelled with its kind (`api`, `webhook`, `cli`, `metrics`, `log`, ...)
/// and where it came from.
pub fn record(kind: &str, what: &str, text: &str) {
    let mut f = file().lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(f, "=== {kind}: {what}\n{text}");
}
