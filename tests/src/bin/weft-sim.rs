//! `weft-sim`: thousands of simulated sidecars against real control-plane
//! processes (see `weft_tests::sim`); prints what one change costs to reach
//! them all, the control plane's CPU and memory per stream, and the resync
//! after a restart. The figures in docs/performance.md come from it.

use std::time::Duration;

use clap::Parser;
use weft_proto::duration::parse_duration;
use weft_tests::sim::{SimConfig, run};

/// Simulates N sidecars' discovery streams (real mTLS, real certificates,
/// ACKs) against weft-control-plane processes, and measures push latency,
/// CPU, memory per stream and resync after a restart.
#[derive(Debug, Parser)]
#[command(name = "weft-sim")]
struct Args {
    /// Discovery streams (N), one simulated sidecar each.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Services in the catalog (S).
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Services each stream calls (M), the shared one every stream calls included.
    #[arg(long, default_value_t = 3)]
    wanted: usize,
    /// Measured changes (an apply, then an instance joining, in turn).
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Control-plane replicas: 1 (embedded store) or 3 (on a three-member etcd).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Time between measured changes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    change_interval: Duration,
    /// Time between background churn events (a join and a leave; an apply every third).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    churn_interval: Duration,
    /// Streams opening at once at the start.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Skip the restart and resync measurement.
    #[arg(long)]
    no_restart: bool,
    /// The simulated sidecars say they intercept (then each gets every
    /// service's addresses).
    #[arg(long)]
    intercept: bool,
    /// Longest wait for one change to reach every stream, or for the resync.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    wait: Duration,
    /// Measure the dashboard's cost: every stream reports traffic each
    /// second; the control plane's CPU over this long without a dashboard,
    /// then this long with one polling the graph every 2 s.
    #[arg(long, value_parser = parse_duration)]
    dashboard: Option<Duration>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_file_limit()?;
    weft_proto::identity::install_provider();
    let cfg = SimConfig {
        streams: args.streams,
        services: args.services,
        wanted: args.wanted,
        changes: args.changes,
        replicas: args.replicas,
        change_interval: args.change_interval,
        churn_interval: args.churn_interval,
        connect_concurrency: args.connect_concurrency,
        restart: !args.no_restart,
        intercept: args.intercept,
        wait: args.wait,
        dashboard: args.dashboard,
    };
    let report = tokio::runtime::Runtime::new()?.block_on(run(cfg))?;
    print!("{}", report.table());
    Ok(())
}

/// Open files up to the hard limit: each stream is a socket here, and the
/// control-plane children inherit the limit.
#[allow(unsafe_code)]
fn raise_file_limit() -> anyhow::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the one struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            anyhow::bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            anyhow::bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    eprintln!("open files: up to {}", lim.rlim_cur);
    Ok(())
}
