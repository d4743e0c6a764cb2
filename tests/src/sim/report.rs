//! What a simulation measured, and its table.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::SimConfig;
use super::plane::Usage;
use super::stream::Shared;

/// The restart of one replica.
#[derive(Debug, Clone)]
pub struct Resync {
    /// Streams that were on it.
    pub streams: usize,
    /// From the kill until the new process was ready.
    pub ready: Duration,
    /// From the kill until every one of them had a full state again.
    pub synced: Duration,
    /// Connects that failed and streams refused meanwhile.
    pub failed: u64,
}

/// What an open dashboard costs the control plane (`--dashboard`).
#[derive(Debug, Clone)]
pub struct DashboardCost {
    /// Control-plane CPU per second of wall time, every stream reporting
    /// traffic each second, no dashboard open.
    pub reports_only: f64,
    /// Control-plane CPU per graph answer, above the reports' (a page asks
    /// every 2 s).
    pub cpu_per_answer: Duration,
    pub polls: usize,
    pub answer_p50: Duration,
    pub answer_max: Duration,
    /// The graph's JSON, bytes.
    pub bytes: usize,
    pub edges: usize,
    /// The control plane's RSS as the reports started (5 s in), and at
    /// the end.
    pub rss_before: u64,
    pub rss_reporting: u64,
}

pub(super) struct Inputs<'a> {
    pub cfg: &'a SimConfig,
    pub shared: &'a Shared,
    pub connect_time: Duration,
    pub base: Usage,
    pub connected: Usage,
    /// (usage, updates received, when) before and after the changes.
    pub changes: ((Usage, u64, Instant), (Usage, u64, Instant)),
    pub missing: usize,
    pub resync: Option<Resync>,
    pub dashboard: Option<DashboardCost>,
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub streams: usize,
    pub services: usize,
    pub wanted: usize,
    pub replicas: usize,
    pub changes: usize,
    /// Time for every stream to connect and get its first full state.
    pub connect_time: Duration,
    /// Over every (change, stream): from the change to the stream's receipt.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Per change, until the last stream had it: the slowest change.
    pub slowest_all: Duration,
    /// (change, stream) receipts that never came within the wait.
    pub missing: usize,
    /// Control-plane CPU per second of wall time while changes and churn ran.
    pub cpu_share: f64,
    /// Control-plane CPU to connect and sync every stream.
    pub connect_cpu: Duration,
    /// RSS of the control plane(s) with every stream connected, and before.
    pub rss: u64,
    pub rss_base: u64,
    /// (rss − rss_base) / streams.
    pub rss_per_stream: u64,
    /// Updates per stream per measured change (churn included).
    pub updates_per_stream_change: f64,
    /// Service updates a stream got for services it neither calls nor is.
    pub unwanted: u64,
    /// Updates that carried the address map.
    pub address_maps: u64,
    pub bytes: u64,
    pub failed_connects: u64,
    pub refused: u64,
    pub resync: Option<Resync>,
    pub dashboard: Option<DashboardCost>,
    pub total: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Report {
    pub(super) fn new(i: Inputs<'_>) -> Self {
        let mut all = Vec::new();
        let mut slowest_all = Duration::ZERO;
        for c in &i.shared.changes {
            let l = c.latencies.lock().map(|l| l.clone()).unwrap_or_default();
            if let Some(m) = l.iter().max() {
                slowest_all = slowest_all.max(*m);
            }
            all.extend(l);
        }
        all.sort();
        let ((u0, n0, t0), (u1, n1, t1)) = i.changes;
        let wall = t1.duration_since(t0).as_secs_f64().max(1e-9);
        let c = &i.shared.counters;
        let streams = i.cfg.streams;
        Report {
            streams,
            services: i.cfg.services,
            wanted: i.cfg.wanted,
            replicas: i.cfg.replicas,
            changes: i.cfg.changes,
            connect_time: i.connect_time,
            p50: percentile(&all, 0.50),
            p99: percentile(&all, 0.99),
            max: all.last().copied().unwrap_or_default(),
            slowest_all,
            missing: i.missing,
            cpu_share: u1.since(&u0).cpu.as_secs_f64() / wall,
            connect_cpu: i.connected.since(&i.base).cpu,
            rss: i.connected.rss_bytes,
            rss_base: i.base.rss_bytes,
            rss_per_stream: i.connected.rss_bytes.saturating_sub(i.base.rss_bytes) / streams as u64,
            updates_per_stream_change: (n1 - n0) as f64
                / (streams as f64 * i.cfg.changes.max(1) as f64),
            unwanted: c.unwanted.load(Ordering::Relaxed),
            address_maps: c.address_maps.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            failed_connects: c.failed_connects.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            resync: i.resync,
            dashboard: i.dashboard,
            total: i.total,
        }
    }

    /// One line per measure, as docs/performance.md shows them.
    pub fn table(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
        let mut rows: Vec<(String, String)> = vec![
            ("streams (N)".into(), self.streams.to_string()),
            (
                "services (S) / called per stream (M)".into(),
                format!("{} / {}", self.services, self.wanted),
            ),
            ("control-plane replicas".into(), self.replicas.to_string()),
            (
                "connect + first full state, all N".into(),
                ms(self.connect_time),
            ),
            ("  control-plane CPU for it".into(), ms(self.connect_cpu)),
            ("measured changes".into(), self.changes.to_string()),
            ("push to each stream p50".into(), ms(self.p50)),
            ("push to each stream p99".into(), ms(self.p99)),
            ("push to each stream max".into(), ms(self.max)),
            ("slowest change to reach all N".into(), ms(self.slowest_all)),
            ("receipts missing".into(), self.missing.to_string()),
            (
                "control-plane CPU during changes + churn".into(),
                format!("{:.0} %", self.cpu_share * 100.0),
            ),
            (
                "updates per stream per change".into(),
                format!("{:.2}", self.updates_per_stream_change),
            ),
            (
                "updates for services not called".into(),
                self.unwanted.to_string(),
            ),
            (
                "updates carrying the address map".into(),
                self.address_maps.to_string(),
            ),
            ("bytes received, all streams".into(), mib(self.bytes)),
            (
                "control-plane RSS before streams".into(),
                mib(self.rss_base),
            ),
            ("control-plane RSS with N streams".into(), mib(self.rss)),
            (
                "RSS per stream".into(),
                format!("{:.1} KiB", self.rss_per_stream as f64 / 1024.0),
            ),
        ];
        if let Some(r) = &self.resync {
            rows.extend([
                (
                    "restart: streams on the killed replica".into(),
                    r.streams.to_string(),
                ),
                ("restart: kill → ready".into(), ms(r.ready)),
                ("restart: kill → all resynced".into(), ms(r.synced)),
                (
                    "restart: failed connects / refused streams".into(),
                    r.failed.to_string(),
                ),
            ]);
        }
        if let Some(d) = &self.dashboard {
            let pct = |x: f64| format!("{:.2} % of a core", x * 100.0);
            rows.extend([
                (
                    "dashboard: CPU, streams reporting, none open".into(),
                    pct(d.reports_only),
                ),
                (
                    "dashboard: CPU per graph answer".into(),
                    format!(
                        "{} ({} answers back to back)",
                        ms(d.cpu_per_answer),
                        d.polls
                    ),
                ),
                (
                    "dashboard: one open page (an answer every 2 s)".into(),
                    pct(d.cpu_per_answer.as_secs_f64() / 2.0),
                ),
                (
                    "dashboard: graph answers p50 / max".into(),
                    format!("{} / {}", ms(d.answer_p50), ms(d.answer_max)),
                ),
                (
                    "dashboard: RSS, reports 5 s in → at the end".into(),
                    format!("{} → {}", mib(d.rss_before), mib(d.rss_reporting)),
                ),
                (
                    "dashboard: graph size".into(),
                    format!("{:.1} KiB, {} edges", d.bytes as f64 / 1024.0, d.edges),
                ),
            ]);
        }
        rows.push((
            "failed connects / refused, whole run".into(),
            format!("{} / {}", self.failed_connects, self.refused),
        ));
        rows.push(("whole run".into(), ms(self.total)));
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<w$}  {v}\n"));
        }
        out
    }
}
