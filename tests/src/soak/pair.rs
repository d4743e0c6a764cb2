//! The pair under test: a real `weft-control-plane` process (its CA issuing
//! certificates of a short lifetime, so that the sidecars renew them while
//! the load runs), two real `weft-sidecar` processes joined to it over
//! mutual TLS, the echo backend, and an OTLP receiver taking the sampled
//! traces. The client sidecar's upstream port is where the load goes.

use std::net::SocketAddr;
use std::time::Duration;

use crate::echo::{EchoServerHandle, client, start_echo};
use crate::otlp::Collector;
use crate::pb::EchoRequest;
use crate::process::{ControlPlaneProc, SidecarProc, free_port};
use crate::util::wait_for;

/// The called service and the caller's.
pub const SERVER: &str = "echo";
pub const CLIENT: &str = "soak-client";

/// The mesh policy of the run: resilience as a production service would
/// have it (retries within a budget, a per-try and a total timeout,
/// outlier ejection; no explicit concurrency limit, so the sidecar's
/// default applies), and authorization on (only the client may call, and
/// only the echo service's methods).
pub const POLICY: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  retries: {attempts: 3, perTryTimeout: 1s}\n  timeouts: {request: 5s}\n  circuitBreaker: {consecutiveFailures: 5, baseEjection: 10s, maxEjectedPercent: 50}\n---\napiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: echo-callers}\nspec:\n  service: echo\n  rules:\n    - from: [soak-client]\n      grpcMethods: [\"/weft.test.v1.Echo/*\"]\n";

/// How the pair is set up.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// The lifetime of the sidecars' certificates (`--cert-ttl`); they
    /// renew at 65–75% of it.
    pub cert_ttl: Duration,
    /// The share of requests traced (`--trace-sampling`).
    pub trace_sampling: f64,
    /// `--max-concurrent-requests` of both sidecars; `None`: the default.
    pub max_concurrent: Option<usize>,
}

/// Everything running; dropped, the processes are killed.
pub struct Pair {
    pub control_plane: ControlPlaneProc,
    pub server: SidecarProc,
    pub client: SidecarProc,
    pub backend: EchoServerHandle,
    pub collector: Collector,
    /// The client sidecar's upstream port for the echo service.
    pub upstream: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Pair {
    pub async fn start(cfg: &PairConfig) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ttl = format!("{}ms", cfg.cert_ttl.as_millis());
        let control_plane = ControlPlaneProc::start(
            free_port()?,
            free_port()?,
            dir.path(),
            &["--cert-ttl", &ttl, "--log", "warn"],
        )
        .await?;
        let access = control_plane.access()?;
        access.apply_yaml(POLICY).await?;
        let collector = Collector::start_on_thread()?;
        collector.discard();
        let backend = start_echo("backend").await?;
        let mut common = vec![
            "--otlp-endpoint".to_string(),
            collector.endpoint(),
            "--trace-sampling".into(),
            cfg.trace_sampling.to_string(),
            "--log".into(),
            "warn".into(),
        ];
        if let Some(n) = cfg.max_concurrent {
            common.extend(["--max-concurrent-requests".into(), n.to_string()]);
        }
        let mut server_args = vec!["--app".to_string(), backend.addr.to_string()];
        server_args.extend(common.iter().cloned());
        let server = SidecarProc::start(SERVER, Some(&access), &server_args).await?;
        let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut client_args = vec!["--upstream".to_string(), format!("{SERVER}={upstream}")];
        client_args.extend(common);
        let client = SidecarProc::start(CLIENT, Some(&access), &client_args).await?;
        let pair = Pair {
            control_plane,
            server,
            client,
            backend,
            collector,
            upstream,
            _dir: dir,
        };
        pair.first_call().await?;
        Ok(pair)
    }

    /// Waits (bounded) until a call goes through: the client sidecar has
    /// learned the server's endpoint and both hold certificates.
    async fn first_call(&self) -> anyhow::Result<()> {
        let addr = self.upstream;
        let r = wait_for(
            "a first call through the pair",
            Duration::from_secs(20),
            || async move {
                let mut c = client(addr).await.ok()?;
                c.unary(EchoRequest::default()).await.ok().map(|_| ())
            },
        )
        .await;
        r.map_err(|e| {
            anyhow::anyhow!(
                "{e}; client sidecar log:\n{}\nserver sidecar log:\n{}",
                self.client.proc.log_text(),
                self.server.proc.log_text()
            )
        })
    }

    /// (label, pid, admin address) of each sidecar.
    pub fn sidecars(&self) -> [(&'static str, i32, SocketAddr); 2] {
        [
            ("client", self.client.proc.pid(), self.client.admin),
            ("server", self.server.proc.pid(), self.server.admin),
        ]
    }
}
