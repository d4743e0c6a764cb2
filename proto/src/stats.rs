//! The latency buckets both ends of `TrafficStats` agree on, the
//! percentile read from a histogram of them, and the longest window `Top`
//! answers for (`weftctl top`).

use std::time::Duration;

/// Upper bounds in milliseconds; a request counts in every bucket whose
/// bound it is at or under, and in the last, unbounded, one.
pub const LATENCY_BOUNDS_MS: [f64; 22] = [
    0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0,
    500.0, 750.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Entries of `TrafficStats.latency_buckets`: one per bound, plus all.
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The longest `TopRequest.window_seconds` (mesh.proto): the control plane
/// keeps samples this long, and weftctl refuses a longer `--window` before
/// asking.
pub const MAX_WINDOW: Duration = Duration::from_secs(300);

/// The most `TrafficStats.upstreams` a sidecar sends: the services it
/// called. An app calling more (a scanner, names made up per request) has
/// the rest left out, so that no app can grow the stream, or the control
/// plane's memory, through its calls.
pub const MAX_UPSTREAMS: usize = 256;

/// The most `TrafficStats.routes` a sidecar sends (its routes past this are
/// left out; past its own per-service bound they are already `(other)`).
pub const MAX_ROUTES: usize = 256;

/// The `q` quantile (0..1) in milliseconds of a cumulative histogram over
/// [`LATENCY_BOUNDS_MS`] (`buckets[i]` = requests at or under bound `i`,
/// the last entry = all), interpolated linearly within its bucket as
/// Prometheus' `histogram_quantile` does. `None` without requests or with
/// a malformed histogram. Beyond the last bound it answers that bound.
pub fn percentile(buckets: &[u64], q: f64) -> Option<f64> {
    if buckets.len() != BUCKETS || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let total = *buckets.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, &upper) in LATENCY_BOUNDS_MS.iter().enumerate() {
        let count = buckets[i];
        if count as f64 >= rank {
            let in_bucket = count.saturating_sub(below);
            if in_bucket == 0 {
                return Some(upper);
            }
            let frac = (rank - below as f64) / in_bucket as f64;
            return Some(lower + (upper - lower) * frac.clamp(0.0, 1.0));
        }
        below = count;
        lower = upper;
    }
    Some(lower)
}

/// The bucket entries for one request of `ms` milliseconds: the index of
/// the first bound it is at or under (`LATENCY_BOUNDS_MS.len()` beyond all).
pub fn bucket_of(ms: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&b| ms <= b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cumulative histogram of requests of the given durations.
    fn hist(ms: &[f64]) -> Vec<u64> {
        let mut per = [0u64; BUCKETS];
        for &m in ms {
            per[bucket_of(m)] += 1;
        }
        let mut out = vec![0u64; BUCKETS];
        let mut sum = 0;
        for i in 0..BUCKETS {
            sum += per[i];
            out[i] = sum;
        }
        out
    }

    #[test]
    fn percentiles_fall_in_the_right_bucket() {
        // 90 fast (0.8 ms), 10 slow (40 ms).
        let mut ms = vec![0.8; 90];
        ms.extend([40.0; 10]);
        let h = hist(&ms);
        let p50 = percentile(&h, 0.5).unwrap_or(-1.0);
        assert!(p50 > 0.5 && p50 <= 1.0, "{p50}");
        let p99 = percentile(&h, 0.99).unwrap_or(-1.0);
        assert!(p99 > 30.0 && p99 <= 50.0, "{p99}");
    }

    #[test]
    fn edge_cases() {
        assert_eq!(percentile(&[0; BUCKETS], 0.5), None);
        assert_eq!(percentile(&[1, 2], 0.5), None, "wrong length");
        assert_eq!(percentile(&hist(&[1.0]), 1.5), None);
        // Everything beyond the last bound: the last bound.
        assert_eq!(percentile(&hist(&[60_000.0]), 0.5), Some(10_000.0));
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.5), 0);
        assert_eq!(bucket_of(0.51), 1);
        assert_eq!(bucket_of(1e9), LATENCY_BOUNDS_MS.len());
    }
}
