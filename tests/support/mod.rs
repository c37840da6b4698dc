//! The test harness shared by every integration test: real PostgreSQL clusters with TLS, and
//! canary secrets whose appearance anywhere in output is a leak.
#![allow(dead_code)]

pub mod capture;
pub mod daemon;
pub mod engine;
pub mod faultproxy;
pub mod frontend;
pub mod logs;
pub mod openapi;
pub mod owned;
pub mod pg;
pub mod pki;
pub mod servers;

/// A password no output may ever contain.
pub const CANARY_PASSWORD: &str = "canary-pw-7f3e9b1c";

/// Every canary secret of the harness (passwords, store tokens, webhook keys and tokens), from
/// canaries.txt, which dev/canary-scan reads too.
pub fn canaries() -> impl Iterator<Item = &'static str> {
    include_str!("canaries.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Fails the test if `text` contains any canary; records it for the end-of-suite scan too.
pub fn assert_no_canary(what: &str, text: &str) {
    capture::record("checked", what, text);
    for canary in canaries() {
        assert!(
            !text.contains(canary),
            "{what} leaks a canary ({canary}):\n{text}"
        );
    }
}

/// Writes `content` to `dir/name`, readable by its owner only (credswap refuses secret files
/// others can read).
pub fn write_private(dir: &std::path::Path, name: &str, content: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A JSON credentials file for the file source: `{"username": .., "password": ..}`.
pub fn credentials_file(
    dir: &std::path::Path,
    name: &str,
    user: &str,
    password: &str,
) -> std::path::PathBuf {
    let body = serde_json::json!({"username": user, "password": password}).to_string();
    write_private(dir, name, &body)
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
