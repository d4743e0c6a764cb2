//! `weftctl`: the command line for a Weft mesh.

use clap::Parser;
use weft_control_plane::cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout();
    match run(cli, &mut out).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
