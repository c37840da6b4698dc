//! credswap: live, verified TLS PostgreSQL pools for the applications on a host, fed by
//! rotating credentials.
//!
//! Where things are: [`config`] reads and validates the configuration, [`dsn`] parses
//! connection strings, [`tls`] turns `sslmode` into a rustls configuration, [`pool`] builds and
//! verifies pools, [`secret`] holds credentials, and [`cli`] is the command line.

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod dsn;
pub mod metrics;
pub mod pool;
pub mod rotation;
pub mod secret;
pub mod service;
pub mod tls;
pub mod webhook;
