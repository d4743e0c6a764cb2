//! An HTTP/1.1 test app: `/echo` streams the request body back, `/health`
//! answers 200 (or 503 when told), anything else describes the request as
//! JSON. Every response names its instance in `x-instance`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub struct HttpAppHandle {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicU64>,
    pub healthy: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpAppHandle {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for HttpAppHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

async fn handle(
    req: Request<Incoming>,
    instance: Arc<str>,
    calls: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
) -> Response<Body> {
    let full = |s: String| Full::new(Bytes::from(s)).map_err(|n| match n {}).boxed();
    if req.uri().path() == "/health" {
        let ok = healthy.load(Ordering::Relaxed);
        let mut r = Response::new(full(if ok { "ok".into() } else { "unhealthy".into() }));
        if !ok {
            *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        }
        return r;
    }
    calls.fetch_add(1, Ordering::Relaxed);
    if let Some(code) = req
        .uri()
        .path()
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        let mut r = Response::new(full(format!("status {code}")));
        *r.status_mut() =
            hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        return r;
    }
    let mut resp = if req.uri().path() == "/echo" {
        Response::new(req.into_body().boxed())
    } else {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-") || k.as_str() == "host")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        let v = serde_json::json!({
            "instance": &*instance,
            "method": req.method().as_str(),
            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        });
        let mut r = Response::new(full(v.to_string()));
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    if let Ok(v) = http::HeaderValue::from_str(&instance) {
        resp.headers_mut().insert("x-instance", v);
    }
    resp
}

/// Starts the app on 127.0.0.1, port 0 (HTTP/1.1 and HTTP/2).
pub async fn start_http_app(instance: &str) -> anyhow::Result<HttpAppHandle> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let calls = Arc::new(AtomicU64::new(0));
    let healthy = Arc::new(AtomicBool::new(true));
    let instance: Arc<str> = instance.into();
    let (c, h) = (calls.clone(), healthy.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (instance, calls, healthy) = (instance.clone(), c.clone(), h.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (i, c, h) = (instance.clone(), calls.clone(), healthy.clone());
                    async move { Ok::<_, Infallible>(handle(req, i, c, h).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(HttpAppHandle {
        addr,
        calls,
        healthy,
        task,
    })
}
