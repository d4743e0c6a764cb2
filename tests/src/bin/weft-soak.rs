//! `weft-soak`: endurance and overload of an mTLS pair of real sidecars
//! (issue 13). A real control plane (certificates of a short lifetime, so
//! they rotate), two `weft-sidecar` processes with resilience, 1% tracing
//! to an OTLP receiver and authorization on, the echo backend and the load
//! in this process.
//!
//!   weft-soak              10 minutes at 5,000 rps, a rotation a minute
//!   weft-soak overload     3× the measured maximum for 30 s
//!
//! Build and run (release):
//!   cargo build --release -p weft-sidecar -p weft-control-plane \
//!     -p weft-tests --bin weft-soak && target/release/weft-soak
//!
//! Prints a table while it runs and PASS/FAIL per criterion at the end;
//! exits 1 on any FAIL.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use weft_proto::duration::parse_duration;
use weft_tests::soak::endurance::{SoakConfig, Tolerances, run_soak};
use weft_tests::soak::overload::{OverloadConfig, run_overload};
use weft_tests::soak::verdict::{all_pass, render};

#[derive(Debug, Parser)]
#[command(
    name = "weft-soak",
    about = "Endurance (soak) and overload of an mTLS pair of Weft sidecars"
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// A fixed rate for a long time with certificates rotating (the
    /// default, with these defaults).
    Soak(SoakArgs),
    /// Three times the maximum rate: the sidecar sheds, stays bounded and
    /// recovers.
    Overload(OverloadArgs),
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Calls per second, offered in an open loop (each on its tick, never
    /// waiting for earlier answers; at most --max-in-flight outstanding).
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Sampling (/proc, /metrics) and table interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    interval: Duration,
    /// Not judged: pools, connections and allocator arenas fill up.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    warmup: Duration,
    /// The first span after the warm-up is compared with the last one.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    span: Duration,
    /// A certificate rotation at least this often (the lifetime is set
    /// to 1.25× it; sidecars renew at 65–75% of the lifetime).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    rotation: Duration,
    /// HTTP/2 connections the load is spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Outstanding calls at most; a send over it counts as a failure.
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
    /// Latency: the last span's p50 may be this ratio of the first's...
    #[arg(long, default_value_t = 1.10)]
    p50_ratio: f64,
    #[arg(long, default_value_t = 1.10)]
    p99_ratio: f64,
    /// ...or this many µs above it (scheduling noise on a shared machine).
    #[arg(long, default_value_t = 30)]
    p50_floor_us: u32,
    #[arg(long, default_value_t = 150)]
    p99_floor_us: u32,
    /// Each sidecar's CPU per call: the last span's may be this ratio of
    /// the first's.
    #[arg(long, default_value_t = 1.10)]
    cpu_ratio: f64,
}

#[derive(Debug, Args)]
struct OverloadArgs {
    /// Offered rate as a multiple of the measured maximum.
    #[arg(long, default_value_t = 3.0)]
    factor: f64,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// The maximum-rate measurement (closed loop, 64 in flight).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    measure: Duration,
    /// The normal rate before and after, whose p50 is compared.
    #[arg(long, default_value_t = 1000.0)]
    normal_rate: f64,
    /// HTTP/2 connections the load is spread over (many callers).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Calls the callers keep outstanding at most (together); a send over
    /// it is counted as not sent, as a real caller's bounded pool would
    /// refuse it. Far above the sidecar's limit, so the sidecar must shed.
    #[arg(long, default_value_t = 3200)]
    max_in_flight: usize,
    /// Each sidecar's peak RSS must stay under this many MB (measured
    /// 42 MB at the default limit on the release build, 70 MB without one).
    #[arg(long, default_value_t = 64.0)]
    rss_bound_mb: f64,
    /// The sidecars' `--max-concurrent-requests` (0: none, to see what an
    /// unbounded sidecar does); unset: their default.
    #[arg(long)]
    max_concurrent_requests: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = runtime.map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            // Interrupted or terminated (Ctrl-C, `timeout`, `kill`), the
            // run is dropped: its child processes are killed with it, not
            // left running. (A SIGKILL cannot be caught; then the kernel
            // kills them: `weft_tests::process` ties them to this process.)
            tokio::select! {
                r = run(cli) => r,
                () = weft_process::shutdown::on_signal() => Err(anyhow::anyhow!("interrupted")),
            }
        })
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    weft_proto::identity::install_provider();
    // No mode: the soak with its defaults.
    let mode = match cli.mode {
        Some(m) => m,
        None => Cli::try_parse_from(["weft-soak", "soak"])?
            .mode
            .ok_or_else(|| anyhow::anyhow!("`soak` parses to no mode"))?,
    };
    let verdicts = match mode {
        Mode::Soak(a) => {
            println!(
                "soak: {} rps (open loop, ≤ {} in flight, {} connections) for {} s through an mTLS pair; rotation every {} s; samples every {} s",
                a.rate,
                a.max_in_flight,
                a.connections,
                a.duration.as_secs(),
                a.rotation.as_secs(),
                a.interval.as_secs()
            );
            let r = run_soak(SoakConfig {
                rate: a.rate,
                duration: a.duration,
                interval: a.interval,
                warmup: a.warmup,
                span: a.span,
                rotation: a.rotation,
                connections: a.connections,
                max_in_flight: a.max_in_flight,
                timeout: Duration::from_secs(5),
                tolerances: Tolerances {
                    anon_growth: Some(0.05),
                    rss_growth: None,
                    memory_floor_kb: 256,
                    fd_slack: 2,
                    thread_slack: 1,
                    task_slack: 4,
                    p50_ratio: a.p50_ratio,
                    p99_ratio: a.p99_ratio,
                    p50_floor_us: a.p50_floor_us,
                    p99_floor_us: a.p99_floor_us,
                    cpu_ratio: a.cpu_ratio,
                    judge_latency: true,
                },
                print: true,
            })
            .await?;
            r.verdicts()
        }
        Mode::Overload(a) => {
            println!(
                "overload: {}× the measured maximum for {} s over {} connections",
                a.factor,
                a.duration.as_secs(),
                a.connections
            );
            let r = run_overload(OverloadConfig {
                measure: a.measure,
                concurrency: 64,
                normal_rate: a.normal_rate,
                normal: Duration::from_secs(5),
                factor: a.factor,
                duration: a.duration,
                connections: a.connections,
                max_in_flight: a.max_in_flight,
                timeout: Duration::from_secs(5),
                rss_bound_mb: a.rss_bound_mb,
                window: Duration::from_millis(250),
                watch: Duration::from_secs(5),
                ratio: 1.5,
                recover: Duration::from_secs(2),
                judge_recovery_time: true,
                sidecar_limit: a.max_concurrent_requests,
            })
            .await?;
            println!("{}", r.table());
            r.verdicts()
        }
    };
    print!("\n{}", render(&verdicts));
    Ok(all_pass(&verdicts))
}
