//! What is sampled of each sidecar process: from `/proc` its resident
//! memory (anonymous and file-backed apart), the CPU it has used, open
//! file descriptors, threads and any memory mapped both writable and
//! executable; from its `/metrics` its live tokio tasks (`weft_tasks`) and
//! certificate renewals.

use std::net::SocketAddr;

use crate::util::{http_get, metric};

/// One sidecar at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_kb: u64,
    /// Of it, anonymous memory (`RssAnon`): heap, stacks, buffers. Where a
    /// leak shows.
    pub anon_kb: u64,
    /// Of it, pages of files (`RssFile`): the binary's code and read-only
    /// data, and the libraries', read in on first use (64 KiB at a time),
    /// so a code path first taken late adds to it. Bounded by the files.
    pub file_kb: u64,
    /// User and system CPU time used so far, every thread, µs.
    pub cpu_us: u64,
    /// Peak resident memory so far (VmHWM).
    pub peak_kb: u64,
    pub fds: u64,
    pub threads: u64,
    pub tasks: u64,
    pub renewals_ok: u64,
    pub renewals_failed: u64,
    /// `weft_overloaded_total`, every service.
    pub overloaded: u64,
    /// Mappings both writable and executable (`/proc/PID/maps`): memory
    /// where what the process was sent could be run. A binary without a
    /// `GNU_STACK` header gets one per thread stack from glibc.
    pub wx_mappings: u64,
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
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let wx_mappings = maps.lines().filter(|l| writable_and_executable(l)).count() as u64;
        let text = http_get(&format!("http://{admin}/metrics")).await?.body;
        let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
        let tasks = m("weft_tasks", &[])
            .ok_or_else(|| anyhow::anyhow!("the sidecar at {admin} does not export weft_tasks"))?;
        Ok(Sample {
            rss_kb: field("VmRSS:")?,
            anon_kb: field("RssAnon:")?,
            file_kb: field("RssFile:")?,
            cpu_us: cpu_us(pid)?,
            peak_kb: field("VmHWM:")?,
            fds,
            threads: field("Threads:")?,
            tasks: tasks as u64,
            renewals_ok: m("weft_certificate_renewals_total", &[("result", "ok")]).unwrap_or(0.0)
                as u64,
            renewals_failed: m("weft_certificate_renewals_total", &[("result", "failed")])
                .unwrap_or(0.0) as u64,
            overloaded: m("weft_overloaded_total", &[]).unwrap_or(0.0) as u64,
            wx_mappings,
        })
    }
}

/// The user and system CPU time process `pid` has used, every thread
/// (those ended included), µs: fields 14 and 15 of `/proc/PID/stat`, in
/// clock ticks.
#[allow(unsafe_code)]
pub fn cpu_us(pid: i32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: {stat:?}"))?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks * 1_000_000 / per_second as u64)
}

/// utime + stime from a `/proc/PID/stat` line. The fields are counted
/// after the command's closing parenthesis: the command may hold spaces
/// and parentheses itself.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// Whether a `/proc/PID/maps` line's permissions (`rwxp`) have both `w`
/// and `x`.
fn writable_and_executable(line: &str) -> bool {
    line.split_whitespace()
        .nth(1)
        .is_some_and(|perms| perms.get(1..3) == Some("wx"))
}

#[cfg(test)]
mod tests {
    use super::{cpu_ticks, writable_and_executable};

    #[test]
    fn cpu_ticks_are_utime_plus_stime_after_the_command() {
        // Fields 14 and 15 are 1200 and 34; the command holds ") (".
        let stat = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 900 0 0 0 1200 34 0 0 20 0 2 0 99 1000 250 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(1234));
        assert_eq!(cpu_ticks("4242 (truncated) S 1"), None);
        assert_eq!(cpu_ticks(""), None);
    }

    #[test]
    fn only_mappings_both_writable_and_executable_count() {
        let line = |perms: &str| format!("7f48c7235000-7f48c7435000 {perms} 00000000 00:00 0 ");
        assert!(writable_and_executable(&line("rwxp")));
        assert!(writable_and_executable(&line("-wxs")));
        for perms in ["rw-p", "r-xp", "r--p", "---p"] {
            assert!(!writable_and_executable(&line(perms)), "{perms}");
        }
        assert!(!writable_and_executable(""));
        assert!(!writable_and_executable(
            "55c1aa800000-55c1aad7b000 r-xp 00c00000 fe:00 10010807 /usr/bin/rwx"
        ));
    }
}
