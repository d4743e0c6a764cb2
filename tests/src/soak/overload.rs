//! Overload: the pair's maximum rate measured (closed loop), then three
//! times that offered (open loop, over many connections, as many callers
//! would) for a while. The client sidecar must refuse what it cannot take
//! (UNAVAILABLE, `x-weft-error: overloaded`, counted in
//! `weft_overloaded_total`) instead of queueing it, stay within a memory
//! bound, and, once the load drops to a normal rate, answer at its normal
//! latency again within a short time.

use std::sync::Arc;
use std::time::Duration;

use super::load::{Bucket, Clients, OpenLoop, Recorder, closed_loop, open_loop, pct};
use super::pair::{Pair, PairConfig};
use super::sample::Sample;
use super::verdict::Verdict;

/// How a call that the retry policy's per-try timeout ended is named.
const PER_TRY: &str = "DeadlineExceeded per-try-timeout";

/// The overload run's shape.
#[derive(Debug, Clone)]
pub struct OverloadConfig {
    /// The maximum-rate measurement: its length and calls in flight.
    pub measure: Duration,
    pub concurrency: usize,
    /// The normal rate, before and after (latency compared).
    pub normal_rate: f64,
    pub normal: Duration,
    /// Offered: `factor` × the measured maximum, for `duration`.
    pub factor: f64,
    pub duration: Duration,
    pub connections: usize,
    /// The callers' own bound on calls in flight, together (far above the
    /// sidecar's, so that the sidecar is the one to refuse): callers with
    /// a bounded pool, not an unbounded queue in the load generator, whose
    /// waits would be measured as the sidecar's.
    pub max_in_flight: usize,
    pub timeout: Duration,
    /// Each sidecar's peak RSS must stay under this (MB).
    pub rss_bound_mb: f64,
    /// After the load drops: windows of `window` watched for `watch`; the
    /// p50 must be within `ratio` × the one before within `recover`.
    pub window: Duration,
    pub watch: Duration,
    pub ratio: f64,
    pub recover: Duration,
    /// Whether the time to recover decides the run. Off in CI, whose host
    /// stalls for seconds at times (see tests/tests/endurance.rs); there
    /// the run judges instead that the last second watched is served
    /// whole, and prints the time.
    pub judge_recovery_time: bool,
    /// `--max-concurrent-requests` of both sidecars (`Some(0)`: no limit,
    /// to see what an unbounded sidecar does); `None`: their default.
    pub sidecar_limit: Option<usize>,
}

/// What the run saw.
#[derive(Debug, Clone)]
pub struct OverloadReport {
    pub cfg: OverloadConfig,
    pub max_rps: f64,
    pub offered_rps: f64,
    pub before_p50_us: u32,
    pub during: Bucket,
    pub during_p50_us: u32,
    pub during_p99_us: u32,
    pub shed_p50_us: u32,
    /// `weft_overloaded_total` added during the run: client, server.
    pub overloaded: [u64; 2],
    /// Peak RSS (VmHWM) at the end and RSS before: client, server (kB).
    pub peak_kb: [u64; 2],
    pub before_kb: [u64; 2],
    /// After the load dropped, window by window: its end and what
    /// completed in it.
    pub after: Vec<(Duration, Bucket)>,
}

/// Runs it; judging is [`OverloadReport::verdicts`].
pub async fn run_overload(cfg: OverloadConfig) -> anyhow::Result<OverloadReport> {
    let pair = Pair::start(&PairConfig {
        cert_ttl: Duration::from_secs(3600),
        trace_sampling: 0.01,
        max_concurrent: cfg.sidecar_limit,
    })
    .await?;
    let clients = Clients::connect(pair.upstream, cfg.connections).await?;
    let rec = Arc::new(Recorder::default());
    // Warm-up, then the maximum with the failures of it reported.
    closed_loop(
        &clients,
        cfg.concurrency,
        Duration::from_secs(1),
        cfg.timeout,
        &rec,
    )
    .await;
    rec.take();
    let max_rps = closed_loop(&clients, cfg.concurrency, cfg.measure, cfg.timeout, &rec).await;
    let m = rec.take();
    anyhow::ensure!(
        m.not_ok() == 0,
        "calls failed at the maximum rate ({} in flight): {:?}",
        cfg.concurrency,
        m.errors
    );
    let normal = |rate| OpenLoop {
        rate,
        duration: cfg.normal,
        max_in_flight: cfg.max_in_flight,
        timeout: cfg.timeout,
    };
    open_loop(&clients, normal(cfg.normal_rate), &rec).await;
    let mut before = rec.take();
    let before_p50_us = pct(&mut before.ok_us, 0.5);
    let s0 = samples(&pair).await?;

    let offered = cfg.factor * max_rps;
    let shape = OpenLoop {
        rate: offered,
        duration: cfg.duration,
        max_in_flight: cfg.max_in_flight,
        timeout: cfg.timeout,
    };
    let began = tokio::time::Instant::now();
    let overload = {
        let (clients, rec) = (clients.clone(), rec.clone());
        tokio::spawn(async move { open_loop(&clients, shape, &rec).await })
    };
    // The moment sending stops, the normal rate resumes (beside the
    // overload's last answers, as it would in life).
    tokio::time::sleep_until(began + cfg.duration).await;
    let after = watch_recovery(&cfg, &clients).await;
    let sent = tokio::time::timeout(cfg.timeout + Duration::from_secs(5), overload)
        .await
        .map_err(|_| anyhow::anyhow!("the overload's calls did not end"))??;
    let mut during = rec.take();
    let s1 = samples(&pair).await?;
    Ok(OverloadReport {
        // Offered: every tick, sent or refused by the callers' own bound.
        offered_rps: (sent + during.skipped) as f64 / cfg.duration.as_secs_f64(),
        max_rps,
        before_p50_us,
        during_p50_us: pct(&mut during.ok_us, 0.5),
        during_p99_us: pct(&mut during.ok_us, 0.99),
        shed_p50_us: pct(&mut during.shed_us, 0.5),
        during,
        overloaded: [0, 1].map(|i| s1[i].overloaded - s0[i].overloaded),
        peak_kb: [s1[0].peak_kb, s1[1].peak_kb],
        before_kb: [s0[0].rss_kb, s0[1].rss_kb],
        after,
        cfg,
    })
}

async fn samples(pair: &Pair) -> anyhow::Result<[Sample; 2]> {
    let [(_, p0, a0), (_, p1, a1)] = pair.sidecars();
    Ok([Sample::take(p0, a0).await?, Sample::take(p1, a1).await?])
}

/// The normal rate for `cfg.watch`, its outcomes taken every `cfg.window`.
async fn watch_recovery(cfg: &OverloadConfig, clients: &Clients) -> Vec<(Duration, Bucket)> {
    let rec = Arc::new(Recorder::default());
    let shape = OpenLoop {
        rate: cfg.normal_rate,
        duration: cfg.watch,
        max_in_flight: cfg.max_in_flight,
        timeout: cfg.timeout,
    };
    let began = tokio::time::Instant::now();
    let load = {
        let (clients, rec) = (clients.clone(), rec.clone());
        tokio::spawn(async move { open_loop(&clients, shape, &rec).await })
    };
    let n = (cfg.watch.as_secs_f64() / cfg.window.as_secs_f64()).round() as u32;
    let mut out = Vec::new();
    for k in 1..=n {
        tokio::time::sleep_until(began + cfg.window * k).await;
        out.push((cfg.window * k, rec.take()));
    }
    let _ = tokio::time::timeout(cfg.timeout + Duration::from_secs(2), load).await;
    out
}

impl OverloadReport {
    /// When latency was back: the start of the earliest window from which
    /// on every window answered calls and none failed, and both the p50 of
    /// the next second's calls and that of every call to the end of the
    /// watch are within the bound; `None` if no such point leaves at least
    /// a second of watching. Pooled, not window by window: one window of 50
    /// calls on a shared machine is noise, while a stall (a window with
    /// nothing answered) or a latency that stays high still fails.
    pub fn recovered_after(&self) -> Option<Duration> {
        let bound = f64::from(self.before_p50_us) * self.cfg.ratio;
        let watched = self.after.last().map_or(Duration::ZERO, |w| w.0);
        let per_second = (1.0 / self.cfg.window.as_secs_f64()).round().max(1.0) as usize;
        let pooled_p50 = |windows: &[(Duration, Bucket)]| {
            let mut lat: Vec<u32> = windows.iter().flat_map(|(_, b)| b.ok_us.clone()).collect();
            f64::from(pct(&mut lat, 0.5))
        };
        (0..self.after.len()).find_map(|k| {
            let start = k.checked_sub(1).map_or(Duration::ZERO, |j| self.after[j].0);
            let rest = &self.after[k..];
            let next = &rest[..per_second.min(rest.len())];
            let all_answered = rest.iter().all(|(_, b)| b.ok() > 0 && b.not_ok() == 0);
            (watched.saturating_sub(start) >= Duration::from_secs(1)
                && all_answered
                && pooled_p50(next) <= bound
                && pooled_p50(rest) <= bound)
                .then_some(start)
        })
    }

    /// The figures, as a small table.
    pub fn table(&self) -> String {
        let d = &self.during;
        let mb = |kb: u64| kb as f64 / 1024.0;
        format!(
            "| measured max rps | offered rps ({:.1}×) | ok | shed (overloaded) | other failures | not sent | admitted p50 / p99 µs | shed p50 µs | weft_overloaded_total client / server | RSS before → peak, client | server | p50 before µs | back within {:.1}× after |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n| {:.0} | {:.0} | {} | {} | {} | {} | {} / {} | {} | {} / {} | {:.1} → {:.1} MB | {:.1} → {:.1} MB | {} | {} |\n\nAfter the load dropped (windows of {} ms: end, p50 µs, ok, not ok): {}",
            self.cfg.factor,
            self.cfg.ratio,
            self.max_rps,
            self.offered_rps,
            d.ok(),
            d.shed,
            d.failed,
            d.skipped,
            self.during_p50_us,
            self.during_p99_us,
            self.shed_p50_us,
            self.overloaded[0],
            self.overloaded[1],
            mb(self.before_kb[0]),
            mb(self.peak_kb[0]),
            mb(self.before_kb[1]),
            mb(self.peak_kb[1]),
            self.before_p50_us,
            self.recovered_after()
                .map_or("not within the watch".into(), |t| format!(
                    "{} ms",
                    t.as_millis()
                )),
            self.cfg.window.as_millis(),
            self.after
                .iter()
                .map(|(t, b)| {
                    let mut lat = b.ok_us.clone();
                    format!(
                        "{}:{}/{}/{}",
                        t.as_millis(),
                        pct(&mut lat, 0.5),
                        b.ok(),
                        b.not_ok()
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        )
    }

    pub fn verdicts(&self) -> Vec<Verdict> {
        let d = &self.during;
        let peak = self.peak_kb.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        let per_try = d
            .errors
            .iter()
            .filter(|(why, _)| why.starts_with(PER_TRY))
            .map(|(_, n)| n)
            .sum::<u64>();
        vec![
            Verdict::new(
                "sheds with UNAVAILABLE overloaded",
                d.shed > 0 && self.overloaded[0] > 0,
                format!(
                    "{} calls refused with UNAVAILABLE / x-weft-error: overloaded; weft_overloaded_total +{} (client sidecar)",
                    d.shed, self.overloaded[0]
                ),
            ),
            Verdict::new(
                "nothing queued past the mesh's bounds",
                d.failed == per_try,
                format!(
                    "{} other failures {:?}, of which {per_try} the policy's per-try timeout \
                     (a bound answering, allowed) and {} anything else (a caller's 5 s \
                     timeout, a reset: not allowed); admitted calls p50 {} µs, p99 {} µs",
                    d.failed,
                    d.errors,
                    d.failed - per_try,
                    self.during_p50_us,
                    self.during_p99_us
                ),
            ),
            Verdict::new(
                &format!(
                    "memory bounded (peak RSS < {:.0} MB)",
                    self.cfg.rss_bound_mb
                ),
                peak < self.cfg.rss_bound_mb,
                format!("peak RSS of either sidecar {peak:.1} MB"),
            ),
            self.served_at_the_end(),
            {
                let v = Verdict::new(
                    &format!(
                        "p50 back within {:.1}× of before within {} ms",
                        self.cfg.ratio,
                        self.cfg.recover.as_millis()
                    ),
                    self.recovered_after()
                        .is_some_and(|t| t <= self.cfg.recover),
                    format!(
                        "p50 before {} µs; back after {}",
                        self.before_p50_us,
                        self.recovered_after()
                            .map_or("never in the watch".into(), |t| format!(
                                "{} ms",
                                t.as_millis()
                            ))
                    ),
                );
                if self.cfg.judge_recovery_time {
                    v
                } else {
                    v.unjudged()
                }
            },
        ]
    }

    /// The last second watched after the load dropped: every call answered
    /// OK (recovered at all, whatever the time it took).
    fn served_at_the_end(&self) -> Verdict {
        let per_second = (1.0 / self.cfg.window.as_secs_f64()).round().max(1.0) as usize;
        let tail = &self.after[self.after.len().saturating_sub(per_second)..];
        let (ok, not_ok) = tail
            .iter()
            .fold((0, 0), |(o, n), (_, b)| (o + b.ok(), n + b.not_ok()));
        Verdict::new(
            "served normally by the end of the watch",
            ok > 0 && not_ok == 0,
            format!("the last second watched: {ok} OK, {not_ok} not"),
        )
    }
}
