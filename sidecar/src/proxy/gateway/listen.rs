//! The public listeners: what a server facing the internet must refuse.
//! A cap on open connections (over it, a connection is closed at once and
//! counted), a TLS handshake and a request's headers within the header
//! timeout, headers within their size limit, and a connection closed when
//! nothing moves on it for the idle timeout. HTTP/1.1 and HTTP/2 on both
//! listeners: by ALPN under TLS, by the connection preface in cleartext.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::{Client, Gateway};
use crate::body::BoxError;
use crate::drain;
use crate::proxy::HttpFuture;

/// One public listener: cleartext, or TLS with the gateway's certificates.
#[derive(Clone)]
pub enum Public {
    Http,
    Https(TlsAcceptor),
}

/// Accepts public connections until draining begins. `open` is shared by
/// every public listener of the gateway (the cap is on all of them).
pub async fn serve(
    listener: TcpListener,
    public: Public,
    gateway: Arc<Gateway>,
    open: Arc<Semaphore>,
    drain: drain::Watch,
) {
    let mut stop = drain.clone();
    let metrics = gateway.outbound.telemetry.metrics.clone();
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.signaled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics.count_gateway_refused("max-connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = Client::new(addr, matches!(public, Public::Https(_)));
        let (public, gateway, drain) = (public.clone(), gateway.clone(), drain.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, public, gateway, client, drain).await {
                tracing::debug!(peer = %addr, error = %e, "gateway connection ended with an error");
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    public: Public,
    gateway: Arc<Gateway>,
    client: Client,
    drain: drain::Watch,
) -> Result<(), BoxError> {
    let limits = gateway.limits;
    let (start, seen) = (Instant::now(), Arc::new(AtomicU64::new(0)));
    let io = Idle {
        inner: stream,
        start,
        seen: seen.clone(),
    };
    let activity = (start, seen);
    match public {
        Public::Http => serve_http(io, gateway, client, activity, drain).await,
        Public::Https(acceptor) => {
            let metrics = gateway.outbound.telemetry.metrics.clone();
            let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    metrics.count_gateway_refused("tls-handshake");
                    return Err(e.into());
                }
                Err(_) => {
                    metrics.count_gateway_refused("tls-handshake-timeout");
                    return Ok(());
                }
            };
            serve_http(tls, gateway, client, activity, drain).await
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 (whichever the client speaks) with the
/// gateway, until the client goes, idles too long, or draining ends it.
async fn serve_http<I>(
    io: I,
    gateway: Arc<Gateway>,
    client: Client,
    (start, seen): (Instant, Arc<AtomicU64>),
    mut drain: drain::Watch,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = gateway.limits;
    let peer = client.addr;
    let client = Arc::new(client);
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| -> HttpFuture {
        let (gateway, client) = (gateway.clone(), client.clone());
        // Boxed: hyper moves each stream's future into a task of its own,
        // and a request's whole state machine is kilobytes to copy.
        Box::pin(async move { Ok::<_, Infallible>(gateway.handle(req, &client).await) })
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size((limits.max_header_bytes as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    let idle = limits.idle_timeout;
    loop {
        // The connection's last activity, as the clock read it.
        let last = start + Duration::from_millis(seen.load(Ordering::Relaxed));
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                return conn.await;
            }
            _ = tokio::time::sleep_until(last + idle) => {
                let since = Duration::from_millis(seen.load(Ordering::Relaxed));
                if start + since + idle <= Instant::now() {
                    tracing::debug!(%peer, "closing an idle client connection");
                    return Ok(());
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that notes when bytes last moved, in milliseconds
    /// since it was opened (what the idle timeout reads).
    struct Idle<T> {
        #[pin]
        inner: T,
        start: Instant,
        seen: Arc<AtomicU64>,
    }
}

fn touch(start: Instant, seen: &AtomicU64) {
    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    seen.store(ms, Ordering::Relaxed);
}

impl<T: AsyncRead> AsyncRead for Idle<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            touch(*this.start, this.seen);
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Idle<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            touch(*this.start, this.seen);
        }
        r
    }

    /// Vectored writes pass through: without them HTTP/2 would write a
    /// frame's head and its body in separate system calls and segments.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            touch(*this.start, this.seen);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
