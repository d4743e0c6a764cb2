//! Wiring: the sidecar as a library function. Give it bound listeners and a
//! shutdown future; it serves until the future resolves (or `POST /shutdown`),
//! then stops accepting, leaves the mesh, and drains in-flight requests.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::admin::{self, AdminState};
use crate::config::{SidecarConfig, Source};
use crate::discovery::{ConfigState, DiscoveryClient, Identity, StatusCell, StreamState};
use crate::drain;
use crate::endpoint::{Connector, TcpConnector};
use crate::health::Checker;
use crate::metrics::Metrics;
use crate::model::{Health, ServiceName};
use crate::proxy::{self, App, Listener, Proxy};
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

/// Runs the sidecar until `shutdown` resolves, then drains.
pub async fn run(
    cfg: SidecarConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SidecarError> {
    let metrics = Arc::new(Metrics::new());
    let inbound_addr = listeners
        .inbound
        .local_addr()
        .map_err(SidecarError::LocalAddr)?;
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| inbound_addr.to_string());
    let connector = Arc::new(TcpConnector {
        timeout: cfg.timeouts.connect,
    });
    let (drain_signal, drain_watch) = drain::channel();
    let (health_tx, health_rx) = watch::channel(if cfg.app.is_some() {
        Health::Unknown
    } else {
        // A sidecar with no app only makes calls: it must get no traffic.
        Health::Unhealthy
    });

    let peer_connector: Arc<dyn Connector> = connector.clone();
    let mut builder = TableBuilder::new(peer_connector.clone(), metrics.clone());
    let (routes, status) = match &cfg.source {
        Source::Static { services, path } => {
            let routes = Arc::new(Routes::new(None));
            routes.store(builder.build(services.iter().map(|(n, s)| (n, s)), std::iter::empty()));
            metrics.set_stream_state("static");
            tracing::info!(file = %path.display(), services = services.len(), "running from a static config");
            (routes, StatusCell::new(StreamState::Static))
        }
        Source::ControlPlane(url) => {
            let (sub_tx, sub_rx) = mpsc::unbounded_channel();
            let routes = Arc::new(Routes::new(Some(sub_tx)));
            let status = StatusCell::new(StreamState::Connecting);
            let client = DiscoveryClient {
                url: url.clone(),
                identity: Identity {
                    service: cfg.service.clone(),
                    instance_id: cfg.instance_id.clone(),
                    address: advertise.clone(),
                    protocol: cfg.protocol,
                    labels: cfg.labels.clone(),
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
            };
            tokio::spawn(client.run(drain_watch.clone()));
            (routes, status)
        }
    };

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

    let proxy = Arc::new(Proxy {
        service: cfg.service.clone(),
        protocol: cfg.protocol,
        routes: routes.clone(),
        metrics: metrics.clone(),
        app: cfg
            .app
            .map(|a| App::new(a, cfg.service.clone(), connector.clone())),
        connector: peer_connector,
        app_connector: connector,
        timeouts: cfg.timeouts,
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let shutdown_request = Arc::new(Notify::new());
    let admin_state = Arc::new(AdminState {
        service: cfg.service.to_string(),
        instance_id: cfg.instance_id.clone(),
        advertise: advertise.clone(),
        status: status.clone(),
        routes,
        metrics,
        shutdown: shutdown_request.clone(),
    });
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        service = %cfg.service,
        instance = %cfg.instance_id,
        inbound = %inbound_addr,
        outbound = %addr(&listeners.outbound),
        admin = %addr(&listeners.admin),
        advertise = %advertise,
        upstreams = ?listeners.upstreams.iter().map(|(s, l)| format!("{s}={}", addr(l))).collect::<Vec<_>>(),
        "sidecar listening"
    );
    let health_service = admin::HealthService::new(health_service);
    tokio::spawn(admin::serve(
        listeners.admin,
        admin_state,
        health_service,
        drain_watch.clone(),
    ));
    tokio::spawn(proxy::serve(
        listeners.inbound,
        Listener::Inbound,
        proxy.clone(),
        drain_watch.clone(),
    ));
    tokio::spawn(proxy::serve(
        listeners.outbound,
        Listener::Outbound,
        proxy.clone(),
        drain_watch.clone(),
    ));
    for (service, l) in listeners.upstreams {
        tokio::spawn(proxy::serve(
            l,
            Listener::Upstream(service),
            proxy.clone(),
            drain_watch.clone(),
        ));
    }

    // gRPC health follows readiness: SERVING once there is a config.
    let ready_status = status.clone();
    let mut ready_drain = drain_watch.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ready_drain.signaled() => {
                    health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                    return;
                }
            }
            if ready_status.get().has_config {
                health_reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                break;
            }
        }
        ready_drain.signaled().await;
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    });
    drop(drain_watch);

    tokio::select! {
        _ = shutdown => {}
        _ = shutdown_request.notified() => {}
    }
    tracing::info!(
        timeout_ms = cfg.timeouts.drain.as_millis() as u64,
        "draining"
    );
    if drain_signal.drain(cfg.timeouts.drain).await {
        tracing::info!("drained; stopping");
    } else {
        tracing::warn!("drain timeout reached with connections still open; stopping");
    }
    Ok(())
}
