//! `weft-bench`: gRPC unary load, directly and through two Weft sidecars
//! (real `weft-sidecar` processes from the same build), at a fixed rate and
//! at the maximum rate. Prints latency percentiles, achieved RPS, the added
//! latency of the mesh, and each sidecar's peak RSS and CPU time.
//!
//! Build and run (release):
//!   cargo build --release --workspace --bins && target/release/weft-bench
//!
//! Runs are interleaved (direct, mesh, direct, mesh, …) so that a noisy
//! machine affects both alike; compare the ratios within one run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::sync::Mutex;
use weft_tests::echo::{client, start_echo};
use weft_tests::pb::EchoRequest;
use weft_tests::process::{Proc, free_port};

#[derive(Debug, Parser)]
#[command(
    name = "weft-bench",
    about = "gRPC latency and throughput, direct vs through two Weft sidecars"
)]
struct Args {
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The fixed rate, requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Requests in flight in the maximum-rate runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Request and response payload, bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How many times each fixed-rate pair (direct, mesh) runs.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

struct Result {
    name: String,
    sent: u64,
    failed: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Result {
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i =
            ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i]
    }
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// Open loop at `rate`: one request per tick, each in its own task, so a
/// slow response never delays the next send. Latency is measured from the
/// moment the request is handed to the client: the timer wheel's
/// millisecond granularity would otherwise add up to 1 ms to every sample.
async fn fixed_rate(
    name: &str,
    addr: SocketAddr,
    rate: u32,
    seconds: u64,
    payload: usize,
) -> anyhow::Result<Result> {
    let c = client(addr).await?;
    let lat = Arc::new(Mutex::new(Vec::with_capacity(
        rate as usize * seconds as usize,
    )));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = u64::from(rate) * seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        tick.tick().await;
        let (mut c, lat, failed) = (c.clone(), lat.clone(), failed.clone());
        let req = EchoRequest {
            payload: vec![1; payload],
            ..Default::default()
        };
        tasks.spawn(async move {
            let sent = Instant::now();
            match tokio::time::timeout(Duration::from_secs(5), c.unary(req)).await {
                Ok(Ok(_)) => lat.lock().await.push(sent.elapsed()),
                _ => {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut latencies = std::mem::take(&mut *lat.lock().await);
    latencies.sort();
    Ok(Result {
        name: name.into(),
        sent: total,
        failed: failed.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        latencies,
    })
}

/// Closed loop: `concurrency` workers send back to back for `seconds`.
async fn max_rate(
    name: &str,
    addr: SocketAddr,
    concurrency: usize,
    seconds: u64,
    payload: usize,
) -> anyhow::Result<Result> {
    let c = client(addr).await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut c = c.clone();
        workers.spawn(async move {
            let (mut lat, mut failed) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let req = EchoRequest {
                    payload: vec![1; payload],
                    ..Default::default()
                };
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), c.unary(req)).await {
                    Ok(Ok(_)) => lat.push(t.elapsed()),
                    _ => failed += 1,
                }
            }
            (lat, failed)
        });
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(r) = workers.join_next().await {
        let (l, f) = r?;
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Result {
        name: name.into(),
        sent: latencies.len() as u64 + failed,
        failed,
        elapsed,
        latencies,
    })
}

/// Peak RSS (kB) and CPU time (user + system) of a process, from /proc.
fn usage(pid: i32) -> anyhow::Result<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|x| x.1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Ok((hwm, Duration::from_millis(ticks * 10)))
}

async fn start_sidecar(args: &[String], admin: SocketAddr) -> anyhow::Result<Proc> {
    let p = Proc::spawn("weft-sidecar", args)?;
    p.wait_ready("a sidecar", admin).await?;
    Ok(p)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = start_echo("backend").await?;
    let dir = tempfile::tempdir()?;
    let port =
        || -> anyhow::Result<SocketAddr> { Ok(format!("127.0.0.1:{}", free_port()?).parse()?) };
    let (s_in, s_admin, s_out) = (port()?, port()?, port()?);
    let (c_in, c_admin, c_out, c_up) = (port()?, port()?, port()?, port()?);
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "services: []\n")?;
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!("services:\n  - name: echo\n    endpoints:\n      - address: {s_in}\n"),
    )?;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let log = ["--log", "warn"];
    let server = start_sidecar(
        &[
            s(&[
                "--service",
                "echo",
                "--app",
                &backend.addr.to_string(),
                "--config",
                &empty.display().to_string(),
            ]),
            s(&[
                "--inbound",
                &s_in.to_string(),
                "--admin",
                &s_admin.to_string(),
                "--outbound",
                &s_out.to_string(),
            ]),
            s(&log),
        ]
        .concat(),
        s_admin,
    )
    .await?;
    let client_side = start_sidecar(
        &[
            s(&[
                "--service",
                "bench",
                "--config",
                &mesh.display().to_string(),
                "--upstream",
                &format!("echo={c_up}"),
            ]),
            s(&[
                "--inbound",
                &c_in.to_string(),
                "--admin",
                &c_admin.to_string(),
                "--outbound",
                &c_out.to_string(),
            ]),
            s(&log),
        ]
        .concat(),
        c_admin,
    )
    .await?;

    eprintln!("warming up…");
    fixed_rate("warmup", backend.addr, args.rate, 2, args.payload).await?;
    fixed_rate("warmup", c_up, args.rate, 2, args.payload).await?;

    let mut results = Vec::new();
    let mut cpu = Vec::new();
    for round in 1..=args.rounds {
        eprintln!(
            "round {round}: {} rps for {} s, direct then mesh…",
            args.rate, args.seconds
        );
        results.push(
            fixed_rate(
                &format!("direct @{}", args.rate),
                backend.addr,
                args.rate,
                args.seconds,
                args.payload,
            )
            .await?,
        );
        let before = (usage(client_side.pid())?.1, usage(server.pid())?.1);
        results.push(
            fixed_rate(
                &format!("mesh   @{}", args.rate),
                c_up,
                args.rate,
                args.seconds,
                args.payload,
            )
            .await?,
        );
        let after = (usage(client_side.pid())?.1, usage(server.pid())?.1);
        cpu.push((
            format!("mesh @{} (round {round})", args.rate),
            after.0 - before.0,
            after.1 - before.1,
            args.seconds,
        ));
    }
    eprintln!(
        "maximum rate, {} in flight, direct then mesh…",
        args.concurrency
    );
    results.push(
        max_rate(
            "direct max",
            backend.addr,
            args.concurrency,
            args.seconds,
            args.payload,
        )
        .await?,
    );
    let before = (usage(client_side.pid())?.1, usage(server.pid())?.1);
    results.push(
        max_rate(
            "mesh   max",
            c_up,
            args.concurrency,
            args.seconds,
            args.payload,
        )
        .await?,
    );
    let after = (usage(client_side.pid())?.1, usage(server.pid())?.1);
    cpu.push((
        "mesh max".into(),
        after.0 - before.0,
        after.1 - before.1,
        args.seconds,
    ));

    println!(
        "\ngRPC unary, {} B payload, one HTTP/2 connection from the client; {} s per run; plaintext between sidecars\n",
        args.payload, args.seconds
    );
    println!("| run | sent | failed | achieved rps | p50 µs | p90 µs | p99 µs | p99.9 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
            r.name,
            r.sent,
            r.failed,
            r.rps(),
            us(r.pct(0.5)),
            us(r.pct(0.9)),
            us(r.pct(0.99)),
            us(r.pct(0.999))
        );
    }
    println!("\nAdded by two sidecars (mesh − direct, same round):\n");
    println!("| round | added p50 µs | added p99 µs |");
    println!("|---|---:|---:|");
    for (i, pair) in results.chunks(2).enumerate() {
        if let [d, m] = pair {
            let label = if i < args.rounds as usize {
                format!("@{} round {}", args.rate, i + 1)
            } else {
                "max".into()
            };
            let add = |a: Duration, b: Duration| {
                format!("{:.0}", (b.as_secs_f64() - a.as_secs_f64()) * 1e6)
            };
            println!(
                "| {label} | {} | {} |",
                add(d.pct(0.5), m.pct(0.5)),
                add(d.pct(0.99), m.pct(0.99))
            );
        }
    }
    let (c_rss, _) = usage(client_side.pid())?;
    let (s_rss, _) = usage(server.pid())?;
    println!("\nSidecars:\n");
    println!("| | client-side sidecar | server-side sidecar |");
    println!("|---|---:|---:|");
    println!(
        "| peak RSS | {:.1} MB | {:.1} MB |",
        c_rss as f64 / 1024.0,
        s_rss as f64 / 1024.0
    );
    for (label, c, s, secs) in &cpu {
        println!(
            "| CPU in {label} | {:.2} s ({:.0}% of a core) | {:.2} s ({:.0}%) |",
            c.as_secs_f64(),
            100.0 * c.as_secs_f64() / *secs as f64,
            s.as_secs_f64(),
            100.0 * s.as_secs_f64() / *secs as f64
        );
    }
    Ok(())
}
