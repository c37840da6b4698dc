//! A token bucket per client (a peer uid on the socket, an address for webhooks): one noisy
//! client cannot starve the others.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// Most clients tracked; beyond that, idle full buckets are forgotten.
const MAX_CLIENTS: usize = 10_000;

/// Buckets by client key.
#[derive(Debug)]
pub struct RateLimiter<K = u32> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `per_second` 0 turns limiting off.
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimiter {
            per_second,
            burst: burst as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says in how many seconds one will be there.
    pub fn take(&self, key: K) -> Result<(), u64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("never poisoned");
        if buckets.len() >= MAX_CLIENTS {
            let (rate, burst) = (self.per_second, self.burst);
            buckets
                .retain(|_, (t, last)| *t + now.duration_since(*last).as_secs_f64() * rate < burst);
        }
        let (tokens, last) = buckets.entry(key).or_insert((self.burst, now));
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

/// Lets a kind of log line through at most once a second, counting the ones it held back, so a
/// flood of refused requests cannot flood the journal.
#[derive(Debug)]
pub struct LogThrottle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle {
            state: Mutex::new((None, 0)),
        }
    }
}

impl LogThrottle {
    /// `Some(n)`: log now, mentioning the `n` lines held back since the last one; `None`: skip.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state.lock().expect("never poisoned");
        match s.0 {
            Some(at) if now.duration_since(at).as_secs_f64() < 1.0 => {
                s.1 += 1;
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_logs_count_what_they_hold_back() {
        let t = LogThrottle::default();
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        *t.state.lock().unwrap() = (Some(Instant::now() - std::time::Duration::from_secs(2)), 2);
        assert_eq!(t.allow(), Some(2));
    }

    #[test]
    fn burst_then_refuse() {
        let r: RateLimiter = RateLimiter::new(1.0, 3);
        assert!(r.take(5).is_ok());
        assert!(r.take(5).is_ok());
        assert!(r.take(5).is_ok());
        assert_eq!(r.take(5), Err(1));
        assert!(r.take(6).is_ok(), "buckets are per uid");
        assert!(RateLimiter::<u32>::new(0.0, 1).take(5).is_ok());
    }
}
