//! An in-process mesh: the real control plane and real sidecars, each a
//! library `run` on listeners bound to 127.0.0.1 port 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use weft_control_plane::auth::AdminCredential;
use weft_control_plane::catalog::CatalogConfig;
use weft_control_plane::cli::{Bearer, connect_tls};
use weft_control_plane::{ControlPlaneConfig, Listeners as CpListeners, run as run_control_plane};
use weft_proto::name::ServiceName;
use weft_proto::v1::admin_client::AdminClient;
use weft_sidecar::config::Args;
use weft_sidecar::{Listeners, run as run_sidecar};

use crate::util::{http_get, wait_for};

/// What a test needs to talk to a control plane as an admin: its URL and
/// the admin credential it wrote.
#[derive(Clone, Debug)]
pub struct CpAccess {
    pub url: String,
    pub credential: AdminCredential,
}

impl CpAccess {
    /// Applies a YAML file's resources through the admin API.
    pub async fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        let resources = weft_control_plane::resource::parse_documents(yaml)?;
        self.admin_client()
            .await?
            .apply(weft_proto::v1::ApplyRequest {
                resources: resources
                    .iter()
                    .map(weft_proto::v1::Resource::from)
                    .collect(),
                dry_run: false,
            })
            .await?;
        Ok(())
    }

    /// Reads `<data_dir>/admin.credential`.
    pub fn read(url: String, data_dir: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(data_dir.join(weft_control_plane::auth::CREDENTIAL_FILE))?;
        Ok(CpAccess {
            url,
            credential: serde_json::from_str(&text)?,
        })
    }

    pub async fn admin_client(
        &self,
    ) -> anyhow::Result<AdminClient<InterceptedService<Channel, Bearer>>> {
        let channel = connect_tls(&self.url, &self.credential, Duration::from_secs(10)).await?;
        let bearer = format!("Bearer {}", self.credential.token).parse()?;
        Ok(AdminClient::with_interceptor(channel, Bearer(bearer)))
    }

    /// A join token for `service`, valid for `ttl`.
    pub async fn token(&self, service: &str, ttl: Duration) -> anyhow::Result<String> {
        let r = self
            .admin_client()
            .await?
            .create_token(weft_proto::v1::CreateTokenRequest {
                service: service.into(),
                ttl_seconds: ttl.as_secs().max(1),
            })
            .await?;
        Ok(r.into_inner().token)
    }
}

/// A control plane running in this process.
pub struct ControlPlane {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The dashboard (loopback: its reads need no credential).
    pub dashboard: SocketAddr,
    pub data_dir: PathBuf,
    pub access: CpAccess,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), weft_control_plane::ServerError>>,
}

impl ControlPlane {
    /// Starts one; `data_dir: None` uses a new temporary directory.
    pub async fn start(data_dir: Option<&Path>, catalog: CatalogConfig) -> anyhow::Result<Self> {
        Self::start_with(data_dir, |c| c.catalog = catalog).await
    }

    /// Starts one with a config adjusted by `adjust`.
    pub async fn start_with(
        data_dir: Option<&Path>,
        adjust: impl FnOnce(&mut ControlPlaneConfig),
    ) -> anyhow::Result<Self> {
        let tmp = match data_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir()?),
        };
        let dir = data_dir
            .map(Path::to_path_buf)
            .or_else(|| tmp.as_ref().map(|t| t.path().to_path_buf()));
        let dir = dir.ok_or_else(|| anyhow::anyhow!("no data directory"))?;
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let dashboard = TcpListener::bind("127.0.0.1:0").await?;
        let (grpc_addr, admin_addr) = (grpc.local_addr()?, admin.local_addr()?);
        let dashboard_addr = dashboard.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let mut config = ControlPlaneConfig::new(dir.clone());
        adjust(&mut config);
        let listeners = CpListeners {
            grpc,
            admin,
            dashboard: Some(dashboard),
        };
        let task = tokio::spawn(run_control_plane(config, listeners, async {
            let _ = rx.await;
        }));
        let url = format!("http://{admin_addr}/ready");
        let ready = wait_for(
            "the control plane to be ready",
            Duration::from_secs(10),
            || async {
                if task.is_finished() {
                    return Some(Err(()));
                }
                http_get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status.is_success())
                    .map(Ok)
            },
        )
        .await?;
        if ready.is_err() {
            // It stopped before it was ready: say why.
            task.await??;
            anyhow::bail!("the control plane stopped before it was ready");
        }
        let access = CpAccess::read(format!("https://{grpc_addr}"), &dir)?;
        Ok(ControlPlane {
            grpc: grpc_addr,
            admin: admin_addr,
            dashboard: dashboard_addr,
            data_dir: dir,
            access,
            _tmp: tmp,
            stop: Some(tx),
            task,
        })
    }

    /// With short grace periods, for tests.
    pub async fn start_fast() -> anyhow::Result<Self> {
        Self::start(
            None,
            CatalogConfig {
                instance_grace: Duration::from_millis(300),
                startup_grace: Duration::from_secs(5),
            },
        )
        .await
    }

    pub fn url(&self) -> String {
        self.access.url.clone()
    }

    /// Runs the `weftctl` binary against this control plane with its admin
    /// credential: (exit code, stdout, stderr).
    pub fn weftctl(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<(i32, String, String)> {
        let url = self.url();
        let credential = self.data_dir.join("admin.credential").display().to_string();
        let mut all = vec![
            "--control-plane",
            url.as_str(),
            "--credential",
            credential.as_str(),
        ];
        all.extend_from_slice(args);
        crate::process::run("weftctl", &all, stdin)
    }

    pub async fn admin_client(
        &self,
    ) -> anyhow::Result<AdminClient<InterceptedService<Channel, Bearer>>> {
        self.access.admin_client().await
    }

    pub async fn token(&self, service: &str) -> anyhow::Result<String> {
        self.access.token(service, Duration::from_secs(3600)).await
    }

    /// Applies a YAML file's resources.
    pub async fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        self.access.apply_yaml(yaml).await
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

/// Flags for an in-process sidecar, as a user would write them.
pub struct SidecarSpec {
    pub args: Vec<String>,
    /// Mint a join token from this control plane at start.
    token_from: Option<CpAccess>,
    /// The seed of its order of control-plane replicas (random if unset).
    seed: Option<u64>,
}

impl SidecarSpec {
    /// A sidecar for `service` with every listener on port 0.
    pub fn new(service: &str) -> Self {
        let args = [
            "weft-sidecar",
            "--service",
            service,
            "--inbound",
            "127.0.0.1:0",
            "--outbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--health-interval",
            "100ms",
        ];
        SidecarSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            token_from: None,
            seed: None,
        }
    }

    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }

    /// Joins `cp`'s mesh, with a join token minted at start.
    pub fn control_plane(self, cp: &ControlPlane) -> Self {
        self.access(&cp.access)
    }

    pub fn access(mut self, access: &CpAccess) -> Self {
        self.token_from = Some(access.clone());
        self.arg("--control-plane", &access.url)
    }

    /// Joins the mesh through any of `urls` (replicas; the token minted
    /// through `access`).
    pub fn access_any(mut self, access: &CpAccess, urls: &[String]) -> Self {
        self.token_from = Some(access.clone());
        self.arg("--control-plane", urls.join(","))
    }

    /// Orders the control-plane replicas with `seed`, as a sidecar started
    /// with it would (`weft_proto::addresses::preference_order`).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub fn app(self, addr: SocketAddr) -> Self {
        self.arg("--app", addr)
    }

    /// A local port for `service`.
    pub fn upstream(self, service: &str) -> Self {
        self.arg("--upstream", format!("{service}=127.0.0.1:0"))
    }

    pub fn static_config(self, path: &Path) -> Self {
        self.arg("--config", path.display())
    }

    /// Starts it and waits until `/ready`.
    pub async fn start(self) -> anyhow::Result<Sidecar> {
        let sc = self.start_unready().await?;
        let url = format!("http://{}/ready", sc.admin);
        wait_for(
            "the sidecar to be ready",
            Duration::from_secs(10),
            || async { http_get(&url).await.ok().filter(|r| r.status.is_success()) },
        )
        .await?;
        Ok(sc)
    }

    /// Starts it without waiting for its first config.
    pub async fn start_unready(mut self) -> anyhow::Result<Sidecar> {
        let tmp = tempfile::tempdir()?;
        if let Some(access) = &self.token_from
            && !self.args.iter().any(|a| a == "--token-file")
        {
            let service = self
                .args
                .iter()
                .skip_while(|a| *a != "--service")
                .nth(1)
                .cloned()
                .unwrap_or_default();
            let path = write_temp(
                tmp.path(),
                "token",
                &access.token(&service, Duration::from_secs(3600)).await?,
            )?;
            self = self.arg("--token-file", path.display());
        }
        let mut config = Args::try_parse_from(&self.args)?.into_config()?;
        if let (Some(seed), weft_sidecar::config::Source::ControlPlane(join)) =
            (self.seed, &mut config.source)
        {
            join.control_plane = weft_sidecar::failover::ControlPlanes::with_seed(
                join.control_plane.list().clone(),
                seed,
                join.control_plane.rebalance(),
            );
        }
        let listeners = Listeners::bind(&config).await?;
        let inbound = listeners.inbound.local_addr()?;
        let outbound = listeners.outbound.local_addr()?;
        let admin = listeners.admin.local_addr()?;
        let upstreams = listeners
            .upstreams
            .iter()
            .map(|(s, l)| Ok((s.to_string(), l.local_addr()?)))
            .collect::<std::io::Result<HashMap<_, _>>>()?;
        let addr = |l: &Option<TcpListener>| l.as_ref().map(|l| l.local_addr()).transpose();
        let (gateway_http, gateway_https) = (
            addr(&listeners.public.http)?,
            addr(&listeners.public.https)?,
        );
        let instance_id = config.instance_id.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_sidecar(config, listeners, async {
            let _ = rx.await;
        }));
        Ok(Sidecar {
            inbound,
            outbound,
            admin,
            upstreams,
            gateway_http,
            gateway_https,
            instance_id,
            _tmp: tmp,
            stop: Some(tx),
            task,
        })
    }
}

/// A sidecar running in this process.
pub struct Sidecar {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub upstreams: HashMap<String, SocketAddr>,
    /// Gateway mode: the public listeners.
    pub gateway_http: Option<SocketAddr>,
    pub gateway_https: Option<SocketAddr>,
    pub instance_id: String,
    _tmp: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), weft_sidecar::SidecarError>>,
}

impl Sidecar {
    pub fn upstream(&self, service: &str) -> SocketAddr {
        self.upstreams[service]
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(http_get(&format!("http://{}/metrics", self.admin))
            .await?
            .body)
    }

    pub async fn config(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &http_get(&format!("http://{}/config", self.admin))
                .await?
                .body,
        )?)
    }

    /// The endpoints this sidecar holds for `service`: (id, health).
    pub async fn endpoints(&self, service: &str) -> anyhow::Result<Vec<(String, String)>> {
        let c = self.config().await?;
        let eps = c["services"][service]["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(eps
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap_or("").to_string(),
                    e["health"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect())
    }

    /// Waits until this sidecar's config for `service` satisfies `pred`.
    /// A timeout says what the sidecar holds then (or why it could not be
    /// read), so that a failure on a loaded machine tells which step lagged.
    pub async fn wait_endpoints(
        &self,
        service: &str,
        what: &str,
        pred: impl Fn(&[(String, String)]) -> bool,
    ) -> anyhow::Result<()> {
        let waited = wait_for(what, Duration::from_secs(10), || async {
            self.endpoints(service)
                .await
                .ok()
                .filter(|e| pred(e))
                .map(|_| ())
        })
        .await;
        let Err(e) = waited else {
            return Ok(());
        };
        let holds = match self.endpoints(service).await {
            Ok(e) => format!("endpoints (id, health) {e:?}"),
            Err(e) => format!("no config: {e:#}"),
        };
        Err(e.context(format!("{service}: the sidecar holds {holds}")))
    }

    /// Shuts down gracefully (leave, drain) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

/// Writes a file in a temporary directory and returns its path.
pub fn write_temp(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

/// Parses a service name (for tests).
pub fn service(name: &str) -> ServiceName {
    ServiceName::parse(name).unwrap_or_else(|_| ServiceName::unresolved())
}

/// Echo servers named `instances`, each behind its own sidecar of `service`.
pub async fn echo_instances(
    cp: &ControlPlane,
    service: &str,
    instances: &[&str],
) -> anyhow::Result<Vec<(crate::echo::EchoServerHandle, Sidecar)>> {
    let mut out = Vec::new();
    for name in instances {
        let app = crate::echo::start_echo(name).await?;
        let sidecar = SidecarSpec::new(service)
            .control_plane(cp)
            .app(app.addr)
            .start()
            .await?;
        out.push((app, sidecar));
    }
    Ok(out)
}

/// A sidecar that calls `service` through an upstream port, once it knows
/// `endpoints` endpoints of it.
pub async fn caller(cp: &ControlPlane, service: &str, endpoints: usize) -> anyhow::Result<Sidecar> {
    let c = SidecarSpec::new("caller")
        .control_plane(cp)
        .upstream(service)
        .start()
        .await?;
    c.wait_endpoints(
        service,
        &format!("{endpoints} endpoints of {service}"),
        |e| e.len() == endpoints,
    )
    .await?;
    Ok(c)
}

/// A sidecar's discovery stream, opened by hand: what it sends, and what
/// the control plane answers.
pub type RawStream = (
    tokio::sync::mpsc::Sender<weft_proto::v1::SidecarMessage>,
    tonic::Streaming<weft_proto::v1::DiscoveryUpdate>,
);

impl ControlPlane {
    /// Joins as a sidecar of `service` without an app, calling `upstreams`,
    /// and opens its discovery stream: a certificate obtained as a sidecar
    /// obtains one (a CSR for the service's identity, admitted by `token`),
    /// then the hello.
    pub async fn discovery_stream(
        &self,
        service: &str,
        upstreams: &[&str],
        token: String,
    ) -> anyhow::Result<RawStream> {
        use rcgen::{CertificateParams, KeyPair, SanType};
        use weft_proto::v1 as pb;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://weft.local/service/{service}").try_into()?,
        )];
        let csr = params.serialize_request(&key)?;
        let anonymous = connect_tls(
            &self.url(),
            &self.access.credential,
            Duration::from_secs(10),
        )
        .await?;
        let issued = pb::identity_client::IdentityClient::new(anonymous)
            .issue(pb::IssueRequest {
                csr: csr.der().to_vec(),
                token,
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            issued.spiffe_id == format!("spiffe://weft.local/service/{service}"),
            "issued {}",
            issued.spiffe_id
        );
        let roots = weft_proto::identity::root_store(&[issued.roots[0].clone().into()])?;
        let verifier = weft_proto::identity::SpiffeServerVerifier::new(
            roots,
            weft_proto::identity::SpiffeId::control_plane("weft.local"),
        );
        let cert_pem = weft_proto::identity::pem("CERTIFICATE", &issued.chain[0]);
        let key_pem = weft_proto::identity::pem("PRIVATE KEY", &key.serialize_der());
        let channel = tonic::transport::Endpoint::from_shared(self.url())?
            .tls_config_with_verifier(
                tonic::transport::ClientTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem)),
                std::sync::Arc::new(verifier),
            )?
            .connect()
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(pb::SidecarMessage {
            kind: Some(pb::sidecar_message::Kind::Hello(pb::Hello {
                service: service.into(),
                instance_id: format!("{service}-1"),
                address: "127.0.0.1:1".into(),
                upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
                no_app: true,
                ..Default::default()
            })),
        })
        .await?;
        let updates = pb::discovery_client::DiscoveryClient::new(channel)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, updates))
    }
}
