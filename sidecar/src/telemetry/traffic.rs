//! The inbound traffic summary behind `weftctl top`: requests, the server's
//! failures and a latency histogram, counted with relaxed atomics on the
//! data path and sent, cumulative, to the control plane every second by the
//! discovery stream (which turns differences into rates).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use weft_proto::stats::{BUCKETS, bucket_of};
use weft_proto::v1 as pb;

#[derive(Debug)]
pub struct Traffic {
    /// Requests per latency bucket (not cumulative; the sum is all requests).
    per_bucket: [AtomicU64; BUCKETS],
    failures: AtomicU64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            per_bucket: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: AtomicU64::new(0),
        }
    }
}

impl Traffic {
    /// One inbound request that took `elapsed`; `failed` when it failed by
    /// the server's fault.
    pub fn record(&self, elapsed: Duration, failed: bool) {
        self.per_bucket[bucket_of(elapsed.as_secs_f64() * 1e3)].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far, as `TrafficStats` (cumulative buckets).
    pub fn snapshot(&self) -> pb::TrafficStats {
        let mut buckets = Vec::with_capacity(BUCKETS);
        let mut sum = 0u64;
        for b in &self.per_bucket {
            sum += b.load(Ordering::Relaxed);
            buckets.push(sum);
        }
        pb::TrafficStats {
            requests: sum,
            // Read after the buckets: never more failures than requests seen.
            failures: self.failures.load(Ordering::Relaxed).min(sum),
            latency_buckets: buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_cumulative() {
        let t = Traffic::default();
        assert_eq!(t.snapshot().requests, 0);
        t.record(Duration::from_micros(300), false);
        t.record(Duration::from_millis(4), true);
        t.record(Duration::from_secs(60), false);
        let s = t.snapshot();
        assert_eq!(s.requests, 3);
        assert_eq!(s.failures, 1);
        assert_eq!(s.latency_buckets.len(), BUCKETS);
        assert_eq!(s.latency_buckets[0], 1, "0.3 ms is under 0.5 ms");
        assert_eq!(s.latency_buckets[4], 2, "4 ms is under 5 ms");
        assert_eq!(
            s.latency_buckets[BUCKETS - 2],
            2,
            "60 s is beyond every bound"
        );
        assert_eq!(s.latency_buckets[BUCKETS - 1], 3);
    }
}
