//! Wiring: the sidecar as a library function. Give it bound listeners and a
//! shutdown future; [`run`] builds the parts its tasks share, spawns the
//! tasks (admin, identity, what keeps the routing table current, the app's
//! health checks, the listeners, gRPC health), waits for a reason to stop
//! (the future, `POST /shutdown`, or a certificate the control plane
//! refuses), then stops accepting, leaves the mesh, and drains in-flight
//! requests.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tonic_health::server::HealthReporter;
use weft_proto::name::ServiceName;

use crate::admin::{self, AdminState};
use crate::backoff::Backoff;
use crate::config::{GatewayConfig, SidecarConfig, Source};
use crate::discovery::{ConfigState, DiscoveryClient, Member, Status, StatusCell, StreamState};
use crate::drain;
use crate::edge::forwarded::Forwarding;
use crate::edge::transcode::Transcoder;
use crate::endpoint::{Connector, TcpConnector};
use crate::health::Checker;
use crate::identity::tls::{self, MtlsConnector};
use crate::identity::{Identity, IdentityError};
use crate::intercept::AddressMap;
use crate::model::inbound::InboundPolicy;
use crate::model::{Health, ServiceState};
use crate::proxy::gateway::{self, CertError, Certificates, Gateway, Public};
use crate::proxy::{self, AppPorts, Inbound, Listener, Outbound};
use crate::table::{Routes, TableBuilder};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::{Telemetry, Tracer};

/// The sidecar's sockets, bound before `run` so that tests can use port 0.
pub struct Listeners {
    pub inbound: TcpListener,
    pub outbound: TcpListener,
    /// With `--intercept`, the IPv6 twins of `inbound` (`[::]` for
    /// `0.0.0.0`) and `outbound` (`[::1]` for `127.0.0.1`) on the same
    /// ports: ip6tables redirects to them. `None` for other addresses, and
    /// where the host has no IPv6.
    pub inbound6: Option<TcpListener>,
    pub outbound6: Option<TcpListener>,
    pub admin: TcpListener,
    pub upstreams: Vec<(ServiceName, TcpListener)>,
    /// Gateway mode: the public listeners (cleartext, TLS).
    pub public: PublicListeners,
}

/// A gateway's public sockets.
#[derive(Default)]
pub struct PublicListeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot listen on {what} {addr}: {error}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot read a bound address: {0}")]
    LocalAddr(std::io::Error),
    #[error("no certificate: {0}")]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tracing(#[from] crate::telemetry::TracerError),
    #[error("--tls-cert: {0}")]
    GatewayCertificate(#[from] CertError),
    #[error("--tls-cert: {0}")]
    GatewayTls(#[from] rustls::Error),
    #[error("--transcode {path}: {error}")]
    Transcode {
        path: String,
        error: crate::edge::transcode::TranscodeError,
    },
}

impl Listeners {
    /// Binds every address in the config.
    pub async fn bind(cfg: &SidecarConfig) -> Result<Self, SidecarError> {
        async fn bind(
            what: &'static str,
            addr: std::net::SocketAddr,
        ) -> Result<TcpListener, SidecarError> {
            TcpListener::bind(addr)
                .await
                .map_err(|error| SidecarError::Bind { what, addr, error })
        }
        let mut upstreams = Vec::new();
        for u in &cfg.upstreams {
            upstreams.push((u.service.clone(), bind("--upstream", u.listen).await?));
        }
        let mut public = PublicListeners::default();
        if let Some(g) = &cfg.gateway {
            if let Some(a) = g.http {
                public.http = Some(bind("--gateway-http", a).await?);
            }
            if let Some(a) = g.https {
                public.https = Some(bind("--gateway-https", a).await?);
            }
        }
        let inbound = bind("--inbound", cfg.inbound).await?;
        let outbound = bind("--outbound", cfg.outbound).await?;
        let (mut inbound6, mut outbound6) = (None, None);
        if cfg.intercept.is_some() {
            inbound6 = bind_v6_twin("--inbound", &inbound)?;
            outbound6 = bind_v6_twin("--outbound", &outbound)?;
        }
        Ok(Listeners {
            inbound,
            outbound,
            inbound6,
            outbound6,
            admin: bind("--admin", cfg.admin).await?,
            upstreams,
            public,
        })
    }
}

/// The IPv6 twin of an IPv4 wildcard or loopback listener, on its port
/// (the one the rules redirect to). IPv6-only, so that it and the IPv4
/// listener share the port and each connection's family says which
/// original-destination option to read. A host without IPv6 gets none.
fn bind_v6_twin(what: &'static str, v4: &TcpListener) -> Result<Option<TcpListener>, SidecarError> {
    use socket2::{Domain, Socket, Type};
    use std::net::{IpAddr, Ipv6Addr};
    let local = v4.local_addr().map_err(SidecarError::LocalAddr)?;
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv6Addr::UNSPECIFIED,
        IpAddr::V4(ip) if ip.is_loopback() => Ipv6Addr::LOCALHOST,
        _ => return Ok(None),
    };
    let addr = SocketAddr::new(IpAddr::V6(ip), local.port());
    let bound = (|| {
        let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        socket.set_only_v6(true)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    })();
    match bound {
        Ok(l) => Ok(Some(l)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            tracing::warn!(%addr, error = %e, "no IPv6 here: intercepted IPv6 connections will not be served");
            Ok(None)
        }
        Err(error) => Err(SidecarError::Bind { what, addr, error }),
    }
}

/// Runs the sidecar until `shutdown` resolves, then drains.
pub async fn run(
    cfg: SidecarConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SidecarError> {
    run_notifying(cfg, listeners, shutdown, None).await
}

/// As [`run`], and sends on `ready` once the sidecar is ready (what
/// `/ready` answers 200 for: a certificate when it has an identity, and a
/// first config). A wrapped app (`crate::wrap`) starts then.
pub async fn run_notifying(
    cfg: SidecarConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    ready: Option<oneshot::Sender<()>>,
) -> Result<(), SidecarError> {
    weft_proto::identity::install_provider();
    let sidecar_ports = listeners.ports();
    let Listeners {
        inbound,
        outbound,
        inbound6,
        outbound6,
        admin,
        upstreams,
        public,
    } = listeners;
    let inbound_addr = inbound.local_addr().map_err(SidecarError::LocalAddr)?;
    let (parts, feed) = Parts::new(&cfg, inbound_addr)?;
    let (drain_signal, drain) = drain::channel();

    // The admin endpoint first: /live answers while the certificate comes.
    let stop_request = Arc::new(Notify::new());
    let health = spawn_admin(admin, &cfg, &parts, &stop_request, &drain);
    let refused = parts
        .identity
        .as_ref()
        .map(|id| spawn_identity(id, &parts.metrics, &drain));
    let app_health = spawn_app_checks(&cfg, &parts.metrics, &drain);
    spawn_feed(feed, &cfg, &parts, app_health, &drain);
    let traffic = Traffic {
        inbound: [Some(inbound), inbound6].into_iter().flatten().collect(),
        outbound: [Some(outbound), outbound6].into_iter().flatten().collect(),
        upstreams,
        sidecar_ports,
    };
    let to_peers = serve_traffic(&cfg, &parts, traffic, &drain);
    if let Some(g) = &cfg.gateway {
        serve_gateway(&cfg, g, to_peers, public, &drain)?;
    }
    tokio::spawn(follow_readiness(
        parts.status.watch(),
        health,
        drain.clone(),
    ));
    if let Some(tx) = ready {
        let became = became_ready(parts.status.watch(), parts.identity.clone());
        let mut d = drain.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = became => { let _ = tx.send(()); }
                _ = d.signaled() => {}
            }
        });
    }
    drop(drain);

    let result = stopped(shutdown, &stop_request, refused).await;
    drain_connections(drain_signal, cfg.timeouts.drain).await;
    // The spans of the last requests go out before the process ends.
    parts.telemetry.flush().await;
    result
}

/// What the sidecar's tasks share, built before any of them starts.
struct Parts {
    metrics: Arc<Metrics>,
    telemetry: Arc<Telemetry>,
    /// `None` with a static config and no certificate files (plaintext).
    identity: Option<Arc<Identity>>,
    status: Arc<StatusCell>,
    routes: Arc<Routes>,
    /// What the inbound half enforces, as the control plane last said.
    inbound_policy: Arc<ArcSwap<InboundPolicy>>,
    /// Which service each address belongs to, for interception.
    addresses: Arc<ArcSwap<AddressMap>>,
    /// Plain TCP: to the app, and under TLS to peers.
    tcp: Arc<TcpConnector>,
    /// The one way to a peer sidecar (mutual TLS when there is an identity).
    peers: Arc<dyn Connector>,
    /// What other sidecars dial.
    advertise: String,
}

/// What keeps the routing table current, ready to start.
enum Feed {
    Static {
        path: PathBuf,
        services: Vec<(ServiceName, ServiceState)>,
    },
    ControlPlane {
        /// The stream runs over TLS with its certificate.
        identity: Arc<Identity>,
        url: String,
        /// Services the app called that the table did not know.
        subscriptions: mpsc::UnboundedReceiver<ServiceName>,
    },
}

impl Parts {
    fn new(cfg: &SidecarConfig, inbound: SocketAddr) -> Result<(Self, Feed), SidecarError> {
        let metrics = Arc::new(Metrics::new());
        let tracer = cfg
            .tracing
            .as_ref()
            .map(|t| Tracer::new(t, cfg.service.as_str(), &cfg.instance_id, &metrics))
            .transpose()?;
        let telemetry = Arc::new(Telemetry::new(metrics.clone(), tracer, cfg.access_log));
        let (identity, subscribe, feed) = match &cfg.source {
            Source::Static {
                path,
                services,
                certificates,
            } => {
                let identity = certificates
                    .as_ref()
                    .map(|files| Identity::from_files(files.clone(), &cfg.service))
                    .transpose()?;
                let feed = Feed::Static {
                    path: path.clone(),
                    services: services.clone(),
                };
                (identity, None, feed)
            }
            Source::ControlPlane(join) => {
                let identity = Identity::new(join.clone(), &cfg.service)?;
                let (tx, subscriptions) = mpsc::unbounded_channel();
                let feed = Feed::ControlPlane {
                    identity: identity.clone(),
                    url: join.control_plane.text(),
                    subscriptions,
                };
                (Some(identity), Some(tx), feed)
            }
        };
        let tcp = Arc::new(TcpConnector {
            timeout: cfg.timeouts.connect,
        });
        let peers: Arc<dyn Connector> = match &identity {
            Some(id) => Arc::new(MtlsConnector::new(id.clone(), tcp.clone(), metrics.clone())),
            None => tcp.clone(),
        };
        let state = match feed {
            Feed::Static { .. } => StreamState::Static,
            Feed::ControlPlane { .. } => StreamState::Connecting,
        };
        let parts = Parts {
            metrics,
            telemetry,
            identity,
            status: StatusCell::new(state),
            routes: Arc::new(Routes::new(subscribe)),
            inbound_policy: Arc::new(ArcSwap::from_pointee(InboundPolicy::default())),
            addresses: Arc::new(ArcSwap::from_pointee(AddressMap::default())),
            tcp,
            peers,
            advertise: cfg.advertise.clone().unwrap_or_else(|| inbound.to_string()),
        };
        Ok((parts, feed))
    }
}

/// Serves the admin endpoint; returns what sets its gRPC health.
fn spawn_admin(
    listener: TcpListener,
    cfg: &SidecarConfig,
    parts: &Parts,
    stop_request: &Arc<Notify>,
    drain: &drain::Watch,
) -> HealthReporter {
    let (reporter, health) = tonic_health::server::health_reporter();
    let state = Arc::new(AdminState {
        service: cfg.service.to_string(),
        instance_id: cfg.instance_id.clone(),
        advertise: parts.advertise.clone(),
        status: parts.status.clone(),
        routes: parts.routes.clone(),
        metrics: parts.metrics.clone(),
        shutdown: stop_request.clone(),
        identity: parts.identity.clone(),
        inbound: parts.inbound_policy.clone(),
        log_level: cfg.log_level.clone(),
    });
    let health = admin::HealthService::new(health);
    tokio::spawn(admin::serve(listener, state, health, drain.clone()));
    reporter
}

/// Obtains the certificate in the background, so that the listeners serve
/// from the start (calls fail fast with `no-certificate` until it arrives,
/// and /ready says so), then renews it; keeps the expiry gauge current. A
/// refused token comes back on the returned channel: it stops the sidecar.
fn spawn_identity(
    identity: &Arc<Identity>,
    metrics: &Arc<Metrics>,
    drain: &drain::Watch,
) -> oneshot::Receiver<IdentityError> {
    let (refused_tx, refused) = oneshot::channel();
    let (id, m, mut d) = (identity.clone(), metrics.clone(), drain.clone());
    tokio::spawn(async move {
        match bootstrap(&id, &mut d).await {
            Ok(true) => id.run_renewal(m, d).await,
            Ok(false) => {}
            Err(e) => {
                let _ = refused_tx.send(e);
            }
        }
    });
    let (mut expiry, m) = (identity.expiry(), metrics.clone());
    tokio::spawn(async move {
        loop {
            m.set_certificate_expiry(*expiry.borrow_and_update());
            if expiry.changed().await.is_err() {
                return;
            }
        }
    });
    refused
}

/// Obtains the first certificate, retrying while the control plane is
/// unreachable; a refusal (bad, expired or foreign token) is final.
/// `Ok(false)`: draining began first.
async fn bootstrap(identity: &Identity, drain: &mut drain::Watch) -> Result<bool, IdentityError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match identity.obtain().await {
            Ok(_) => return Ok(true),
            Err(e) if e.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "no certificate yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = drain.signaled() => return Ok(false),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Checks the local app's health on an interval; returns what follows it.
fn spawn_app_checks(
    cfg: &SidecarConfig,
    metrics: &Arc<Metrics>,
    drain: &drain::Watch,
) -> watch::Receiver<Health> {
    let Some(app) = cfg.app else {
        // A sidecar with no app only makes calls: it must get no traffic.
        return watch::channel(Health::Unhealthy).1;
    };
    let (tx, rx) = watch::channel(Health::Unknown);
    let checker = Checker {
        app,
        protocol: cfg.protocol,
        interval: cfg.timeouts.health_interval,
        timeout: cfg.timeouts.connect,
        tx,
        metrics: metrics.clone(),
    };
    tokio::spawn(checker.run(drain.clone()));
    rx
}

/// Starts what keeps the routing table current: one table built now from
/// a static file, or the discovery client.
fn spawn_feed(
    feed: Feed,
    cfg: &SidecarConfig,
    parts: &Parts,
    app_health: watch::Receiver<Health>,
    drain: &drain::Watch,
) {
    let mut builder = TableBuilder::new(parts.peers.clone(), parts.metrics.clone());
    let (identity, url, subscriptions) = match feed {
        Feed::Static { path, services } => {
            let known = services.iter().map(|(n, s)| (n, s));
            parts.routes.store(builder.build(known, std::iter::empty()));
            parts.metrics.set_stream_state("static");
            tracing::info!(file = %path.display(), services = services.len(), "running from a static config");
            return;
        }
        Feed::ControlPlane {
            identity,
            url,
            subscriptions,
        } => (identity, url, subscriptions),
    };
    let (ejections_tx, ejections) = mpsc::unbounded_channel();
    let client = DiscoveryClient {
        url,
        member: Member {
            service: cfg.service.clone(),
            instance_id: cfg.instance_id.clone(),
            address: parts.advertise.clone(),
            protocol: cfg.protocol,
            labels: cfg.labels.clone(),
            no_app: cfg.app.is_none(),
            intercepts: cfg.intercept.is_some(),
        },
        // A gateway routes by the routes attached to itself.
        wanted: cfg
            .upstreams
            .iter()
            .map(|u| u.service.clone())
            .chain(cfg.gateway.as_ref().map(|_| cfg.service.clone()))
            .collect(),
        state: ConfigState::default(),
        builder: builder.with_events(ejections_tx),
        routes: parts.routes.clone(),
        subscriptions,
        health: app_health,
        status: parts.status.clone(),
        connect_timeout: cfg.timeouts.connect,
        identity,
        inbound: parts.inbound_policy.clone(),
        addresses: parts.addresses.clone(),
        ejections,
        ejected: Default::default(),
        held: Default::default(),
        telemetry: parts.telemetry.clone(),
    };
    tokio::spawn(client.run(drain.clone()));
}

/// The listeners of the data path, and the ports the sidecar listens on.
struct Traffic {
    /// The inbound listener (and its IPv6 twin).
    inbound: Vec<TcpListener>,
    /// The outbound listener (and its IPv6 twin).
    outbound: Vec<TcpListener>,
    upstreams: Vec<(ServiceName, TcpListener)>,
    sidecar_ports: Vec<u16>,
}

impl Listeners {
    /// Every port the sidecar listens on: none of them is an app's.
    fn ports(&self) -> Vec<u16> {
        let all = [&self.inbound, &self.outbound, &self.admin]
            .into_iter()
            .chain(self.upstreams.iter().map(|(_, l)| l))
            .chain(self.public.http.iter())
            .chain(self.public.https.iter());
        all.filter_map(|l| l.local_addr().ok().map(|a| a.port()))
            .collect()
    }
}

/// The data path: the outbound half on the outbound listener and on each
/// upstream port, the inbound half on the inbound listener.
fn serve_traffic(
    cfg: &SidecarConfig,
    parts: &Parts,
    traffic: Traffic,
    drain: &drain::Watch,
) -> Arc<Outbound> {
    let Traffic {
        inbound,
        outbound,
        upstreams,
        sidecar_ports,
    } = traffic;
    let addrs = |ls: &[TcpListener]| {
        ls.iter()
            .filter_map(|l| l.local_addr().ok().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        service = %cfg.service,
        instance = %cfg.instance_id,
        identity = %parts.identity.as_ref().map(|i| i.id().to_string()).unwrap_or_else(|| "none (static config: plaintext)".into()),
        inbound = %addrs(&inbound),
        outbound = %addrs(&outbound),
        advertise = %parts.advertise,
        upstreams = ?upstreams.iter().map(|(s, l)| format!("{s}={}", addr(l))).collect::<Vec<_>>(),
        "sidecar listening"
    );
    let to_peers = Arc::new(Outbound {
        routes: parts.routes.clone(),
        telemetry: parts.telemetry.clone(),
        connector: parts.peers.clone(),
        discovery_timeout: cfg.timeouts.discovery,
        default_max_concurrent: cfg.max_concurrent_requests,
        intercept: cfg.intercept.map(|unknown| proxy::Interception {
            addresses: parts.addresses.clone(),
            unknown,
            connect_timeout: cfg.timeouts.connect,
        }),
    });
    let to_app = Arc::new(Inbound {
        service: cfg.service.clone(),
        protocol: cfg.protocol,
        telemetry: parts.telemetry.clone(),
        apps: AppPorts::new(
            cfg.app,
            cfg.service.clone(),
            parts.tcp.clone(),
            sidecar_ports,
        ),
        app_connector: parts.tcp.clone(),
        tls: parts
            .identity
            .clone()
            .map(|id| Arc::new(tls::LazyAcceptor::new(id))),
        policy: parts.inbound_policy.clone(),
        limiter: Default::default(),
        intercept: cfg.intercept.is_some(),
    });
    for l in inbound {
        let kind = Listener::Inbound(to_app.clone());
        tokio::spawn(proxy::serve(l, kind, drain.clone()));
    }
    for l in outbound {
        let kind = Listener::Outbound(to_peers.clone());
        tokio::spawn(proxy::serve(l, kind, drain.clone()));
    }
    for (service, l) in upstreams {
        let kind = Listener::Upstream(to_peers.clone(), service);
        tokio::spawn(proxy::serve(l, kind, drain.clone()));
    }
    to_peers
}

/// Gateway mode: the public listeners, into the mesh through `to_peers`;
/// the TLS certificates read now (a bad file stops the start) and watched.
fn serve_gateway(
    cfg: &SidecarConfig,
    g: &GatewayConfig,
    to_peers: Arc<Outbound>,
    public: PublicListeners,
    drain: &drain::Watch,
) -> Result<(), SidecarError> {
    let transcoder = match &g.transcode {
        Some(path) => Some(Arc::new(Transcoder::load(path).map_err(|error| {
            SidecarError::Transcode {
                path: path.display().to_string(),
                error,
            }
        })?)),
        None => None,
    };
    let gateway = Arc::new(Gateway {
        forwarding: Forwarding {
            trust_forwarded: g.trust_forwarded,
            full: g.forwarded_full,
        },
        transcoder,
        ..Gateway::new(cfg.service.clone(), to_peers, g.limits)
    });
    let open = Arc::new(Semaphore::new(g.limits.max_connections));
    if let Some(l) = public.http {
        tracing::info!(gateway = %cfg.service, http = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "gateway listening");
        let serve = gateway::serve(
            l,
            Public::Http,
            gateway.clone(),
            open.clone(),
            drain.clone(),
        );
        tokio::spawn(serve);
    }
    if let Some(l) = public.https {
        let certs = Certificates::load(&g.certs)?;
        tokio::spawn(certs.clone().watch(g.reload_interval, drain.clone()));
        let acceptor = tokio_rustls::TlsAcceptor::from(gateway::server_config(certs)?);
        tracing::info!(gateway = %cfg.service, https = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "gateway listening");
        let serve = gateway::serve(l, Public::Https(acceptor), gateway, open, drain.clone());
        tokio::spawn(serve);
    }
    Ok(())
}

/// gRPC health follows readiness: SERVING once there is a config (woken by
/// the status changing), NOT_SERVING once draining begins.
async fn follow_readiness(
    mut status: watch::Receiver<Status>,
    health: HealthReporter,
    mut drain: drain::Watch,
) {
    let ready = tokio::select! {
        r = status.wait_for(|s| s.has_config) => r.is_ok(),
        _ = drain.signaled() => false,
    };
    if ready {
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        drain.signaled().await;
    }
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// Resolves once there is a certificate (or no identity to have one) and a
/// first config: the two conditions of `/ready`, followed without polling.
async fn became_ready(mut status: watch::Receiver<Status>, identity: Option<Arc<Identity>>) {
    let mut expiry = identity.as_ref().map(|i| i.expiry());
    loop {
        // Marked seen before the certificate is read: one stored after this
        // wakes the wait below.
        if let Some(e) = expiry.as_mut() {
            e.borrow_and_update();
        }
        let has_cert = identity.as_ref().is_none_or(|i| i.current().is_some());
        if has_cert && status.borrow_and_update().has_config {
            return;
        }
        let cert_changed = async {
            match expiry.as_mut() {
                Some(e) => e.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let alive = tokio::select! {
            r = status.changed() => r.is_ok(),
            r = cert_changed => r,
        };
        if !alive {
            // The sidecar is going away: never ready.
            return std::future::pending().await;
        }
    }
}

/// Waits for a reason to stop: `shutdown`, `POST /shutdown`, or the
/// control plane refusing the first certificate (then an error).
async fn stopped(
    shutdown: impl Future<Output = ()>,
    stop_request: &Notify,
    refused: Option<oneshot::Receiver<IdentityError>>,
) -> Result<(), SidecarError> {
    let refused = async {
        match refused {
            Some(rx) => match rx.await {
                Ok(e) => e,
                // Renewing, or draining: never a reason to stop.
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown => Ok(()),
        _ = stop_request.notified() => Ok(()),
        e = refused => {
            tracing::error!(error = %e, "cannot obtain a certificate; stopping");
            Err(SidecarError::Identity(e))
        }
    }
}

/// Tells every connection and task to finish, and waits for them up to
/// `timeout`.
async fn drain_connections(signal: drain::Signal, timeout: Duration) {
    tracing::info!(timeout_ms = timeout.as_millis() as u64, "draining");
    if signal.drain(timeout).await {
        tracing::info!("drained; stopping");
    } else {
        tracing::warn!("drain timeout reached with connections still open; stopping");
    }
}
