//! The vocabulary of a rotation, shared by the rotator that writes it and the front ends that
//! show it: why it ran ([`Trigger`]), its steps, what it did ([`Outcome`]) and, when it
//! failed, the typed [`RotationError`]. Errors stay typed here and become text only when
//! serialised for a client, logged or printed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::pool::PoolError;
use crate::secret::SecretError;

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
    Failed(RotationError),
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
    #[serde(serialize_with = "super::status::serialize_time")]
    pub started_at: std::time::SystemTime,
}

/// Why a rotation failed: the step, and the typed cause.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{} failed: {cause}", step.as_str())]
pub struct RotationError {
    pub step: Step,
    #[source]
    pub cause: FailureCause,
}

/// What went wrong in a failed step.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FailureCause {
    /// The secret store could not be asked, or its answer was unusable.
    #[error(transparent)]
    Secret(Arc<SecretError>),
    /// The new pool could not be built or did not pass verification.
    #[error(transparent)]
    Pool(Arc<PoolError>),
    /// The breaker in front of the store is open: no call was made.
    #[error("circuit breaker open: the secret store failed {failures} times in a row; next probe in {:.1}s", retry_in.as_secs_f64())]
    BreakerOpen { failures: u32, retry_in: Duration },
}

impl FailureCause {
    /// `secret`, `pool` or `breaker`: for clients that act on the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            FailureCause::Secret(_) => "secret",
            FailureCause::Pool(_) => "pool",
            FailureCause::BreakerOpen { .. } => "breaker",
        }
    }

    /// Whether the credentials were refused by the database.
    pub fn is_auth(&self) -> bool {
        matches!(self, FailureCause::Pool(p) if p.is_auth())
    }
}

impl From<SecretError> for FailureCause {
    fn from(e: SecretError) -> Self {
        FailureCause::Secret(Arc::new(e))
    }
}

impl From<PoolError> for FailureCause {
    fn from(e: PoolError) -> Self {
        FailureCause::Pool(Arc::new(e))
    }
}

/// On the wire: `"step": "fetch", "cause": "secret", "error": "<the sentence>"`.
impl Serialize for RotationError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RotationError", 3)?;
        st.serialize_field("step", &self.step)?;
        st.serialize_field("cause", self.cause.kind())?;
        st.serialize_field("error", &self.cause.to_string())?;
        st.end()
    }
}
