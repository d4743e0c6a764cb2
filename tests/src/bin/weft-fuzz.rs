//! `weft-fuzz`: random input at every listener of a real mesh (a control
//! plane, an mTLS pair of sidecars in front of an echo app, and a sidecar
//! as the API gateway in front of it), bounded in count and time; prints
//! what each listener got and what became of the processes, and fails when
//! one died, panicked, hung past the timeout, outgrew its memory bound or
//! stopped carrying a normal call.
//!
//! The documented run (docs/robustness.md):
//! `cargo build --release -p weft-sidecar -p weft-control-plane -p weft-tests --bin weft-fuzz`
//! then `target/release/weft-fuzz --inputs 10000000`.

use std::time::Duration;

use clap::Parser;
use weft_tests::fuzz::{Options, run};

#[derive(Parser)]
#[command(about = "Random input at every listener of a real Weft mesh, bounded in count and time")]
struct Args {
    /// Inputs to send in all (a discovery stream of four messages is one).
    #[arg(long, default_value_t = 10_000_000)]
    inputs: u64,
    /// Stop starting inputs after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Every input is drawn from this seed and its index.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Inputs in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Inputs between two checks of the processes (alive, no panic, memory,
    /// a normal call through the pair and a REST call through the gateway).
    #[arg(long, default_value_t = 20_000)]
    batch: u64,
    /// Milliseconds one input may take before it counts as a hang.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    weft_proto::identity::install_provider();
    let args = Args::parse();
    let report = run(Options {
        inputs: args.inputs,
        limit: (args.seconds > 0).then(|| Duration::from_secs(args.seconds)),
        seed: args.seed,
        concurrency: args.concurrency,
        batch: args.batch,
        timeout: Duration::from_millis(args.timeout_ms),
    })
    .await?;
    print!("{}", report.table());
    let problems = report.problems();
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("problem: {p}");
        }
        std::process::exit(1);
    }
    Ok(())
}
