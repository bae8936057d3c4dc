//! A token-bucket rate limiter shared by every tenant's client, so that the operator as a whole
//! keeps to one request budget at Seshn however many bridges it manages (Seshn's AUP asks callers
//! to respect its rate limits; their numbers are unpublished, so the budget is a flag).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `burst` requests at once, then `per_second` on average.
///
/// Callers reserve a token and then sleep until it is theirs, so waiters are served in arrival
/// order and the lock is never held across an await. A caller cancelled while waiting still
/// spends its token, which only ever makes the limiter stricter.
#[derive(Debug)]
pub struct RateLimiter {
    /// `None` when the limiter is disabled (`per_second == 0`).
    rate: Option<f64>,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Available tokens; negative while callers are queued for future tokens.
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests per second on average and `burst` at once.
    ///
    /// `per_second == 0` disables limiting; `burst` is at least 1.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: (per_second > 0).then(|| f64::from(per_second)),
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// A limiter that never waits (for tests and tools).
    pub fn unlimited() -> Self {
        Self::new(0, 1)
    }

    /// Waits until one request may be sent.
    pub async fn acquire(&self) {
        if let Some(wait) = self.reserve() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes one token now and returns how long to wait until it is really available.
    fn reserve(&self) -> Option<Duration> {
        let rate = self.rate?;
        // A poisoned lock only means another caller panicked mid-update of two plain numbers;
        // the bucket is still usable.
        let mut bucket = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.last = now;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(self.burst);
        bucket.tokens -= 1.0;
        if bucket.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-bucket.tokens / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_free_then_waits_grow() {
        let l = RateLimiter::new(10, 3);
        assert_eq!(l.reserve(), None);
        assert_eq!(l.reserve(), None);
        assert_eq!(l.reserve(), None);
        let first = l.reserve().unwrap();
        let second = l.reserve().unwrap();
        assert!(first <= Duration::from_millis(101), "{first:?}");
        assert!(second > first, "{second:?} > {first:?}");
        assert!(second <= Duration::from_millis(201), "{second:?}");
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let l = RateLimiter::unlimited();
        for _ in 0..1000 {
            assert_eq!(l.reserve(), None);
        }
    }

    #[test]
    fn zero_burst_means_one() {
        let l = RateLimiter::new(1, 0);
        assert_eq!(l.reserve(), None);
        assert!(l.reserve().is_some());
    }
}
