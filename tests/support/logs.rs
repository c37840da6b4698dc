//! Captures every log line of the test process (all crates, TRACE level) so a test can assert
//! that no secret was logged.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static BUFFER: OnceLock<Buffer> = OnceLock::new();

/// Installs the capturing subscriber (once per process).
pub fn capture() {
    BUFFER.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    });
}

/// Everything logged so far (also recorded for the end-of-suite canary scan).
pub fn captured() -> String {
    let buffer = BUFFER.get().expect("logs::capture() was called");
    let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    super::capture::record("log", "test process log", &text);
    text
}
