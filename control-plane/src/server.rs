//! The control-plane server as a library function: give it bound listeners
//! and a shutdown future, and it serves until the future resolves.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tonic::transport::{Certificate as TlsCertificate, Identity as TlsIdentity, ServerTlsConfig};
use weft_proto::v1::{
    admin_server::AdminServer, discovery_server::DiscoveryServer, identity_server::IdentityServer,
};

use crate::admin::{AdminService, DashboardInfo};
use crate::auth::{AdminAuth, CREDENTIAL_FILE, TokenBook};
use crate::ca::{Ca, CaError, CaSource};
use crate::catalog::{Catalog, CatalogConfig, run_reaper};
use crate::dashboard::Dashboard;
use crate::discovery::DiscoveryService;
use crate::identity::{IdentityService, Signing};
use crate::metrics::Metrics;
use crate::store::{Replication, StoreConfig, StoreError};

/// Everything the control plane needs besides its listeners.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Where the embedded store, the generated CA and the admin credential live.
    pub data_dir: PathBuf,
    /// The embedded store (default), or etcd shared by several replicas.
    pub store: StoreConfig,
    pub catalog: CatalogConfig,
    /// SPIFFE trust domain of the mesh, e.g. `weft.local`.
    pub trust_domain: String,
    /// A CA from files (`--ca-cert`, `--ca-key`); `None`: generated in `data_dir`.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// More CA certificates to trust (`--trust-bundle`), for rotating a CA.
    pub trust_bundle: Option<PathBuf>,
    /// Lifetime of the sidecars' certificates.
    pub leaf_ttl: Duration,
    /// The process's log filter, for the admin port's `/log-level`; `None`
    /// when an embedding program owns logging.
    pub log_level: Option<Arc<weft_process::logs::LogLevel>>,
    /// This replica's name, shown by `weftctl status` beside each sidecar
    /// connected to it; empty: the host name and the gRPC port.
    pub replica: String,
}

impl ControlPlaneConfig {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        ControlPlaneConfig {
            data_dir,
            store: StoreConfig::Embedded,
            catalog: CatalogConfig::default(),
            trust_domain: "weft.local".into(),
            ca_files: None,
            trust_bundle: None,
            leaf_ttl: Duration::from_secs(24 * 3600),
            log_level: None,
            replica: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot start the store's writer thread: {0}")]
    Writer(std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error(
        "--store etcd needs --ca-cert and --ca-key: every replica must sign with the same CA (mount the same files, or the same Secret, on each)"
    )]
    SharedCaMissing,
}

/// Where the control plane serves, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC API (sidecars and weftctl), over TLS.
    pub grpc: TcpListener,
    /// `/live`, `/ready`, `/metrics`, `/log-level`.
    pub admin: TcpListener,
    /// The dashboard; `None`: off.
    pub dashboard: Option<TcpListener>,
}

/// Serves the gRPC API, the admin endpoint and the dashboard until
/// `shutdown` resolves.
pub async fn run(
    config: ControlPlaneConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Listeners {
        grpc,
        admin,
        dashboard,
    } = listeners;
    let shutdown: futures_util::future::Shared<BoxFuture<'static, ()>> = shutdown.boxed().shared();
    let store = crate::store::open(&config.store, &config.data_dir).await?;
    if store.is_shared() && config.ca_files.is_none() {
        return Err(ServerError::SharedCaMissing);
    }
    let snapshot = store.load().await?;
    let catalog = Catalog::restore(
        config.catalog,
        snapshot.resources,
        snapshot.instances,
        store.instance_store(),
    )
    .map_err(ServerError::Writer)?;
    let ca = {
        let cfg = config.clone();
        tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
            let source = match &cfg.ca_files {
                Some((cert, key)) => CaSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                None => CaSource::DataDir(cfg.data_dir.clone()),
            };
            let mut ca = Ca::load_or_create(&source, &cfg.trust_domain, cfg.leaf_ttl)?;
            if let Some(bundle) = &cfg.trust_bundle {
                ca = ca.trust_bundle(bundle)?;
            }
            Ok(Arc::new(ca))
        })
        .await??
    };
    // weftctl verifies the control plane under every root, so that its
    // credential keeps working across a rotation.
    let auth = admin_auth(&config, &ca.roots_pem(), store.as_ref()).await?;
    let tokens = Arc::new(TokenBook::new(snapshot.tokens));
    store
        .delete_tokens(&tokens.remove_expired(std::time::SystemTime::now()))
        .await?;
    let (serving_cert, serving_key) = ca.serving_identity()?;
    let metrics = Arc::new(Metrics::new());
    if !store.is_shared() {
        metrics.store_connected.set(1);
    }
    let (caught_up, mut first_list) = tokio::sync::watch::channel(false);
    let replication = tokio::spawn(store.clone().replicate(Replication {
        catalog: catalog.clone(),
        tokens: tokens.clone(),
        leader: metrics.leader.clone(),
        connected: metrics.store_connected.clone(),
        caught_up,
        shutdown: shutdown.clone(),
    }));
    if store.is_shared() {
        // Serve sidecars the instances other replicas hold from the start,
        // rather than a catalog without them; with etcd away, start anyway.
        let _ = tokio::time::timeout(Duration::from_secs(5), first_list.wait_for(|c| *c)).await;
    }

    let reaper = tokio::spawn(run_reaper(catalog.clone(), shutdown.clone()));
    let dashboard = dashboard.and_then(|l| {
        let addr = l.local_addr().ok()?;
        let d = Dashboard::new(catalog.clone(), auth.clone(), addr);
        let info = DashboardInfo {
            addr,
            needs_credential: d.needs_credential(),
        };
        let task = tokio::spawn(crate::dashboard::serve(l, d, shutdown.clone()));
        Some((info, task))
    });
    let (dashboard_info, dashboard_task) = dashboard.unzip();
    let admin = tokio::spawn(serve_admin(
        admin,
        catalog.clone(),
        metrics.clone(),
        config.log_level.clone(),
        shutdown.clone(),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<DiscoveryServer<DiscoveryService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;

    tracing::info!(
        grpc = %grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %config.data_dir.display(),
        store = ?config.store,
        trust_domain = %config.trust_domain,
        ca_fingerprint = %ca.fingerprint(),
        "control plane listening (TLS)"
    );
    // Client certificates are optional at the TLS layer: a sidecar's first
    // call (with a join token) has none. Each service checks what it needs.
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(serving_cert, serving_key))
        // Every root: a sidecar whose certificate is from the CA being
        // rotated out still renews and keeps its stream.
        .client_ca_root(TlsCertificate::from_pem(ca.roots_pem()))
        .client_auth_optional(true);
    let replica = replica_name(&config.replica, &grpc);
    tracing::info!(%replica, "this control-plane replica's name");
    let admin_service = AdminService::new(
        catalog.clone(),
        Some(store.clone()),
        metrics.clone(),
        tokens.clone(),
        ca.clone(),
    )
    .with_replica(replica)
    .with_dashboard(dashboard_info);
    tonic::transport::Server::builder()
        .tls_config(tls)?
        // Find sidecars that vanished without closing their connection.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(health_service)
        .add_service(DiscoveryServer::new(
            DiscoveryService::new(
                catalog.clone(),
                metrics.clone(),
                Some(config.trust_domain.clone()),
            )
            .with_roots(ca.roots().iter().map(|c| c.to_vec()).collect()),
        ))
        .add_service(IdentityServer::new(IdentityService::new(
            ca.clone(),
            tokens,
            store.clone(),
            metrics.clone(),
            Signing::for_this_machine(),
        )))
        .add_service(AdminServer::with_interceptor(admin_service, move |req| {
            auth.check(req)
        }))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    // Returning means everything is released (the store's file lock
    // included), so that a library user can start again on the same data.
    let _ = tokio::join!(reaper, admin, replication);
    if let Some(task) = dashboard_task {
        let _ = task.await;
    }
    tracing::info!("control plane stopped");
    Ok(())
}

/// The admin credential. On the embedded store, the file in the data
/// directory (created at first start). On a shared store, the first replica
/// to start publishes its credential's hash and every other replica checks
/// against it: copy that replica's `admin.credential` to the others' data
/// directories (weftctl needs the token, which no store holds).
async fn admin_auth(
    config: &ControlPlaneConfig,
    ca_pem: &str,
    store: &dyn crate::store::Store,
) -> Result<AdminAuth, ServerError> {
    let path = config.data_dir.join(CREDENTIAL_FILE);
    if !store.is_shared() {
        let (td, ca_pem) = (config.trust_domain.clone(), ca_pem.to_string());
        return tokio::task::spawn_blocking(move || AdminAuth::load_or_create(&path, &td, &ca_pem))
            .await?
            .map_err(ServerError::from);
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServerError::Ca(CaError::File {
            path: config.data_dir.clone(),
            reason: e.to_string(),
        })
    })?;
    let local = AdminAuth::read(&path, ca_pem)?;
    let fresh = local.is_none();
    let credential = match local {
        Some(c) => c,
        None => AdminAuth::create(&config.trust_domain, ca_pem)?,
    };
    let mine = AdminAuth::hash_of(&credential);
    let hash = store.admin_hash(mine.clone()).await?;
    if hash == mine {
        if fresh {
            AdminAuth::write(&path, &credential)?;
            tracing::info!(file = %path.display(), "created the admin credential (weftctl --credential); copy it to the other replicas");
        }
    } else {
        tracing::warn!(file = %path.display(),
            "the admin credential is the one another replica created first: copy its admin.credential here for weftctl");
    }
    Ok(AdminAuth::from_hash(hash))
}

type AdminBody = Full<Bytes>;

async fn serve_admin(
    listener: TcpListener,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    log_level: Option<Arc<weft_process::logs::LogLevel>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(admin = %addr, "admin endpoint listening");
    let respond = move |req: Request<Incoming>| {
        let (catalog, metrics, log_level) = (catalog.clone(), metrics.clone(), log_level.clone());
        async move { admin_response(req, &catalog, &metrics, log_level.as_deref()).await }
    };
    crate::http::serve(listener, "admin", respond, shutdown).await;
}

async fn admin_response(
    req: Request<Incoming>,
    catalog: &Catalog,
    metrics: &Metrics,
    log_level: Option<&weft_process::logs::LogLevel>,
) -> Response<AdminBody> {
    tracing::debug!(method = %req.method(), path = req.uri().path(), "admin request");
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET | &hyper::Method::PUT | &hyper::Method::POST, "/log-level") => {
            let (status, body) = weft_process::logs::admin_request(log_level, req).await;
            (status, "text/plain", body)
        }
        (&hyper::Method::GET, "/live") => (StatusCode::OK, "text/plain", "live\n".to_string()),
        (&hyper::Method::GET, "/ready") => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(catalog),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /live, /ready, /metrics or /log-level\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// `given`, or the host name and the gRPC port: unique among replicas
/// (pods have their own host names; on one machine, ports differ).
fn replica_name(given: &str, grpc: &TcpListener) -> String {
    if !given.is_empty() {
        return given.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "control-plane".into());
    match grpc.local_addr() {
        Ok(a) => format!("{host}:{}", a.port()),
        Err(_) => host,
    }
}
