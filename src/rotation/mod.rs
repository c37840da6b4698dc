//! The rotation engine: the control side of every target, and where a rotation happens.
//!
//! Each target has one [`rotator`] task fed by triggers (start-up, timer, lease clock, file
//! change, explicit requests, authentication failures seen by the live pool). A rotation
//! fetches the credentials, stops if nothing changed, builds and verifies a new pool, swaps it
//! into the target's handle ([`crate::targets::TargetHandle`]) with one atomic store, and hands
//! the old generation to [`drain`]. Anything failing before the swap leaves the live generation
//! serving; the target turns degraded and the rotator retries with backoff behind a circuit
//! [`breaker`]. Requests never pass through here: front ends hold the handles.

pub mod breaker;
pub mod drain;
pub mod engine;
mod rotator;

pub use crate::targets::report::{
    FailureCause, Outcome, RotationError, RotationReport, Step, StepTiming, Trigger,
};
pub use engine::{Engine, ReloadReport, StartupReport};
