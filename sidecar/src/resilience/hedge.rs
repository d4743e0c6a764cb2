//! Hedging: for idempotent gRPC methods marked hedgeable, if the first try
//! has not answered after a delay (configured, or the service's observed
//! p95 latency), a second copy goes to another endpoint; the first answer
//! wins and the other try is dropped, which cancels it upstream.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Runs `first`; if it has not finished after `delay`, also runs what
/// `second` returns (if anything: the budget may say no) and takes whichever
/// finishes first. Returns the result and whether a second copy was sent.
pub async fn race<T, F1, F2>(
    first: F1,
    delay: Duration,
    second: impl FnOnce() -> Option<F2>,
) -> (T, bool)
where
    F1: Future<Output = T>,
    F2: Future<Output = T>,
{
    let mut first = std::pin::pin!(first);
    tokio::select! {
        r = &mut first => return (r, false),
        _ = tokio::time::sleep(delay) => {}
    }
    let Some(second) = second() else {
        return (first.await, false);
    };
    tokio::select! {
        r = &mut first => (r, true),
        r = second => (r, true),
    }
}

/// Bucket bounds: 64 buckets growing by about 21% from 50 µs, to ~10 s.
const BUCKETS: usize = 64;
const FIRST_NS: f64 = 50_000.0;
const GROWTH: f64 = 1.21;

/// A service's recent response latencies, for the p95 that sets the hedge
/// delay. Lock-free: atomic bucket counts, halved every `HALF_LIFE` so that
/// the estimate follows the present.
pub struct Latencies {
    buckets: [AtomicU64; BUCKETS],
    total: AtomicU64,
    start: Instant,
    /// The half-life period last applied.
    aged: AtomicU64,
}

const HALF_LIFE: Duration = Duration::from_secs(10);
/// Fewer samples than this: no p95 yet (use a conservative default).
const MIN_SAMPLES: u64 = 20;

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        Latencies {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            total: AtomicU64::new(0),
            start: Instant::now(),
            aged: AtomicU64::new(0),
        }
    }

    fn bucket(d: Duration) -> usize {
        let ns = d.as_nanos() as f64;
        if ns <= FIRST_NS {
            return 0;
        }
        (((ns / FIRST_NS).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
    }

    fn upper(i: usize) -> Duration {
        Duration::from_nanos((FIRST_NS * GROWTH.powi(i as i32)) as u64)
    }

    fn age(&self, now: Instant) {
        let period = now.saturating_duration_since(self.start).as_secs() / HALF_LIFE.as_secs();
        let seen = self.aged.load(Ordering::Relaxed);
        if period > seen
            && self
                .aged
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let shift = (period - seen).min(63) as u32;
            let mut total = 0;
            for b in &self.buckets {
                let v = b.load(Ordering::Relaxed) >> shift;
                b.store(v, Ordering::Relaxed);
                total += v;
            }
            self.total.store(total, Ordering::Relaxed);
        }
    }

    pub fn record(&self, d: Duration, now: Instant) {
        self.age(now);
        self.buckets[Self::bucket(d)].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The 95th percentile (a bucket's upper bound); `None` with too few samples.
    pub fn p95(&self, now: Instant) -> Option<Duration> {
        self.age(now);
        let total = self.total.load(Ordering::Relaxed);
        if total < MIN_SAMPLES {
            return None;
        }
        let want = total - total / 20;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= want {
                return Some(Self::upper(i));
            }
        }
        Some(Self::upper(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn after(d: Duration, v: &'static str) -> &'static str {
        tokio::time::sleep(d).await;
        v
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_try_is_raced_after_the_delay() {
        let started = Instant::now();
        let (r, hedged) = race(
            after(Duration::from_millis(100), "first"),
            Duration::from_millis(20),
            || Some(after(Duration::from_millis(10), "second")),
        )
        .await;
        assert_eq!((r, hedged), ("second", true));
        assert_eq!(started.elapsed(), Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_first_try_sends_no_second_copy() {
        let mut asked = false;
        let (r, hedged) = race(
            after(Duration::from_millis(5), "first"),
            Duration::from_millis(20),
            || {
                asked = true;
                Some(after(Duration::from_millis(1), "second"))
            },
        )
        .await;
        assert_eq!((r, hedged, asked), ("first", false, false));
    }

    #[tokio::test(start_paused = true)]
    async fn no_budget_means_waiting_for_the_first() {
        let started = Instant::now();
        let (r, hedged) = race(
            after(Duration::from_millis(100), "first"),
            Duration::from_millis(20),
            || None::<std::future::Ready<&str>>,
        )
        .await;
        assert_eq!((r, hedged), ("first", false));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn p95_follows_recent_latencies() {
        let l = Latencies::new();
        let now = Instant::now();
        assert_eq!(l.p95(now), None, "too few samples");
        for i in 0..100u64 {
            // 95 fast, 5 slow.
            let d = if i < 95 {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(100)
            };
            l.record(d, now);
        }
        let p = l.p95(now).expect("a p95");
        assert!(
            p >= Duration::from_millis(1) && p < Duration::from_micros(1300),
            "{p:?}"
        );
        // Later, everything is slow: old samples fade (halved every 10 s).
        for _ in 0..6 {
            tokio::time::advance(HALF_LIFE).await;
            for _ in 0..50 {
                l.record(Duration::from_millis(20), Instant::now());
            }
        }
        let p = l.p95(Instant::now()).expect("a p95");
        assert!(
            p >= Duration::from_millis(20) && p < Duration::from_millis(25),
            "{p:?}"
        );
    }
}
