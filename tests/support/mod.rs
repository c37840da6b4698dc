//! The test harness shared by every integration test: real PostgreSQL clusters with TLS, and
//! canary secrets whose appearance anywhere in output is a leak.
#![allow(dead_code)]

pub mod capture;
pub mod daemon;
pub mod engine;
pub mod faultproxy;
pub mod logs;
pub mod openapi;
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

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
