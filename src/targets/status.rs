//! What a target is doing, for the API, the CLI and metrics; and the event stream.
//! Nothing here can hold a password: only versions, user names and redacted errors.

use std::time::SystemTime;

use serde::Serialize;

use super::report::{serialize_ms, RotationReport, Step, Trigger};
pub use crate::pool::hosts::HostStatus;

pub(crate) fn serialize_time<S: serde::Serializer>(
    t: &SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

pub(crate) fn serialize_opt_time<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_time(t, s),
        None => s.serialize_none(),
    }
}

/// A target's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// No rotation has finished yet.
    Starting,
    /// A live generation, and the last rotation worked.
    Ready,
    /// The last rotation failed (the live generation, if any, keeps serving).
    Degraded,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Starting => "starting",
            TargetState::Ready => "ready",
            TargetState::Degraded => "degraded",
        }
    }
}

/// The live generation, without its pool.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationInfo {
    pub id: u64,
    pub credential_version: String,
    pub username: String,
    #[serde(serialize_with = "serialize_time")]
    pub built_at: SystemTime,
    pub trigger: Trigger,
    pub tls: bool,
    #[serde(serialize_with = "serialize_opt_time")]
    pub lease_expires_at: Option<SystemTime>,
}

/// Pool statistics of the live generation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PoolStats {
    pub max_size: u32,
    pub connections: u32,
    pub idle: u32,
    pub in_use: u32,
    pub waiting: u64,
    pub checkout_timeouts: u64,
    pub connect_failures: u64,
    pub last_connect_error: Option<String>,
    /// Sessions of the PostgreSQL front end on the live generation.
    pub postgres_sessions: usize,
    /// Server connections the PostgreSQL front end keeps idle between its clients.
    pub postgres_idle_servers: usize,
    /// The connection string's hosts: what each was last seen to be (primary or standby) and
    /// how many of this generation's connections are on it.
    pub hosts: Vec<HostStatus>,
}

/// A generation being drained.
#[derive(Clone, Debug, Serialize)]
pub struct DrainingInfo {
    pub generation: u64,
    pub remaining_connections: u32,
    /// Sessions of the PostgreSQL front end still on it.
    pub postgres_sessions: usize,
    #[serde(serialize_with = "serialize_time")]
    pub deadline: SystemTime,
    /// Where its remaining connections are.
    pub hosts: Vec<HostStatus>,
}

/// Everything the API shows about a target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetStatus {
    pub name: String,
    pub state: TargetState,
    /// Why the target is degraded.
    pub reason: Option<String>,
    pub source: String,
    pub generation: Option<GenerationInfo>,
    pub last_rotation: Option<RotationReport>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "serialize_opt_time")]
    pub next_fetch_at: Option<SystemTime>,
    pub breaker: BreakerState,
    pub pool: PoolStats,
    pub draining: Vec<DrainingInfo>,
}

/// Something that happened to a target.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub target: String,
    #[serde(serialize_with = "serialize_time")]
    pub at: SystemTime,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of events.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RotationStarted {
        rotation: u64,
        trigger: Trigger,
    },
    RotationFinished(RotationReport),
    StateChanged {
        from: TargetState,
        to: TargetState,
        reason: Option<String>,
    },
    DrainFinished {
        generation: u64,
        #[serde(serialize_with = "serialize_ms")]
        duration: std::time::Duration,
        cancelled: usize,
        lease_revoked: Option<bool>,
    },
    /// A writable target's new connections went to another host than before (a promotion).
    Failover {
        generation: u64,
        from: String,
        to: String,
    },
    /// A step of a rotation in progress, for clients that show progress.
    Step {
        rotation: u64,
        step: Step,
    },
}

/// The breaker's state, as status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}
