//! Peak-EWMA load of one endpoint: a latency estimate that jumps up to any
//! slower sample at once and decays slowly otherwise (toward zero while no
//! samples come, so a once-slow endpoint gets tried again), multiplied by the
//! requests in flight. Cheap to read, and a lock per endpoint, never one
//! shared by all requests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How fast the estimate forgets: the time constant of the decay.
const DECAY: Duration = Duration::from_secs(10);
/// The estimate of an endpoint with no samples yet: conservative, so that a
/// new endpoint does not take a burst before it has shown its latency.
const DEFAULT_RTT: Duration = Duration::from_millis(30);

struct Estimate {
    rtt_ns: f64,
    at: Instant,
}

impl Estimate {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
        self.rtt_ns * (-elapsed / DECAY.as_nanos() as f64).exp()
    }
}

pub struct Load {
    estimate: Mutex<Estimate>,
    pending: AtomicU32,
}

impl Default for Load {
    fn default() -> Self {
        Self::new()
    }
}

impl Load {
    pub fn new() -> Self {
        Load {
            estimate: Mutex::new(Estimate {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                at: Instant::now(),
            }),
            pending: AtomicU32::new(0),
        }
    }

    /// The cost the balancer compares: estimate × (requests in flight + 1).
    pub fn cost(&self, now: Instant) -> f64 {
        let est = self
            .estimate
            .lock()
            .map(|e| e.decayed(now))
            .unwrap_or(f64::MAX);
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        est * (pending + 1.0)
    }

    /// Records the time to a response's headers.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if let Ok(mut e) = self.estimate.lock() {
            let current = e.decayed(now);
            e.rtt_ns = if rtt > current {
                rtt // the peak: react to a slowdown at once
            } else {
                let elapsed = now.saturating_duration_since(e.at).as_nanos() as f64;
                let w = (-elapsed / DECAY.as_nanos() as f64).exp();
                current * w + rtt * (1.0 - w)
            };
            e.at = now;
        }
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &std::sync::Arc<Self>) -> PendingGuard {
        self.pending.fetch_add(1, Ordering::Relaxed);
        PendingGuard(self.clone())
    }
}

/// Ends a request in flight when dropped (at the end of the response body).
pub struct PendingGuard(std::sync::Arc<Load>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn peaks_at_once_and_decays_slowly() {
        let l = Load::new();
        let now = Instant::now();
        let base = l.cost(now);
        assert!((base - DEFAULT_RTT.as_nanos() as f64).abs() < 1.0);
        // A slower sample raises the estimate at once.
        l.observe(Duration::from_millis(100), now);
        assert!((l.cost(now) - 100e6).abs() < 1.0);
        // Ten seconds (one time constant) later it has decayed to ~1/e.
        tokio::time::advance(DECAY).await;
        let later = l.cost(Instant::now());
        assert!((later / 100e6 - (-1.0f64).exp()).abs() < 0.01, "{later}");
        // A fast sample after a long gap mostly replaces the estimate.
        tokio::time::advance(Duration::from_secs(60)).await;
        l.observe(Duration::from_millis(1), Instant::now());
        assert!(l.cost(Instant::now()) < 2e6);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_multiply_the_cost() {
        let l = Arc::new(Load::new());
        let now = Instant::now();
        let one = l.cost(now);
        let g1 = l.start();
        let g2 = l.start();
        assert!((l.cost(now) / one - 3.0).abs() < 1e-9);
        drop(g1);
        drop(g2);
        assert_eq!(l.pending(), 0);
    }
}
