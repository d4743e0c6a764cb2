//! What is sampled of each sidecar process: from `/proc` its resident
//! memory, open file descriptors and threads; from its `/metrics` its live
//! tokio tasks (`weft_tasks`) and certificate renewals.

use std::net::SocketAddr;

use crate::util::{http_get, metric};

/// One sidecar at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_kb: u64,
    /// Peak resident memory so far (VmHWM).
    pub peak_kb: u64,
    pub fds: u64,
    pub threads: u64,
    pub tasks: u64,
    pub renewals_ok: u64,
    pub renewals_failed: u64,
    /// `weft_overloaded_total`, every service.
    pub overloaded: u64,
}

impl Sample {
    pub async fn take(pid: i32, admin: SocketAddr) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status: no {name}"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        let text = http_get(&format!("http://{admin}/metrics")).await?.body;
        let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
        let tasks = m("weft_tasks", &[])
            .ok_or_else(|| anyhow::anyhow!("the sidecar at {admin} does not export weft_tasks"))?;
        Ok(Sample {
            rss_kb: field("VmRSS:")?,
            peak_kb: field("VmHWM:")?,
            fds,
            threads: field("Threads:")?,
            tasks: tasks as u64,
            renewals_ok: m("weft_certificate_renewals_total", &[("result", "ok")]).unwrap_or(0.0)
                as u64,
            renewals_failed: m("weft_certificate_renewals_total", &[("result", "failed")])
                .unwrap_or(0.0) as u64,
            overloaded: m("weft_overloaded_total", &[]).unwrap_or(0.0) as u64,
        })
    }
}
