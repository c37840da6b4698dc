//! The rotation engine: where a rotation happens.
//!
//! Each target has one [`rotator`] task fed by triggers (start-up, timer, lease clock, file
//! change, explicit requests, authentication failures seen by the live pool). A rotation
//! fetches the credentials, stops if nothing changed, builds and verifies a new pool, swaps it
//! in with one atomic store ([`target::TargetRuntime`]), and hands the old [`generation`] to
//! [`drain`]. Anything failing before the swap leaves the live generation serving; the target
//! turns degraded and the rotator retries with backoff behind a circuit [`breaker`].

pub mod breaker;
pub mod drain;
pub mod engine;
pub mod generation;
mod rotator;
pub mod status;
pub mod target;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

pub use engine::{Engine, ReloadReport, StartupReport};
pub use generation::Generation;
pub use status::{Event, EventKind, TargetState, TargetStatus};
pub use target::{Checkout, CheckoutError, TargetRuntime};

/// Why a rotation ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Startup,
    Timer,
    /// A dynamic lease is near its end, or a static role was just rotated by the store.
    Lease,
    /// The credentials file changed.
    FileChange,
    /// Asked for through the API or CLI.
    Api,
    Webhook,
    Signal,
    /// The live pool's new connections are refused: the password changed under us.
    AuthFailure,
    /// A retry after a failed rotation.
    Retry,
}

impl Trigger {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Timer => "timer",
            Trigger::Lease => "lease",
            Trigger::FileChange => "file_change",
            Trigger::Api => "api",
            Trigger::Webhook => "webhook",
            Trigger::Signal => "signal",
            Trigger::AuthFailure => "auth_failure",
            Trigger::Retry => "retry",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step of a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Fetch,
    Connect,
    Verify,
    /// Opening as many connections as the live generation uses, before the swap.
    Warm,
    Swap,
    Drain,
}

impl Step {
    /// The label used in logs, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Fetch => "fetch",
            Step::Connect => "connect",
            Step::Verify => "verify",
            Step::Warm => "warm",
            Step::Swap => "swap",
            Step::Drain => "drain",
        }
    }
}

/// How long one step took.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StepTiming {
    pub step: Step,
    #[serde(serialize_with = "serialize_ms")]
    pub duration: Duration,
}

pub(crate) fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// What a rotation did.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// A new generation serves.
    Swapped { generation: u64 },
    /// The source had nothing new; the live generation keeps serving.
    Unchanged { generation: Option<u64> },
    /// The live generation (if any) keeps serving; the error says which step failed and why.
    Failed { step: Step, error: String },
}

/// The record of one rotation, for status, events and API callers that wait.
#[derive(Clone, Debug, Serialize)]
pub struct RotationReport {
    /// Counts rotations of this target since start.
    pub rotation: u64,
    pub target: String,
    pub trigger: Trigger,
    pub forced: bool,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub steps: Vec<StepTiming>,
    #[serde(serialize_with = "status::serialize_time")]
    pub started_at: std::time::SystemTime,
}
