//! credswap: live, verified TLS PostgreSQL pools for the applications on a host, fed by
//! rotating credentials.
//!
//! The map of the house, in the order data flows:
//!
//! - [`config`]: the TOML file, environment overrides, validation; source settings, durations.
//! - [`dsn`], [`tls`]: libpq connection strings; rustls for each `sslmode`.
//! - [`secret`]: the `SecretSource` trait and its AWS, Vault/OpenBao, file and dev sources.
//! - [`pool`]: verified pools of one generation (tokio-postgres on bb8), and which listed host
//!   each new connection goes to (`pool::hosts`: `target_session_attrs`, failover).
//! - [`rotation`]: the control side: one rotator per target (fetch, build, verify, swap),
//!   drains, the breaker, the engine that runs them. Where a rotation happens.
//! - [`targets`]: the request side: one handle per target (current generation, checkout,
//!   access lists, status) in a registry every front end holds. Where a request goes first.
//! - [`listen`]: what every front end shares: socket files, peer credentials, read-interest
//!   streams, the accept loop with connection limits.
//! - [`http`]: HTTP plumbing shared by the two HTTP front ends.
//! - [`api`], [`webhook`], [`postgres`]: the front ends (HTTP+JSON, rotation webhooks, the
//!   PostgreSQL wire protocol), equal neighbours on `listen` and `targets`.
//! - [`metrics`]: the Prometheus registry.
//! - [`service`], [`shutdown`]: the daemon's lifecycle under one shutdown signal; [`signal`],
//!   the flag behind its cheapest wait.
//! - [`cli`]: the command line (`run`, `status`, `rotate`, `query`, `check-config`).

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod dsn;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod pool;
pub mod postgres;
pub mod rotation;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod signal;
pub mod targets;
pub mod tls;
pub mod webhook;
