//! A token bucket per peer uid: one noisy application cannot starve the others.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets by uid.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<u32, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_second` 0 turns limiting off.
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimiter {
            per_second,
            burst: burst as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `uid`, or says in how many seconds one will be there.
    pub fn take(&self, uid: u32) -> Result<(), u64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("never poisoned");
        let (tokens, last) = buckets.entry(uid).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_second).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse() {
        let r = RateLimiter::new(1.0, 3);
        assert!(r.take(5).is_ok());
        assert!(r.take(5).is_ok());
        assert!(r.take(5).is_ok());
        assert_eq!(r.take(5), Err(1));
        assert!(r.take(6).is_ok(), "buckets are per uid");
        assert!(RateLimiter::new(0.0, 1).take(5).is_ok());
    }
}
