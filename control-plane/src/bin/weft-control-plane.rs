//! `weft-control-plane`: flags → validated config → `weft_control_plane::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_control_plane::catalog::CatalogConfig;
use weft_control_plane::store::StoreArgs;
use weft_control_plane::{ControlPlaneConfig, Listeners, run};
use weft_proto::duration::parse_duration;

/// The Weft control plane: keeps the catalog of services and instances and
/// the mesh policy, and streams each sidecar the configuration it needs.
#[derive(Debug, Parser)]
#[command(name = "weft-control-plane", version)]
struct Args {
    /// gRPC API for sidecars and weftctl.
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// HTTP admin endpoint: /live, /ready, /metrics.
    #[arg(long, env = "WEFT_ADMIN", default_value = "127.0.0.1:15014")]
    admin: SocketAddr,
    /// The web dashboard (`weftctl dashboard` prints its URL), or `off`.
    /// Off loopback, its data needs the admin credential.
    #[arg(long, env = "WEFT_DASHBOARD", default_value = "127.0.0.1:15015", value_parser = parse_dashboard)]
    dashboard: Dashboard,
    /// Directory of the embedded store, the generated CA and the admin
    /// credential (created if missing).
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "weft-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// How long an instance whose sidecar disconnected stays in the catalog.
    #[arg(long, env = "WEFT_INSTANCE_GRACE", default_value = "10s", value_parser = parse_duration)]
    instance_grace: Duration,
    /// After a restart, how long restored instances wait for their sidecars
    /// to reconnect before they are removed.
    #[arg(long, env = "WEFT_STARTUP_GRACE", default_value = "30s", value_parser = parse_duration)]
    startup_grace: Duration,
    /// The SPIFFE trust domain: identities are spiffe://<domain>/service/<name>.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "weft.local")]
    trust_domain: String,
    /// The CA certificate (PEM) to sign with, instead of one generated in
    /// --data-dir. Needs --ca-key.
    #[arg(long, env = "WEFT_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The CA's private key (PEM). Needs --ca-cert.
    #[arg(long, env = "WEFT_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// More CA certificates (PEM) to trust besides the signing CA, sent to
    /// every sidecar: to rotate a CA, trust the new one here first, then
    /// sign with it (--ca-cert/--ca-key) trusting the old one here, then,
    /// a certificate lifetime later, drop the old one.
    #[arg(long, env = "WEFT_TRUST_BUNDLE")]
    trust_bundle: Option<PathBuf>,
    /// Lifetime of the sidecars' certificates (renewed at about 70%).
    #[arg(long, env = "WEFT_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// This replica's name, shown by `weftctl status` beside the sidecars
    /// connected to it (several replicas share an etcd store). Default: the
    /// host name and the --listen port.
    #[arg(long, env = "WEFT_REPLICA_NAME", default_value = "")]
    replica_name: String,
    /// Log filter, e.g. info or weft_control_plane=debug.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Errors are printed whole (cause chain included), without a backtrace.
    match runtime.block_on(run_main()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log_level = weft_process::logs::init(&args.log).context("--log")?;
    let grpc = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on --admin {}", args.admin))?;
    let dashboard = match args.dashboard {
        Dashboard::Off => None,
        Dashboard::At(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --dashboard {addr}"))?,
        ),
    };
    weft_proto::identity::validate_trust_domain(&args.trust_domain).map_err(|_| {
        anyhow::anyhow!(
            "--trust-domain {:?} is not a valid trust domain (e.g. example.org)",
            args.trust_domain
        )
    })?;
    if args.cert_ttl < Duration::from_secs(1) {
        anyhow::bail!("--cert-ttl must be at least 1s");
    }
    weft_proto::identity::install_provider();
    let store = args.store.config(args.ca_cert.is_some())?;
    let config = ControlPlaneConfig {
        data_dir: args.data_dir,
        store,
        catalog: CatalogConfig {
            instance_grace: args.instance_grace,
            startup_grace: args.startup_grace,
        },
        trust_domain: args.trust_domain,
        ca_files: args.ca_cert.zip(args.ca_key),
        trust_bundle: args.trust_bundle,
        leaf_ttl: args.cert_ttl,
        log_level: Some(log_level),
        replica: args.replica_name,
    };
    let listeners = Listeners {
        grpc,
        admin,
        dashboard,
    };
    run(config, listeners, weft_process::shutdown::on_signal()).await?;
    Ok(())
}

/// `--dashboard`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
enum Dashboard {
    Off,
    At(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is neither host:port (e.g. 127.0.0.1:15015) nor off")]
struct NotDashboard(String);

fn parse_dashboard(s: &str) -> Result<Dashboard, NotDashboard> {
    if s == "off" {
        return Ok(Dashboard::Off);
    }
    s.parse()
        .map(Dashboard::At)
        .map_err(|_| NotDashboard(s.to_string()))
}
