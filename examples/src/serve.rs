//! One port for gRPC and REST: requests with `content-type: application/grpc`
//! go to the tonic services, everything else to a REST handler. HTTP/1.1 and
//! HTTP/2 are both accepted.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub type RestFuture = Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>;
/// A REST handler: the whole request in, a response out.
pub type Rest = Arc<dyn Fn(http::Request<Incoming>) -> RestFuture + Send + Sync>;

/// A body of text.
pub fn text(s: String) -> Body {
    Full::new(Bytes::from(s))
        .map_err(|n| match n {})
        .boxed_unsync()
}

/// A JSON response.
pub fn json(status: http::StatusCode, v: &serde_json::Value) -> http::Response<Body> {
    let mut r = http::Response::new(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves `grpc` and `rest` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    grpc: Option<tonic::service::Routes>,
    rest: Rest,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (grpc, rest) = (grpc.clone(), rest.clone());
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let (grpc, rest) = (grpc.clone(), rest.clone());
            async move {
                let is_grpc = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let resp = match grpc {
                    Some(routes) if is_grpc => {
                        match routes.oneshot(req.map(tonic::body::Body::new)).await {
                            Ok(r) => r.map(|b| b.map_err(BoxError::from).boxed_unsync()),
                            Err(never) => match never {},
                        }
                    }
                    _ => rest(req).await,
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}
