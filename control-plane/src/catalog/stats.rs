//! Traffic samples from one sidecar (its cumulative counters, sent as
//! `TrafficStats`) and what they say about a window of time: requests,
//! failures, rate and latency.
//!
//! Sidecars send cumulative counters so that a lost message loses nothing;
//! a window's traffic is the difference between two samples. A sidecar's
//! report holds three views ([`TrafficReport`]): its inbound traffic, kept
//! for the longest `Top` window; per called service (the graph's edges),
//! kept for [`EDGE_HORIZON`]; and inbound per route, kept coarsely
//! ([`RouteHistory`]) for [`ROUTE_WINDOW`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use weft_proto::stats::{BUCKETS, MAX_UPSTREAMS, MAX_WINDOW, percentile};

use crate::resource::Name;

/// How often a sidecar sends `TrafficStats` while its counters change
/// (mesh.proto, `TrafficStats`). A gap longer than this after a sample means
/// the counters did not move during the gap.
const REPORT_PERIOD: Duration = Duration::from_secs(1);

/// Samples closer together than this replace the newest one instead of
/// adding another, so that a sidecar sending faster than it should cannot
/// shorten the history the ring covers.
const MIN_SPACING: Duration = Duration::from_millis(500);

/// A hard cap on the ring whatever the timing; with [`MIN_SPACING`] a
/// [`MAX_WINDOW`] needs at most about 600 samples.
pub const MAX_SAMPLES: usize = 640;

/// A sidecar's cumulative counters since it started: requests, the
/// server's failures, and the latency histogram (cumulative buckets over
/// `weft_proto::stats::LATENCY_BOUNDS_MS`, like the wire format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub failures: u64,
    pub buckets: [u64; BUCKETS],
    /// Inbound requests without mutual TLS (0 for a called service).
    pub plaintext: u64,
}

impl Counters {
    /// Cumulative counts of `requests` requests of `ms` each, `failures`
    /// of them failed (for tests).
    #[cfg(test)]
    pub(crate) fn of(requests: u64, failures: u64, ms: f64) -> Self {
        let first = weft_proto::stats::bucket_of(ms);
        Counters {
            requests,
            failures,
            buckets: std::array::from_fn(|i| if i >= first { requests } else { 0 }),
            plaintext: 0,
        }
    }

    pub fn zero() -> Self {
        Counters {
            requests: 0,
            failures: 0,
            buckets: [0; BUCKETS],
            plaintext: 0,
        }
    }

    /// Whether `self` (newer) has any counter below `older`: the sidecar
    /// restarted its counting.
    fn went_back_from(&self, older: &Counters) -> bool {
        self.requests < older.requests
            || self.failures < older.failures
            || self.plaintext < older.plaintext
            || self.buckets.iter().zip(&older.buckets).any(|(n, o)| n < o)
    }
}

/// One sidecar's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    at: Instant,
    counters: Counters,
    /// Samples before this one were thinned out: the gap before it says
    /// nothing about quiet.
    after_thinning: bool,
}

/// What recording a sample did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Added,
    /// The counters went backwards: the history was cleared and starts here.
    Restarted,
}

/// Traffic over a window: counts are differences, `buckets` cumulative
/// like the wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    pub requests: u64,
    pub failures: u64,
    pub buckets: [u64; BUCKETS],
    pub rps: f64,
    pub plaintext: u64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            requests: 0,
            failures: 0,
            buckets: [0; BUCKETS],
            rps: 0.0,
            plaintext: 0,
        }
    }
}

impl Traffic {
    /// Adds another instance's traffic (a service is the sum of its instances).
    pub fn add(&mut self, other: &Traffic) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        self.plaintext = self.plaintext.saturating_add(other.plaintext);
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
        self.rps += other.rps;
    }

    /// 0..1; 1 without requests.
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            return 1.0;
        }
        1.0 - self.failures.min(self.requests) as f64 / self.requests as f64
    }

    /// The `q` latency quantile in milliseconds; 0 without requests.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        percentile(&self.buckets, q).unwrap_or(0.0)
    }
}

/// The recent samples of one discovery stream, oldest first.
#[derive(Debug, Clone)]
pub struct TrafficRing {
    samples: VecDeque<Sample>,
    /// The longest window asked of it: older samples are dropped.
    horizon: Duration,
    /// Every sample of this recent span is kept; older ones are thinned
    /// to one per `coarse` (memory: a ring of 1-second samples would hold
    /// `horizon` of them).
    fine: Duration,
    coarse: Duration,
}

/// Inbound rings answer every `Top` window: every sample of the last
/// minute, one per 10 s before that (a window longer than a minute may
/// start up to 10 s early; its rate is over the span it covers).
impl Default for TrafficRing {
    fn default() -> Self {
        TrafficRing::with_horizon(MAX_WINDOW, Duration::from_secs(60), Duration::from_secs(10))
    }
}

impl TrafficRing {
    /// A ring that answers windows up to `horizon` (at most
    /// [`MAX_WINDOW`]), exactly up to `fine`, within `coarse` beyond.
    pub fn with_horizon(horizon: Duration, fine: Duration, coarse: Duration) -> Self {
        TrafficRing {
            samples: VecDeque::new(),
            horizon: horizon.min(MAX_WINDOW),
            fine,
            coarse,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples.len()
    }

    /// Adds the counters a sidecar reported at `at`.
    pub fn record(&mut self, counters: &Counters, at: Instant) -> Recorded {
        let sample = Sample {
            at,
            counters: counters.clone(),
            after_thinning: false,
        };
        let mut recorded = Recorded::Added;
        if self
            .samples
            .back()
            .is_some_and(|last| sample.counters.went_back_from(&last.counters))
        {
            self.samples.clear();
            recorded = Recorded::Restarted;
        }
        let n = self.samples.len();
        let crowded = n >= 2 && at.saturating_duration_since(self.samples[n - 2].at) < MIN_SPACING;
        if crowded {
            self.samples.pop_back();
        }
        self.samples.push_back(sample);
        if self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
        // Keep the newest sample at or before the longest window's start: it
        // is that window's base.
        if let Some(cutoff) = at.checked_sub(self.horizon) {
            while self.samples.len() >= 2 && self.samples[1].at <= cutoff {
                self.samples.pop_front();
            }
        }
        self.thin(at);
        recorded
    }

    /// Samples leave the fine span one at a time as time passes: the one
    /// that just left goes if it is closer than `coarse` to the one kept
    /// before it (the base of the oldest windows stays).
    fn thin(&mut self, now: Instant) {
        let Some(edge) = now.checked_sub(self.fine) else {
            return;
        };
        let j = self.samples.partition_point(|s| s.at <= edge);
        if j >= 2
            && self.samples[j - 1]
                .at
                .saturating_duration_since(self.samples[j - 2].at)
                < self.coarse
        {
            self.samples.remove(j - 1);
            if let Some(next) = self.samples.get_mut(j - 1) {
                next.after_thinning = true;
            }
        }
    }

    /// The traffic over the `window` that ends at `now`; `None` before the
    /// first sample.
    ///
    /// The base is the newest sample at or before the window's start (or
    /// the oldest one if none is that old), the end the newest sample. A
    /// sidecar stops sending while its counters stand still, so the newest
    /// sample may be old: its counts still hold at `now`. Likewise a gap
    /// after the base means nothing moved during it, so the rate is taken
    /// over the time since the window's start (or the gap's end, if later)
    /// rather than since the base — otherwise traffic starting after a quiet
    /// spell would read as a fraction of its rate for a whole window.
    pub fn window(&self, now: Instant, window: Duration) -> Option<Traffic> {
        let last = self.samples.back()?;
        let cutoff = now.checked_sub(window);
        let base_index = cutoff
            .and_then(|c| self.samples.iter().rposition(|s| s.at <= c))
            .unwrap_or(0);
        let base = &self.samples[base_index];
        let mut start = base.at;
        if let (Some(cutoff), Some(next)) = (cutoff, self.samples.get(base_index + 1))
            && !next.after_thinning
        {
            let quiet_until = next.at.checked_sub(REPORT_PERIOD).unwrap_or(base.at);
            start = start.max(cutoff.min(quiet_until));
        }
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        Some(difference(&last.counters, &base.counters, elapsed))
    }
}

impl TrafficRing {
    /// The counters as they stood at `t`: the newest sample at or before
    /// it; `None` before the first sample.
    fn counters_at(&self, t: Instant) -> Option<&Counters> {
        let i = self.samples.iter().rposition(|s| s.at <= t)?;
        Some(&self.samples[i].counters)
    }

    /// The traffic between `from` and `to` (a slot of a history), as far
    /// as the samples tell: `None` when the ring holds nothing at or
    /// before `to`. Exact to a report period at each end.
    pub fn between(&self, from: Instant, to: Instant) -> Option<Traffic> {
        let end = self.counters_at(to)?;
        // A stream's first sample is its start: before it, nothing.
        let base = self
            .counters_at(from)
            .unwrap_or(&self.samples.front()?.counters);
        let secs = to.saturating_duration_since(from).as_secs_f64();
        Some(difference(end, base, secs))
    }
}

/// `newer` minus `older`, as the traffic of `secs` seconds.
fn difference(newer: &Counters, older: &Counters, secs: f64) -> Traffic {
    let mut buckets = [0u64; BUCKETS];
    for (d, (n, o)) in buckets
        .iter_mut()
        .zip(newer.buckets.iter().zip(&older.buckets))
    {
        *d = n.saturating_sub(*o);
    }
    let requests = newer.requests.saturating_sub(older.requests);
    Traffic {
        requests,
        failures: newer.failures.saturating_sub(older.failures),
        buckets,
        rps: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        plaintext: newer.plaintext.saturating_sub(older.plaintext),
    }
}

/// How long a called service's samples are kept: the graph's longest
/// window; every sample of the last [`EDGE_FINE`] (the page's window is
/// 10 s), one per 5 s before.
pub const EDGE_HORIZON: Duration = Duration::from_secs(60);
const EDGE_FINE: Duration = Duration::from_secs(15);

/// The window of a service's top routes.
pub const ROUTE_WINDOW: Duration = Duration::from_secs(60);

/// Route snapshots closer than this replace the newest: the history holds
/// about `ROUTE_WINDOW / ROUTE_SPACING` of them whatever the report rate.
const ROUTE_SPACING: Duration = Duration::from_secs(10);

/// Requests and failures per route, cumulative.
pub type RouteCounts = BTreeMap<String, (u64, u64)>;

/// One report of a sidecar, validated: inbound counters, per called
/// service, per inbound route.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficReport {
    pub inbound: Counters,
    pub upstreams: Vec<(Name, Counters)>,
    pub routes: RouteCounts,
}

/// Coarse snapshots of a sidecar's per-route counters, oldest first.
#[derive(Debug, Clone, Default)]
pub struct RouteHistory {
    snapshots: VecDeque<(Instant, Arc<RouteCounts>)>,
}

impl RouteHistory {
    pub fn record(&mut self, routes: RouteCounts, at: Instant) {
        let n = self.snapshots.len();
        let went_back = self.snapshots.back().is_some_and(|(_, last)| {
            last.iter()
                .any(|(k, (r, f))| routes.get(k).is_none_or(|(nr, nf)| nr < r || nf < f))
        });
        if went_back {
            self.snapshots.clear();
        } else if n >= 2 && at.saturating_duration_since(self.snapshots[n - 2].0) < ROUTE_SPACING {
            self.snapshots.pop_back();
        }
        self.snapshots.push_back((at, Arc::new(routes)));
        if let Some(cutoff) = at.checked_sub(ROUTE_WINDOW) {
            while self.snapshots.len() >= 2 && self.snapshots[1].0 <= cutoff {
                self.snapshots.pop_front();
            }
        }
    }

    /// Requests and failures per route over the last [`ROUTE_WINDOW`]
    /// (from the newest snapshot at or before its start, or the oldest).
    pub fn window(&self, now: Instant) -> RouteCounts {
        let Some((_, last)) = self.snapshots.back() else {
            return RouteCounts::new();
        };
        let cutoff = now.checked_sub(ROUTE_WINDOW);
        let base = cutoff
            .and_then(|c| self.snapshots.iter().rposition(|(at, _)| *at <= c))
            .unwrap_or(0);
        let base = &self.snapshots[base].1;
        last.iter()
            .filter_map(|(k, (r, f))| {
                let (br, bf) = base.get(k).copied().unwrap_or((0, 0));
                let d = (r.saturating_sub(br), f.saturating_sub(bf));
                (d.0 > 0).then(|| (k.clone(), d))
            })
            .collect()
    }
}

/// Everything one stream's sidecar has reported.
#[derive(Debug, Clone, Default)]
pub struct StreamTraffic {
    pub inbound: TrafficRing,
    pub upstreams: BTreeMap<Name, TrafficRing>,
    pub routes: RouteHistory,
    /// When the previous report came.
    last_at: Option<Instant>,
}

impl StreamTraffic {
    pub fn record(&mut self, report: TrafficReport, at: Instant) -> Recorded {
        for (name, counters) in &report.upstreams {
            // Bounded across reports too: a sidecar naming new services in
            // every report cannot grow the map past what one report holds.
            let room = self.upstreams.len() < MAX_UPSTREAMS;
            if let Some(ring) = self.upstreams.get_mut(name) {
                ring.record(counters, at);
            } else if room {
                let mut ring =
                    TrafficRing::with_horizon(EDGE_HORIZON, EDGE_FINE, Duration::from_secs(5));
                // A sidecar adds a service to its reports at its first
                // request: absent from the previous report, it stood at
                // zero then, and that first request belongs in the window.
                if let Some(before) = self.last_at {
                    ring.record(&Counters::zero(), before);
                }
                ring.record(counters, at);
                self.upstreams.insert(name.clone(), ring);
            }
        }
        self.routes.record(report.routes, at);
        self.last_at = Some(at);
        self.inbound.record(&report.inbound, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::stats::LATENCY_BOUNDS_MS;

    fn stats(requests: u64, failures: u64, ms: f64) -> Counters {
        Counters::of(requests, failures, ms)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    async fn record_at(ring: &mut TrafficRing, t0: Instant, at: u64, s: Counters) {
        let now = Instant::now();
        let target = t0 + secs(at);
        if target > now {
            tokio::time::advance(target - now).await;
        }
        ring.record(&s, Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_sequence_gives_exact_numbers() {
        let t0 = Instant::now();
        let mut ring = TrafficRing::default();
        // 100 requests a second, 1 in 100 failing, from t=0 to t=20.
        for t in 0..=20 {
            record_at(&mut ring, t0, t, stats(100 * t, t, 1.0)).await;
        }
        let w = ring.window(Instant::now(), secs(10)).expect("samples");
        assert_eq!(w.requests, 1000);
        assert_eq!(w.failures, 10);
        assert_eq!(w.rps, 100.0);
        assert_eq!(w.success_rate(), 0.99);
        assert_eq!(w.buckets[BUCKETS - 1], 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_base_is_the_newest_sample_before_the_window_or_the_oldest() {
        let t0 = Instant::now();
        let mut ring = TrafficRing::default();
        record_at(&mut ring, t0, 0, stats(0, 0, 1.0)).await;
        record_at(&mut ring, t0, 4, stats(40, 0, 1.0)).await;
        record_at(&mut ring, t0, 5, stats(50, 0, 1.0)).await;
        record_at(&mut ring, t0, 8, stats(80, 0, 1.0)).await;
        tokio::time::advance(secs(2)).await; // now t=10
        let now = Instant::now();

        // Window 5 s: the start is t=5, and the sample at t=5 is the base
        // (at or before counts), not the one at t=4.
        let w = ring.window(now, secs(5)).expect("samples");
        assert_eq!(w.requests, 30);
        assert_eq!(w.rps, 6.0);

        // Window 7 s: start t=3, base the sample at t=0; the next sample
        // came at t=4, so nothing moved before t=3 and the rate is over 7 s.
        let w = ring.window(now, secs(7)).expect("samples");
        assert_eq!(w.requests, 80);
        assert_eq!(w.rps, 80.0 / 7.0);

        // Window 60 s: nothing that old; the oldest sample is the base.
        let w = ring.window(now, secs(60)).expect("samples");
        assert_eq!(w.requests, 80);
        assert_eq!(w.rps, 8.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_sidecar_keeps_its_last_counts_and_its_rate_decays() {
        let t0 = Instant::now();
        let mut ring = TrafficRing::default();
        record_at(&mut ring, t0, 0, stats(0, 0, 1.0)).await;
        record_at(&mut ring, t0, 1, stats(10, 0, 1.0)).await;
        record_at(&mut ring, t0, 2, stats(20, 0, 1.0)).await;
        // The sidecar goes quiet: no samples for a long time.
        tokio::time::advance(secs(600)).await;
        let w = ring
            .window(Instant::now(), secs(10))
            .expect("still reporting");
        assert_eq!((w.requests, w.rps), (0, 0.0));
        // Traffic again after the quiet spell: the 10 s window holds 5 s of
        // 10 rps, i.e. 5 rps — not 50 requests over the 600 s since the base.
        let t1 = Instant::now();
        for t in 1..=5 {
            record_at(&mut ring, t1, t, stats(20 + 10 * t, 0, 1.0)).await;
        }
        let w = ring.window(Instant::now(), secs(10)).expect("samples");
        assert_eq!(w.requests, 50);
        assert_eq!(w.rps, 5.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_sample_reports_zeros() {
        let mut ring = TrafficRing::default();
        assert_eq!(ring.window(Instant::now(), secs(10)), None);
        ring.record(&stats(500, 5, 1.0), Instant::now());
        let w = ring.window(Instant::now(), secs(10)).expect("one sample");
        assert_eq!(w, Traffic::default());
        assert_eq!(w.success_rate(), 1.0);
        assert_eq!(w.percentile_ms(0.5), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn counters_going_back_restart_the_history() {
        let t0 = Instant::now();
        let mut ring = TrafficRing::default();
        for t in 0..=5 {
            record_at(&mut ring, t0, t, stats(1000 + 100 * t, 0, 1.0)).await;
        }
        tokio::time::advance(secs(1)).await;
        let r = ring.record(&stats(30, 3, 1.0), Instant::now());
        assert_eq!(r, Recorded::Restarted);
        assert_eq!(ring.len(), 1);
        record_at(&mut ring, t0, 8, stats(50, 3, 1.0)).await;
        let w = ring.window(Instant::now(), secs(10)).expect("samples");
        assert_eq!((w.requests, w.failures, w.rps), (20, 0, 10.0));
        // A bucket alone going back is a restart too.
        let mut s = stats(60, 3, 1.0);
        s.buckets[5] = 0;
        tokio::time::advance(secs(1)).await;
        assert_eq!(ring.record(&s, Instant::now()), Recorded::Restarted);
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_of_merged_instances() {
        let t0 = Instant::now();
        let (mut fast, mut slow) = (TrafficRing::default(), TrafficRing::default());
        record_at(&mut fast, t0, 0, stats(0, 0, 0.8)).await;
        slow.record(&stats(0, 0, 40.0), Instant::now());
        record_at(&mut fast, t0, 10, stats(90, 0, 0.8)).await;
        slow.record(&stats(10, 0, 40.0), Instant::now());
        let now = Instant::now();
        let mut sum = Traffic::default();
        let f = fast.window(now, secs(10)).expect("samples");
        let s = slow.window(now, secs(10)).expect("samples");
        sum.add(&f);
        sum.add(&s);
        assert_eq!((sum.requests, sum.rps), (100, 10.0));
        let p50 = sum.percentile_ms(0.5);
        assert!(p50 > LATENCY_BOUNDS_MS[0] && p50 <= 1.0, "{p50}");
        let p99 = sum.percentile_ms(0.99);
        assert!(p99 > 30.0 && p99 <= 50.0, "{p99}");
        // Each alone: all fast, all slow.
        assert!(f.percentile_ms(0.99) <= 1.0);
        assert!(s.percentile_ms(0.5) > 30.0);
    }

    #[tokio::test(start_paused = true)]
    async fn thinned_history_keeps_short_windows_exact_and_long_ones_close() {
        let t0 = Instant::now();
        let mut ring = TrafficRing::default();
        // 10 requests a second for five minutes, one failing each second.
        for t in 0..=300 {
            record_at(&mut ring, t0, t, stats(10 * t, t, 1.0)).await;
        }
        let now = Instant::now();
        let w = ring.window(now, secs(10)).expect("samples");
        assert_eq!((w.requests, w.failures, w.rps), (100, 10, 10.0));
        for window in [90, 120, 299] {
            let w = ring.window(now, secs(window)).expect("samples");
            let (lo, hi) = (10 * window, 10 * (window + 10));
            assert!((lo..=hi).contains(&w.requests), "{window}: {}", w.requests);
            assert!((w.rps - 10.0).abs() < 1e-9, "{window}: {}", w.rps);
        }
        // A quiet spell in the fine span still reads as quiet: 20 s
        // without traffic, then 5 s of it.
        let t1 = Instant::now();
        record_at(&mut ring, t1, 20, stats(3000, 300, 1.0)).await;
        for t in 21..=25 {
            record_at(&mut ring, t1, t, stats(3000 + 10 * (t - 20), 300, 1.0)).await;
        }
        let w = ring.window(Instant::now(), secs(10)).expect("samples");
        assert_eq!(w.requests, 50);
        assert_eq!(w.rps, 5.0, "5 s of 10 rps in a 10 s window");
        // And a history's slots add up to the span they cover, thinned or
        // not (28 slots: within the horizon).
        let now = Instant::now();
        let total: u64 = (0..28u32)
            .filter_map(|k| {
                let end = now.checked_sub(secs(10) * k)?;
                ring.between(end.checked_sub(secs(10))?, end)
            })
            .map(|t| t.requests)
            .sum();
        let whole = ring.between(now - secs(280), now).expect("samples");
        assert_eq!(total, whole.requests);
        assert!((2600..=2700).contains(&total), "{total}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_ring_stays_bounded() {
        let mut ring = TrafficRing::default();
        // One sample a second for an hour: only the longest window (and its
        // base) is kept.
        for t in 0..3600 {
            ring.record(&stats(t, 0, 1.0), Instant::now());
            tokio::time::advance(secs(1)).await;
        }
        // A minute of every sample, one per 10 s for the four before.
        assert!(ring.len() <= 90, "{}", ring.len());
        // Now t=3600: the base is the newest kept sample at or before
        // t=3300 (at most 10 s earlier), the last at t=3599; the rate is
        // over the span the window covers.
        let w = ring.window(Instant::now(), MAX_WINDOW).expect("samples");
        assert!((299..=309).contains(&w.requests), "{}", w.requests);
        assert!((w.rps - 1.0).abs() < 0.01, "{}", w.rps);
        // A sidecar sending far too often: the ring neither grows past the
        // cap nor loses the older history.
        for i in 0..100_000u64 {
            ring.record(&stats(3600 + i, 0, 1.0), Instant::now());
            if i % 100 == 0 {
                tokio::time::advance(Duration::from_millis(10)).await;
            }
        }
        assert!(ring.len() <= MAX_SAMPLES, "{}", ring.len());
        let w = ring.window(Instant::now(), secs(60)).expect("samples");
        assert!(w.requests > 100_000, "{}", w.requests);
    }
}
