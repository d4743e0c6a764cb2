//! Wiring: the sidecar as a library function. Give it bound listeners and a
//! shutdown future; it obtains its certificate, serves until the future
//! resolves (or `POST /shutdown`), then stops accepting, leaves the mesh,
//! and drains in-flight requests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use weft_proto::name::ServiceName;

use crate::admin::{self, AdminState};
use crate::authz::InboundPolicy;
use crate::backoff::Backoff;
use crate::config::{SidecarConfig, Source};
use crate::discovery::{ConfigState, DiscoveryClient, Member, StatusCell, StreamState};
use crate::drain;
use crate::endpoint::{Connector, TcpConnector};
use crate::health::Checker;
use crate::identity::{Identity, IdentityError, tls};
use crate::metrics::Metrics;
use crate::model::Health;
use crate::proxy::{self, App, Inbound, Listener, Outbound};
use crate::table::{Routes, TableBuilder};

/// The sidecar's sockets, bound before `run` so that tests can use port 0.
pub struct Listeners {
    pub inbound: TcpListener,
    pub outbound: TcpListener,
    pub admin: TcpListener,
    pub upstreams: Vec<(ServiceName, TcpListener)>,
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
        Ok(Listeners {
            inbound: bind("--inbound", cfg.inbound).await?,
            outbound: bind("--outbound", cfg.outbound).await?,
            admin: bind("--admin", cfg.admin).await?,
            upstreams,
        })
    }
}

/// Obtains the first certificate, retrying while the control plane is
/// unreachable; a refusal (bad, expired or foreign token) is final.
async fn bootstrap(
    identity: &Identity,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<bool, IdentityError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match identity.obtain().await {
            Ok(_) => return Ok(true),
            Err(e) if e.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "no certificate yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut *shutdown => return Ok(false),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the sidecar until `shutdown` resolves, then drains.
pub async fn run(
    cfg: SidecarConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SidecarError> {
    weft_proto::identity::install_provider();
    let mut shutdown = std::pin::pin!(shutdown);
    let metrics = Arc::new(Metrics::new());
    let tracer = cfg
        .tracing
        .as_ref()
        .map(|t| crate::telemetry::Tracer::new(t, cfg.service.as_str(), &cfg.instance_id, &metrics))
        .transpose()?;
    let telemetry = Arc::new(crate::telemetry::Telemetry::new(
        metrics.clone(),
        tracer,
        cfg.access_log,
    ));
    let inbound_addr = listeners
        .inbound
        .local_addr()
        .map_err(SidecarError::LocalAddr)?;
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| inbound_addr.to_string());
    let tcp = Arc::new(TcpConnector {
        timeout: cfg.timeouts.connect,
    });
    let (drain_signal, drain_watch) = drain::channel();
    let identity = cfg
        .identity
        .clone()
        .map(|c| Identity::from_source(c, &cfg.service))
        .transpose()?;
    let status = StatusCell::new(match cfg.source {
        Source::Static { .. } => StreamState::Static,
        Source::ControlPlane(_) => StreamState::Connecting,
    });
    let (sub_tx, sub_rx) = mpsc::unbounded_channel();
    let routes = Arc::new(Routes::new(match cfg.source {
        Source::Static { .. } => None,
        Source::ControlPlane(_) => Some(sub_tx),
    }));

    let inbound_policy = Arc::new(ArcSwap::from_pointee(InboundPolicy::default()));

    // The admin endpoint first: /live answers while the certificate comes.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let shutdown_request = Arc::new(Notify::new());
    let admin_state = Arc::new(AdminState {
        service: cfg.service.to_string(),
        instance_id: cfg.instance_id.clone(),
        advertise: advertise.clone(),
        status: status.clone(),
        routes: routes.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown_request.clone(),
        identity: identity.clone(),
        inbound: inbound_policy.clone(),
        log_level: cfg.log_level.clone(),
    });
    let health_service = admin::HealthService::new(health_service);
    tokio::spawn(admin::serve(
        listeners.admin,
        admin_state,
        health_service,
        drain_watch.clone(),
    ));

    // The certificate comes in the background: listeners serve from the
    // start (calls fail fast with `no-certificate` until it arrives, and
    // /ready says so); a refused token stops the sidecar with its reason.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<IdentityError>();
    if let Some(id) = &identity {
        let (task_id, m, d) = (id.clone(), metrics.clone(), drain_watch.clone());
        tokio::spawn(async move {
            let mut stop = d.clone();
            let got = bootstrap(&task_id, &mut std::pin::pin!(stop.signaled())).await;
            drop(stop);
            match got {
                Ok(true) => task_id.run_renewal(m, d).await,
                Ok(false) => {}
                Err(e) => {
                    let _ = fatal_tx.send(e);
                }
            }
        });
        let (mut expiry, m) = (id.expiry(), metrics.clone());
        tokio::spawn(async move {
            loop {
                m.cert_expiry
                    .set((*expiry.borrow_and_update() / 1000) as i64);
                if expiry.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let peer_connector: Arc<dyn Connector> = match &identity {
        Some(id) => Arc::new(tls::MtlsConnector::new(
            id.clone(),
            tcp.clone(),
            metrics.clone(),
        )),
        None => tcp.clone(),
    };
    let acceptor = identity
        .clone()
        .map(|id| Arc::new(tls::LazyAcceptor::new(id)));

    let (health_tx, health_rx) = watch::channel(if cfg.app.is_some() {
        Health::Unknown
    } else {
        // A sidecar with no app only makes calls: it must get no traffic.
        Health::Unhealthy
    });
    let (ejections_tx, ejections_rx) = mpsc::unbounded_channel();
    let mut builder = TableBuilder::new(peer_connector.clone(), metrics.clone());
    if matches!(cfg.source, Source::ControlPlane(_)) {
        builder = builder.with_events(ejections_tx);
    }
    match &cfg.source {
        Source::Static { services, path } => {
            routes.store(builder.build(services.iter().map(|(n, s)| (n, s)), std::iter::empty()));
            metrics.set_stream_state("static");
            tracing::info!(file = %path.display(), services = services.len(), "running from a static config");
        }
        Source::ControlPlane(url) => {
            let client = DiscoveryClient {
                url: url.clone(),
                member: Member {
                    service: cfg.service.clone(),
                    instance_id: cfg.instance_id.clone(),
                    address: advertise.clone(),
                    protocol: cfg.protocol,
                    labels: cfg.labels.clone(),
                    no_app: cfg.app.is_none(),
                },
                wanted: cfg.upstreams.iter().map(|u| u.service.clone()).collect(),
                state: ConfigState::default(),
                builder,
                routes: routes.clone(),
                subscriptions: sub_rx,
                health: health_rx,
                status: status.clone(),
                metrics: metrics.clone(),
                connect_timeout: cfg.timeouts.connect,
                identity: identity.clone(),
                inbound: inbound_policy.clone(),
                ejections: ejections_rx,
                ejected: Default::default(),
                telemetry: telemetry.clone(),
            };
            tokio::spawn(client.run(drain_watch.clone()));
        }
    }

    if let Some(app) = cfg.app {
        let checker = Checker {
            app,
            protocol: cfg.protocol,
            interval: cfg.timeouts.health_interval,
            timeout: cfg.timeouts.connect,
            tx: health_tx,
            metrics: metrics.clone(),
        };
        tokio::spawn(checker.run(drain_watch.clone()));
    }

    let outbound = Arc::new(Outbound {
        routes: routes.clone(),
        telemetry: telemetry.clone(),
        connector: peer_connector,
        discovery_timeout: cfg.timeouts.discovery,
    });
    let inbound = Arc::new(Inbound {
        service: cfg.service.clone(),
        protocol: cfg.protocol,
        telemetry: telemetry.clone(),
        app: cfg
            .app
            .map(|a| App::new(a, cfg.service.clone(), tcp.clone())),
        app_connector: tcp,
        tls: acceptor,
        policy: inbound_policy,
    });

    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        service = %cfg.service,
        instance = %cfg.instance_id,
        identity = %identity.as_ref().map(|i| i.id().to_string()).unwrap_or_else(|| "none (static config: plaintext)".into()),
        inbound = %inbound_addr,
        outbound = %addr(&listeners.outbound),
        advertise = %advertise,
        upstreams = ?listeners.upstreams.iter().map(|(s, l)| format!("{s}={}", addr(l))).collect::<Vec<_>>(),
        "sidecar listening"
    );
    tokio::spawn(proxy::serve(
        listeners.inbound,
        Listener::Inbound(inbound),
        drain_watch.clone(),
    ));
    tokio::spawn(proxy::serve(
        listeners.outbound,
        Listener::Outbound(outbound.clone()),
        drain_watch.clone(),
    ));
    for (service, l) in listeners.upstreams {
        tokio::spawn(proxy::serve(
            l,
            Listener::Upstream(outbound.clone(), service),
            drain_watch.clone(),
        ));
    }

    // gRPC health follows readiness: SERVING once there is a config.
    let ready_status = status.clone();
    let mut ready_drain = drain_watch.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ready_drain.signaled() => break,
            }
            if ready_status.get().has_config {
                health_reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                ready_drain.signaled().await;
                break;
            }
        }
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    });
    drop(drain_watch);

    let fatal = async {
        match fatal_rx.await {
            Ok(e) => e,
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = &mut shutdown => Ok(()),
        _ = shutdown_request.notified() => Ok(()),
        e = fatal => {
            tracing::error!(error = %e, "cannot obtain a certificate; stopping");
            Err(SidecarError::Identity(e))
        }
    };
    tracing::info!(
        timeout_ms = cfg.timeouts.drain.as_millis() as u64,
        "draining"
    );
    if drain_signal.drain(cfg.timeouts.drain).await {
        tracing::info!("drained; stopping");
    } else {
        tracing::warn!("drain timeout reached with connections still open; stopping");
    }
    // The spans of the last requests go out before the process ends.
    telemetry.flush().await;
    result
}
