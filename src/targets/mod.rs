//! The request side of every target: what front ends hold. A [`TargetHandle`] has the target's
//! name, its current [`Generation`] (swapped in by the rotation engine), checkout with typed
//! errors, its settings (access lists, limits, the source webhooks match on) and the door to its
//! rotator. The [`Registry`] owns the set of handles; a reload swaps entries in it, and settings
//! that do not touch connections are applied to a handle in place.

pub mod generation;
pub mod handle;
pub mod registry;
pub mod report;
pub mod status;

pub use generation::Generation;
pub use handle::{Checkout, CheckoutError, RotateError, TargetHandle};
pub use registry::Registry;
pub use report::{FailureCause, Outcome, RotationError, RotationReport, Step, StepTiming, Trigger};
pub use status::{BreakerState, Event, EventKind, TargetState, TargetStatus};
