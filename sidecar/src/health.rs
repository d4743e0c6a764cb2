//! Checks the local app's health on an interval and publishes changes, which
//! the discovery stream reports to the control plane.
//!
//! gRPC apps: `grpc.health.v1.Health/Check` for the whole server (""). HTTP
//! apps: `GET /health`, healthy on 2xx. An app that does not implement the
//! check (UNIMPLEMENTED, or 404) counts as healthy while it accepts
//! connections, so that an app without a health endpoint still gets traffic.
//! TCP apps: a connect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use weft_proto::protocol::Protocol;

use crate::drain;
use crate::metrics::Metrics;
use crate::model::Health;

/// How soon an app that is not healthy is checked again (at most).
const UNHEALTHY_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

pub struct Checker {
    pub app: SocketAddr,
    pub protocol: Protocol,
    pub interval: Duration,
    pub timeout: Duration,
    pub tx: watch::Sender<Health>,
    pub metrics: Arc<Metrics>,
}

impl Checker {
    pub async fn run(self, mut drain: drain::Watch) {
        let grpc =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.app)).map(|e| {
                e.connect_timeout(self.timeout)
                    .timeout(self.timeout)
                    .connect_lazy()
            });
        let http: Client<HttpConnector, Empty<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        // The first check at once; while the app is not healthy (still
        // starting, or failing) again soon, so that it gets traffic quickly
        // once it can take it.
        let mut wait = std::time::Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = drain.signaled() => return,
            }
            let (health, detail) = match self.protocol {
                Protocol::Grpc => match &grpc {
                    Ok(ch) => check_grpc(ch.clone()).await,
                    Err(e) => (Health::Unhealthy, e.to_string()),
                },
                Protocol::Http => check_http(&http, self.app, self.timeout).await,
                Protocol::Tcp => check_tcp(self.app, self.timeout).await,
            };
            self.metrics
                .app_healthy
                .set(i64::from(health == Health::Healthy));
            let changed = self.tx.send_if_modified(|h| {
                let c = *h != health;
                *h = health;
                c
            });
            if changed {
                tracing::info!(app = %self.app, health = ?health, %detail, "app health changed");
            }
            wait = if health == Health::Healthy {
                self.interval
            } else {
                self.interval.min(UNHEALTHY_RECHECK)
            };
        }
    }
}

async fn check_grpc(ch: tonic::transport::Channel) -> (Health, String) {
    let mut c = HealthClient::new(ch);
    match c
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
            (Health::Healthy, String::new())
        }
        Ok(r) => (
            Health::Unhealthy,
            format!("health status {}", r.get_ref().status),
        ),
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            (Health::Healthy, "no grpc.health.v1; reachable".into())
        }
        Err(s) => (Health::Unhealthy, format!("{}: {}", s.code(), s.message())),
    }
}

async fn check_http(
    c: &Client<HttpConnector, Empty<bytes::Bytes>>,
    app: SocketAddr,
    timeout: Duration,
) -> (Health, String) {
    let uri = match format!("http://{app}/health").parse::<http::Uri>() {
        Ok(u) => u,
        Err(e) => return (Health::Unhealthy, e.to_string()),
    };
    match tokio::time::timeout(timeout, c.get(uri)).await {
        Ok(Ok(r)) if r.status().is_success() => (Health::Healthy, String::new()),
        Ok(Ok(r)) if r.status() == http::StatusCode::NOT_FOUND => {
            (Health::Healthy, "no /health; reachable".into())
        }
        Ok(Ok(r)) => (Health::Unhealthy, format!("GET /health: {}", r.status())),
        Ok(Err(e)) => (Health::Unhealthy, format!("GET /health: {e}")),
        Err(_) => (Health::Unhealthy, "GET /health timed out".into()),
    }
}

async fn check_tcp(app: SocketAddr, timeout: Duration) -> (Health, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(app)).await {
        Ok(Ok(_)) => (Health::Healthy, String::new()),
        Ok(Err(e)) => (Health::Unhealthy, e.to_string()),
        Err(_) => (Health::Unhealthy, "connect timed out".into()),
    }
}
