//! The control-plane server as a library function: give it bound listeners
//! and a shutdown future, and it serves until the future resolves.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use weft_proto::v1::{admin_server::AdminServer, discovery_server::DiscoveryServer};

use crate::admin::AdminService;
use crate::catalog::{Catalog, CatalogConfig, run_reaper};
use crate::discovery::DiscoveryService;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Everything the control plane needs besides its listeners.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Where the embedded store lives; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    pub catalog: CatalogConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Serves the gRPC API on `grpc` and `/live` `/ready` `/metrics` on `admin`.
pub async fn run(
    config: ControlPlaneConfig,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let shutdown = shutdown.shared();
    let store = match &config.data_dir {
        Some(dir) => {
            let dir = dir.clone();
            Some(Arc::new(
                tokio::task::spawn_blocking(move || Store::open(&dir)).await??,
            ))
        }
        None => None,
    };
    let catalog = match &store {
        Some(s) => {
            let (cfg, s) = (config.catalog, s.clone());
            tokio::task::spawn_blocking(move || Catalog::load(cfg, s)).await??
        }
        None => Catalog::in_memory(config.catalog),
    };
    let metrics = Arc::new(Metrics::new());

    tokio::spawn(run_reaper(catalog.clone(), shutdown.clone()));
    tokio::spawn(serve_admin(
        admin,
        catalog.clone(),
        metrics.clone(),
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
        data_dir = ?config.data_dir,
        "control plane listening"
    );
    tonic::transport::Server::builder()
        // Find sidecars that vanished without closing their connection.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(health_service)
        .add_service(DiscoveryServer::new(DiscoveryService::new(
            catalog.clone(),
            metrics.clone(),
        )))
        .add_service(AdminServer::new(AdminService::new(catalog, store, metrics)))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    tracing::info!("control plane stopped");
    Ok(())
}

type AdminBody = Full<Bytes>;

async fn serve_admin(
    listener: TcpListener,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Clone + Send + 'static,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(admin = %addr, "admin endpoint listening");
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let (catalog, metrics) = (catalog.clone(), metrics.clone());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let resp = admin_response(&req, &catalog, &metrics);
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

fn admin_response(
    req: &Request<Incoming>,
    catalog: &Catalog,
    metrics: &Metrics,
) -> Response<AdminBody> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
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
            "not found: try /live, /ready or /metrics\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}
