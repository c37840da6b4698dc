//! The test harness shared by every integration test: real PostgreSQL clusters with TLS, and
//! canary secrets whose appearance anywhere in output is a leak.
#![allow(dead_code)]

pub mod daemon;
pub mod engine;
pub mod logs;
pub mod openapi;
pub mod pg;
pub mod pki;
pub mod servers;

/// A password no output may ever contain.
pub const CANARY_PASSWORD: &str = "canary-pw-7f3e9b1c";

/// Fails the test if `text` contains the canary password.
pub fn assert_no_canary(what: &str, text: &str) {
    assert!(
        !text.contains(CANARY_PASSWORD),
        "{what} leaks the canary password:\n{text}"
    );
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
