//! The retry budget: retries may be at most `ratio` × requests plus
//! `min_per_second` per second, counted over a sliding window of ten
//! one-second buckets. A failing service therefore sees at most ~20% more
//! load from retries, never a multiple of it. Lock-free: every request
//! touches only atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::policy::BudgetConfig;

const BUCKETS: usize = 10;

struct Bucket {
    /// The second this bucket counts (seconds since `start`, + 1; 0: empty).
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

pub struct RetryBudget {
    config: BudgetConfig,
    start: Instant,
    buckets: [Bucket; BUCKETS],
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        RetryBudget {
            config,
            start: Instant::now(),
            buckets: std::array::from_fn(|_| Bucket {
                second: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
        }
    }

    fn bucket(&self, now: Instant) -> &Bucket {
        let second = now.saturating_duration_since(self.start).as_secs() + 1;
        let b = &self.buckets[(second as usize) % BUCKETS];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A new second in this slot: forget what it counted ten seconds ago.
            b.requests.store(0, Ordering::Release);
            b.retries.store(0, Ordering::Release);
        }
        b
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// Counts an original request (not a retry).
    pub fn record_request(&self, now: Instant) {
        self.bucket(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is one.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let current = now.saturating_duration_since(self.start).as_secs() + 1;
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let s = b.second.load(Ordering::Acquire);
            if s != 0 && s + BUCKETS as u64 > current && s <= current {
                requests += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        let window = Duration::from_secs(BUCKETS as u64).as_secs_f64();
        let allowed =
            self.config.ratio * requests as f64 + f64::from(self.config.min_per_second) * window;
        if (retries as f64) < allowed {
            self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_the_ratio_plus_the_floor() {
        let b = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_per_second: 1,
        });
        let now = Instant::now();
        for _ in 0..1000 {
            b.record_request(now);
        }
        // 0.2 × 1000 + 1 × 10 s = 210 retries, then no more.
        let granted = (0..1000).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 210);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let b = RetryBudget::new(BudgetConfig {
            ratio: 0.0,
            min_per_second: 1,
        });
        let now = Instant::now();
        assert_eq!((0..100).filter(|_| b.try_withdraw(now)).count(), 10);
        // Nine seconds on, the early retries still count.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.try_withdraw(Instant::now()));
        // After the window they are forgotten.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            (0..100).filter(|_| b.try_withdraw(Instant::now())).count(),
            10
        );
    }
}
