//! `weft-sidecar`: flags → validated config → bound listeners → `run`;
//! `weft-sidecar init ...` installs the interception rules instead.

use anyhow::Context;
use clap::Parser;
use weft_sidecar::config::Args;
use weft_sidecar::intercept::{InitArgs, run_init};
use weft_sidecar::wrap::{self, AppCommand};
use weft_sidecar::{Listeners, run};

fn main() -> std::process::ExitCode {
    // `init` is a separate program sharing the binary (one image, one
    // file), so the sidecar's own flags keep no subcommand.
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        return init_main();
    }
    let args = Args::parse();
    // One thread by default: a sidecar's work is small per request, and
    // handing a request between tasks on one thread avoids the cross-thread
    // wakeups that dominate its latency at moderate load (measured with
    // weft-bench; see docs/architecture.md).
    let runtime = if args.workers <= 1 {
        // Before any thread starts: the others share the main arena.
        weft_sidecar::malloc::one_arena();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Errors are printed whole (cause chain included), without a backtrace.
    match runtime.block_on(run_main(args)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The exit code: 0, or with an app after `--`, the app's.
async fn run_main(mut args: Args) -> anyhow::Result<u8> {
    let log_level = weft_process::logs::init(&args.log).context("--log")?;
    let app = AppCommand::new(std::mem::take(&mut args.command));
    let mut config = args.into_config()?;
    config.log_level = Some(log_level);
    let listeners = Listeners::bind(&config).await?;
    match app {
        Some(app) => Ok(wrap::run(config, listeners, app).await?),
        None => {
            run(config, listeners, weft_process::shutdown::on_signal()).await?;
            Ok(0)
        }
    }
}

fn init_main() -> std::process::ExitCode {
    // Named whole in usage lines and errors: `weft-sidecar init`.
    let argv = std::iter::once("weft-sidecar init".into()).chain(std::env::args_os().skip(2));
    let args = InitArgs::parse_from(argv);
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run_init(&config, &mut std::io::stdout().lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
