//! A circuit breaker in front of a target's secret store: after `failures` store errors in a
//! row it opens and rotations fail fast without calling the store; after `open_for` one probe
//! is let through (half-open), whose result closes or re-opens it.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerSettings;
pub use crate::targets::status::BreakerState;

/// One breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            failures: 0,
            opened_at: None,
            probing: false,
        }
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        match self.opened_at {
            None => BreakerState::Closed,
            Some(at) if at.elapsed() >= self.settings.open_for => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// Whether a call to the store may go ahead; in half-open, only one probe at a time.
    pub fn allow(&mut self) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.probing => false,
            BreakerState::HalfOpen => {
                self.probing = true;
                true
            }
        }
    }

    /// How long until a probe may go (zero unless open).
    pub fn wait(&self) -> Duration {
        match self.opened_at {
            Some(at) => self.settings.open_for.saturating_sub(at.elapsed()),
            None => Duration::ZERO,
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.opened_at = None;
        self.probing = false;
    }

    pub fn failure(&mut self) {
        self.failures += 1;
        if self.probing || self.failures >= self.settings.failures {
            self.opened_at = Some(Instant::now());
        }
        self.probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn closed_open_half_open() {
        let mut b = Breaker::new(BreakerSettings {
            failures: 2,
            open_for: Duration::from_secs(10),
        });
        assert!(b.allow());
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow(), "one probe");
        assert!(!b.allow(), "only one");
        b.failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed probe re-opens");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
