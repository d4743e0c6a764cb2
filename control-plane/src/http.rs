//! The control plane's small HTTP servers (the admin port, the dashboard):
//! one accept loop, HTTP/1.1 and HTTP/2, and a graceful stop that gives
//! open connections two seconds.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Serves `respond` on `listener` until `shutdown`; `what` names the
/// server in logs.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    respond: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut conns = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, server = what, "accept failed");
                    continue;
                }
            },
        };
        let respond = respond.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let answer = respond(req);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        conns.spawn(async move {
            let _ = conn.await;
        });
        // Reap the finished ones as we go, so the set stays small.
        while conns.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
    // Connections that did not finish in time are cut.
    conns.shutdown().await;
}
