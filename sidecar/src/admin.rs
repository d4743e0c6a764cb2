//! The admin endpoint: `/live`, `/ready`, `/metrics`, `/config`,
//! `/log-level` (GET it, PUT a new filter), `POST /shutdown`, and gRPC
//! health (`grpc.health.v1`), all on one port.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::body::{BoxBody, boxed, full};
use crate::discovery::StatusCell;
use crate::drain;
use crate::table::{Entry, Routes};
use crate::telemetry::metrics::Metrics;

/// What the admin endpoint reads.
pub struct AdminState {
    pub service: String,
    pub instance_id: String,
    pub advertise: String,
    pub status: Arc<StatusCell>,
    pub routes: Arc<Routes>,
    pub metrics: Arc<Metrics>,
    /// Notified by `POST /shutdown`.
    pub shutdown: Arc<Notify>,
    /// `None` with a static config and no certificate files (plaintext).
    pub identity: Option<Arc<crate::identity::Identity>>,
    pub inbound: Arc<arc_swap::ArcSwap<crate::model::inbound::InboundPolicy>>,
    /// The process's log filter; `None` when the embedding process owns
    /// logging (tests).
    pub log_level: Option<Arc<weft_process::logs::LogLevel>>,
}

/// gRPC health, boxed: its concrete type is opaque.
pub type HealthService = tower::util::BoxCloneSyncService<
    Request<tonic::body::Body>,
    Response<tonic::body::Body>,
    Infallible,
>;

pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    health: HealthService,
    mut drain: drain::Watch,
) {
    loop {
        let stream = tokio::select! {
            _ = drain.signaled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let (state, health) = (state.clone(), health.clone());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (state, health) = (state.clone(), health.clone());
            async move { Ok::<_, Infallible>(handle(req, &state, health).await) }
        });
        let mut d = drain.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = d.signaled() => {}
            }
        });
    }
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<BoxBody> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    state: &AdminState,
    health: HealthService,
) -> Response<BoxBody> {
    if req.uri().path().starts_with("/grpc.health.v1.Health/") {
        return match health.oneshot(req.map(tonic::body::Body::new)).await {
            Ok(r) => r.map(boxed),
            Err(never) => match never {},
        };
    }
    tracing::debug!(method = %req.method(), path = req.uri().path(), "admin request");
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "text/plain", "live\n".into()),
        (&Method::GET, "/ready") => {
            let has_cert = state
                .identity
                .as_ref()
                .is_none_or(|i| i.current().is_some());
            match (has_cert, state.status.get().has_config) {
                (true, true) => text(StatusCode::OK, "text/plain", "ready\n".into()),
                (false, _) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no certificate yet\n".into(),
                ),
                (true, false) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no config yet\n".into(),
                ),
            }
        }
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.render(),
        ),
        (&Method::GET, "/config") => {
            let body = serde_json::to_string_pretty(&config_json(state)).unwrap_or_default();
            text(StatusCode::OK, "application/json", body + "\n")
        }
        (&Method::GET | &Method::PUT | &Method::POST, "/log-level") => {
            let (status, body) =
                weft_process::logs::admin_request(state.log_level.as_deref(), req).await;
            text(status, "text/plain", body)
        }
        (&Method::POST, "/shutdown") => {
            state.shutdown.notify_one();
            text(StatusCode::OK, "text/plain", "shutting down\n".into())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /live, /ready, /metrics, /config, /log-level or POST /shutdown\n"
                .into(),
        ),
    }
}

/// What the sidecar is running, as JSON.
fn config_json(state: &AdminState) -> Value {
    let table = state.routes.load();
    let mut services: Vec<(String, Value)> = table
        .iter()
        .map(|(name, entry)| {
            let v = match entry {
                Entry::Unknown => json!({"known": false}),
                Entry::Known(t) => json!({
                    "known": true,
                    "policy": t.policy,
                    "routes": table.routes(name.as_str()).map(|r| r.routes().iter().map(|r| json!({
                        "name": r.name,
                        "rules": r.rules.len(),
                    })).collect::<Vec<_>>()).unwrap_or_default(),
                    "endpoints": t.endpoints.iter().map(|e| json!({
                        "id": e.spec.id,
                        "address": e.spec.addr,
                        "health": e.spec.health,
                        "labels": e.spec.labels,
                        "weight": e.spec.weight,
                        "inFlight": e.peer.load.pending(),
                        "connected": e.peer.client.is_connected(),
                        "connections": e.peer.client.connections(),
                        "ejectedForMs": e.peer.outlier.ejected_until().map(|u| u.saturating_duration_since(tokio::time::Instant::now()).as_millis() as u64),
                    })).collect::<Vec<_>>(),
                }),
            };
            (name.to_string(), v)
        })
        .collect();
    services.sort_by(|a, b| a.0.cmp(&b.0));
    let identity = state.identity.as_ref().map(|i| {
        json!({
            "spiffeId": i.id().to_string(),
            "certificateExpiresUnixMs": i.current().map(|c| c.expires_unix_ms()),
            // SHA-256 fingerprints of the CAs peers are verified under.
            "roots": i.current().map(|c| c.roots_der.iter().map(|r| weft_proto::identity::fingerprint(r)).collect::<Vec<_>>()),
        })
    });
    json!({
        "service": state.service,
        "instance": state.instance_id,
        "advertise": state.advertise,
        "identity": identity,
        "inbound": &**state.inbound.load(),
        "controlPlane": state.status.get(),
        "services": services.into_iter().collect::<serde_json::Map<_, _>>(),
    })
}
