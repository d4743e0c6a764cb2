//! The soak: a fixed rate through the pair for a long time, with the
//! certificates rotating, sampled every `interval`, then judged: nothing
//! failed, and nothing grew (memory, descriptors, threads, tasks, latency)
//! between the first span after the warm-up and the last span.

use std::sync::Arc;
use std::time::Duration;

use super::load::{Bucket, Clients, OpenLoop, Recorder, open_loop, pct};
use super::pair::{Pair, PairConfig};
use super::sample::Sample;
use super::verdict::Verdict;

/// How much a figure may move before it counts as growth.
#[derive(Debug, Clone, Copy)]
pub struct Tolerances {
    /// Median RSS of the last span over the first span's, minus one.
    pub rss_growth: f64,
    /// Descriptors, threads and tasks: the last span's median sample may
    /// exceed the first span's by this much, no more. Medians, not maxima:
    /// a sample can catch calls in flight or a renewal's connection open
    /// (a spike), while a leak lifts every sample.
    pub fd_slack: u64,
    pub thread_slack: u64,
    pub task_slack: u64,
    /// Latency: the last span's median of window p50s (p99s) over the
    /// first span's may be at most this ratio...
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    /// ...or at most this many µs above it (below the scheduling noise of
    /// a shared 2-core machine, a ratio of two tiny numbers means nothing).
    pub p50_floor_us: u32,
    pub p99_floor_us: u32,
    /// Whether the latency rule decides the run. Off in CI: there the
    /// machine is shared with whatever else runs on its host, and a stall
    /// of the host (seen: p99 738 ms at 500 rps for five seconds) moves
    /// the last span's percentiles by 4× with nothing wrong in the mesh.
    /// The figures are still printed; the documented run judges them.
    pub judge_latency: bool,
}

/// The soak's shape.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Calls per second offered (open loop).
    pub rate: f64,
    pub duration: Duration,
    /// Sampling and table interval.
    pub interval: Duration,
    /// Not judged: connections, pools and allocator arenas fill up.
    pub warmup: Duration,
    /// The first span after the warm-up is compared with the last span.
    pub span: Duration,
    /// The certificates rotate at least this often (their lifetime is set
    /// so that renewal, at 65–75% of it, comes within this).
    pub rotation: Duration,
    pub connections: usize,
    /// The open loop's bound on calls in flight (a send over it fails).
    pub max_in_flight: usize,
    /// Per call.
    pub timeout: Duration,
    pub tolerances: Tolerances,
    /// Print each row as it is sampled.
    pub print: bool,
}

impl SoakConfig {
    /// The certificate lifetime: renewal comes at 75% of it at the latest,
    /// so at most 0.75 / 0.8 = 94% of `rotation` apart.
    pub fn cert_ttl(&self) -> Duration {
        self.rotation.div_f64(0.8)
    }

    fn check(&self) -> anyhow::Result<()> {
        let n = |d: Duration| d.as_secs_f64() / self.interval.as_secs_f64();
        let whole = |d: Duration| (n(d) - n(d).round()).abs() < 1e-9 && n(d) >= 1.0;
        anyhow::ensure!(
            whole(self.duration) && whole(self.warmup) && whole(self.span) && whole(self.rotation),
            "duration, warm-up, span and rotation must be whole multiples of the interval"
        );
        anyhow::ensure!(
            self.warmup + self.span * 2 <= self.duration,
            "the duration must hold the warm-up and two spans (first and last)"
        );
        anyhow::ensure!(
            self.rotation <= self.duration,
            "the rotation must fit the duration"
        );
        Ok(())
    }
}

/// One window of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its end, from the start of the load.
    pub t: Duration,
    pub ok: u64,
    pub not_ok: u64,
    pub rps: f64,
    pub p50_us: u32,
    pub p99_us: u32,
    /// Client sidecar, server sidecar.
    pub sidecars: [Sample; 2],
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct SoakReport {
    pub cfg: SoakConfig,
    /// Both sidecars when the load started.
    pub start: [Sample; 2],
    pub rows: Vec<Row>,
    pub total: Bucket,
    pub sent: u64,
    pub spans_received: u64,
}

async fn sample_pair(pair: &Pair) -> anyhow::Result<[Sample; 2]> {
    let [(l0, p0, a0), (l1, p1, a1)] = pair.sidecars();
    let take = |label: &'static str, pid, admin| async move {
        Sample::take(pid, admin)
            .await
            .map_err(|e| anyhow::anyhow!("sampling the {label} sidecar: {e:#}"))
    };
    Ok([take(l0, p0, a0).await?, take(l1, p1, a1).await?])
}

/// Runs the soak and returns what it saw; judging is [`SoakReport::verdicts`].
pub async fn run_soak(cfg: SoakConfig) -> anyhow::Result<SoakReport> {
    cfg.check()?;
    let pair = Pair::start(&PairConfig {
        cert_ttl: cfg.cert_ttl(),
        trace_sampling: 0.01,
        max_concurrent: None,
    })
    .await?;
    let clients = Clients::connect(pair.upstream, cfg.connections).await?;
    let rec = Arc::new(Recorder::default());
    let start = sample_pair(&pair).await?;
    if cfg.print {
        println!("{}", Row::header());
    }
    let began = tokio::time::Instant::now();
    let shape = OpenLoop {
        rate: cfg.rate,
        duration: cfg.duration,
        max_in_flight: cfg.max_in_flight,
        timeout: cfg.timeout,
    };
    let mut generator = Some({
        let (clients, rec) = (clients.clone(), rec.clone());
        tokio::spawn(async move { open_loop(&clients, shape, &rec).await })
    });
    let windows = (cfg.duration.as_secs_f64() / cfg.interval.as_secs_f64()).round() as u32;
    let (mut rows, mut total, mut sent) = (Vec::new(), Bucket::default(), 0);
    for k in 1..=windows {
        // Sampling on the clock is the point here: every `interval`.
        tokio::time::sleep_until(began + cfg.interval * k).await;
        let mut b = rec.take();
        if let Some(generator) = generator.take_if(|_| k == windows) {
            // The calls still in flight belong to the last window.
            sent = tokio::time::timeout(cfg.timeout + Duration::from_secs(5), generator)
                .await
                .map_err(|_| anyhow::anyhow!("the load did not end"))??;
            b.merge(rec.take());
        }
        let sidecars = sample_pair(&pair).await?;
        let row = Row::new(cfg.interval * k, cfg.interval, &mut b, sidecars);
        if cfg.print {
            println!("{}", row.line(&start));
        }
        rows.push(row);
        b.forget_latencies();
        total.merge(b);
    }
    Ok(SoakReport {
        cfg,
        start,
        rows,
        total,
        sent,
        spans_received: pair.collector.received(),
    })
}

impl Row {
    fn new(t: Duration, interval: Duration, b: &mut Bucket, sidecars: [Sample; 2]) -> Self {
        Row {
            t,
            ok: b.ok(),
            not_ok: b.not_ok(),
            rps: b.ok() as f64 / interval.as_secs_f64(),
            p50_us: pct(&mut b.ok_us, 0.5),
            p99_us: pct(&mut b.ok_us, 0.99),
            sidecars,
        }
    }

    pub fn header() -> String {
        "| t | rps | p50 µs | p99 µs | failed | client RSS MB | fds | threads | tasks | renewals | server RSS MB | fds | threads | tasks | renewals |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".into()
    }

    /// A table line; renewals counted since `start`.
    pub fn line(&self, start: &[Sample; 2]) -> String {
        let side = |s: &Sample, s0: &Sample| {
            format!(
                "{:.1} | {} | {} | {} | {}",
                s.rss_kb as f64 / 1024.0,
                s.fds,
                s.threads,
                s.tasks,
                s.renewals_ok - s0.renewals_ok.min(s.renewals_ok)
            )
        };
        format!(
            "| {}s | {:.0} | {} | {} | {} | {} | {} |",
            self.t.as_secs(),
            self.rps,
            self.p50_us,
            self.p99_us,
            self.not_ok,
            side(&self.sidecars[0], &start[0]),
            side(&self.sidecars[1], &start[1])
        )
    }
}

/// One figure of a sample, or of a row.
type SampleField = fn(&Sample) -> u64;
type RowField = fn(&Row) -> u32;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl SoakReport {
    /// The whole table.
    pub fn table(&self) -> String {
        let mut t = Row::header();
        for r in &self.rows {
            t.push('\n');
            t.push_str(&r.line(&self.start));
        }
        t
    }

    /// The rows of the first span after the warm-up, and of the last span.
    fn spans(&self) -> (Vec<&Row>, Vec<&Row>) {
        let c = &self.cfg;
        let first = self
            .rows
            .iter()
            .filter(|r| r.t > c.warmup && r.t <= c.warmup + c.span)
            .collect();
        let last = self
            .rows
            .iter()
            .filter(|r| r.t > c.duration - c.span)
            .collect();
        (first, last)
    }

    /// Every criterion, judged.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut v = vec![self.failures()];
        for side in 0..2 {
            v.extend(self.growth(side));
            v.push(self.no_wx(side));
        }
        v.extend(self.latency());
        v.push(self.rotation());
        v.push(Verdict::new(
            "traces exported",
            self.spans_received > 0,
            format!(
                "{} spans reached the OTLP receiver (1% sampled)",
                self.spans_received
            ),
        ));
        v
    }

    fn failures(&self) -> Verdict {
        let t = &self.total;
        let offered = self.cfg.rate * self.cfg.duration.as_secs_f64();
        Verdict::new(
            "0 failed calls",
            t.not_ok() == 0 && self.sent > 0,
            format!(
                "{} ok of {} sent ({:.0} offered); shed {}, failed {}, not sent (over {} in flight) {}{}",
                t.ok(),
                self.sent,
                offered,
                t.shed,
                t.failed,
                self.cfg.max_in_flight,
                t.skipped,
                if t.errors.is_empty() {
                    String::new()
                } else {
                    format!("; errors {:?}", t.errors)
                }
            ),
        )
    }

    fn growth(&self, side: usize) -> Vec<Verdict> {
        let tol = &self.cfg.tolerances;
        let name = ["client", "server"][side];
        let (first, last) = self.spans();
        let of = |rows: &[&Row], f: fn(&Sample) -> u64| -> Vec<u64> {
            rows.iter().map(|r| f(&r.sidecars[side])).collect()
        };
        let rss = |rows: &[&Row]| {
            let mut v: Vec<f64> = of(rows, |s| s.rss_kb).iter().map(|&x| x as f64).collect();
            median(&mut v)
        };
        let (r0, r1) = (rss(&first), rss(&last));
        let growth = r1 / r0 - 1.0;
        let mut out = vec![Verdict::new(
            &format!("{name} sidecar RSS growth < {:.0}%", tol.rss_growth * 100.0),
            growth < tol.rss_growth,
            format!(
                "median {:.2} MB in the first span after warm-up, {:.2} MB in the last: {:+.1}%",
                r0 / 1024.0,
                r1 / 1024.0,
                growth * 100.0
            ),
        )];
        let kinds: [(&str, SampleField, u64); 3] = [
            ("fds", |s| s.fds, tol.fd_slack),
            ("threads", |s| s.threads, tol.thread_slack),
            ("tasks", |s| s.tasks, tol.task_slack),
        ];
        for (what, f, slack) in kinds {
            let mid = |rows: &[&Row]| {
                let mut v = of(rows, f);
                v.sort_unstable();
                v.get(v.len() / 2).copied().unwrap_or(0)
            };
            let (a, b) = (mid(&first), mid(&last));
            out.push(Verdict::new(
                &format!("{name} sidecar {what} do not grow"),
                b <= a + slack,
                format!("median {a} in the first span, {b} in the last (slack {slack})"),
            ));
        }
        out
    }

    /// No sample, at the start or after, found memory mapped both
    /// writable and executable.
    fn no_wx(&self, side: usize) -> Verdict {
        let name = ["client", "server"][side];
        let worst = std::iter::once(&self.start[side])
            .chain(self.rows.iter().map(|r| &r.sidecars[side]))
            .map(|s| s.wx_mappings)
            .max()
            .unwrap_or(0);
        let count = self.rows.len() + 1;
        Verdict::new(
            &format!("{name} sidecar maps nothing both writable and executable"),
            worst == 0,
            format!("at most {worst} such mappings in /proc/PID/maps over {count} samples"),
        )
    }

    fn latency(&self) -> Vec<Verdict> {
        let tol = &self.cfg.tolerances;
        let (first, last) = self.spans();
        let med = |rows: &[&Row], f: fn(&Row) -> u32| {
            let mut v: Vec<f64> = rows.iter().map(|r| f64::from(f(r))).collect();
            median(&mut v)
        };
        let kinds: [(&str, RowField, f64, u32); 2] = [
            ("p50", |r| r.p50_us, tol.p50_ratio, tol.p50_floor_us),
            ("p99", |r| r.p99_us, tol.p99_ratio, tol.p99_floor_us),
        ];
        kinds
            .into_iter()
            .map(|(what, f, ratio, floor)| {
                let (a, b) = (med(&first, f), med(&last, f));
                let v = Verdict::new(
                    &format!("last span's {what} within the first's"),
                    b <= a * ratio || b - a <= f64::from(floor),
                    format!(
                        "median of window {what}s {a:.0} µs first, {b:.0} µs last ({:.2}×; rule: ≤ {ratio:.2}× or ≤ +{floor} µs)",
                        b / a
                    ),
                );
                if tol.judge_latency { v } else { v.unjudged() }
            })
            .collect()
    }

    fn rotation(&self) -> Verdict {
        let c = &self.cfg;
        let step = (c.rotation.as_secs_f64() / c.interval.as_secs_f64()).round() as usize;
        let (mut spans, mut missed, mut failed, mut total) = (0, 0, 0, [0u64; 2]);
        for (side, total) in total.iter_mut().enumerate() {
            let points: Vec<u64> = std::iter::once(&self.start[side])
                .chain(self.rows.iter().map(|r| &r.sidecars[side]))
                .map(|s| s.renewals_ok)
                .collect();
            for i in 0..points.len().saturating_sub(step) {
                spans += 1;
                missed += usize::from(points[i + step] <= points[i]);
            }
            let last = self
                .rows
                .last()
                .map_or(self.start[side], |r| r.sidecars[side]);
            failed += last.renewals_failed - self.start[side].renewals_failed;
            *total = last.renewals_ok - self.start[side].renewals_ok;
        }
        Verdict::new(
            &format!("a rotation every {} s", c.rotation.as_secs()),
            spans > 0 && missed == 0 && failed == 0,
            format!(
                "renewals: client {}, server {} (certificate lifetime {:.1} s); {missed} of {spans} spans of {} s without one; {failed} failed",
                total[0],
                total[1],
                c.cert_ttl().as_secs_f64(),
                c.rotation.as_secs()
            ),
        )
    }
}
